"""The package version, written once: read by ``saliency_fast.__version__``, the manifests and
checkpoints the package writes, ``--version``, and ``setup.py`` (which parses this file rather
than importing the package)."""
__version__ = "0.1.0"
