"""The PEP 517 build backend of saliency_fast: setuptools', made to compile against the torch of
the environment the package is installed into.

pip's default build isolation hides that environment and would install the newest torch into a
temporary one (here a 5.5 GB CUDA build) to compile against — a binary for a torch the user does
not run. Instead, when the target environment already has torch, it is made visible to the build
(appended to sys.path, after the isolated build tools) and no torch is requested. Only when no
torch is installed is one requested; the wheel then pins that torch release (see setup.py).
"""
from __future__ import annotations

import glob
import os
import site
import sys
import sysconfig

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the hooks not wrapped below)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def target_site_dirs() -> list[str]:
    """The site-packages of the interpreter running this backend: pip runs it with the target
    environment's python and removes these folders from sys.path."""
    dirs = []
    if hasattr(site, "getsitepackages"):
        dirs += site.getsitepackages()
    paths = sysconfig.get_paths()
    dirs += [paths["purelib"], paths["platlib"]]
    if site.ENABLE_USER_SITE is not False:
        dirs.append(site.getusersitepackages())
    unique = []
    for d in dirs:
        if d not in unique and os.path.isdir(d):
            unique.append(d)
    return unique


def installed_torch_dir() -> str | None:
    """The target site-packages folder holding an installed torch, if any."""
    for d in target_site_dirs():
        if os.path.isdir(os.path.join(d, "torch")) and glob.glob(os.path.join(d, "torch-*.dist-info")):
            return d
    return None


def expose_installed_torch() -> None:
    if _importable("torch"):
        return
    folder = installed_torch_dir()
    if folder is not None:
        sys.path.append(folder)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), folder) if p)
        print(f"saliency_fast build: compiling against the torch installed in {folder}", file=sys.stderr, flush=True)


expose_installed_torch()


def _with_torch(requirements: list[str]) -> list[str]:
    extra = ["ninja"]
    if not _importable("torch"):
        extra += ["torch", "numpy"]
    return list(requirements) + extra


def get_requires_for_build_wheel(config_settings=None):
    return _with_torch(_setuptools.get_requires_for_build_wheel(config_settings))


def get_requires_for_build_editable(config_settings=None):
    return _with_torch(_setuptools.get_requires_for_build_editable(config_settings))


def _check_wheel_tools() -> None:
    """Without build isolation the build uses what is installed: say what is missing."""
    import setuptools

    setuptools_version = tuple(int(p) for p in setuptools.__version__.split(".")[:2] if p.isdigit())
    if setuptools_version < (70, 1) and not _importable("wheel"):
        sys.exit(f"error: building a wheel with setuptools {setuptools.__version__} needs the `wheel` package, "
                 "which is not installed (with --no-build-isolation the build uses the installed packages). "
                 "Run `pip install 'setuptools>=70.1'` (or `pip install wheel`), or drop --no-build-isolation.")


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _check_wheel_tools()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _check_wheel_tools()
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    _check_wheel_tools()
    return _setuptools.prepare_metadata_for_build_wheel(metadata_directory, config_settings)


def prepare_metadata_for_build_editable(metadata_directory, config_settings=None):
    _check_wheel_tools()
    return _setuptools.prepare_metadata_for_build_editable(metadata_directory, config_settings)
