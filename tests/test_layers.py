"""The import layers of ARCHITECTURE.md hold (scripts/check_layers.py), and the checker finds each
kind of violation in a small synthetic package."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Dict

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "check_layers.py")


@pytest.fixture(scope="module")
def layers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_package_keeps_its_layers(layers: ModuleType) -> None:
    errors, known = layers.check()
    assert not errors, "\n".join(errors)
    assert len(known) >= len(layers.KNOWN_VIOLATIONS)  # each entry matched at least one import


def test_the_script_exits_zero_on_the_package() -> None:
    result = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 layer violation(s)" in result.stdout


def test_every_module_of_the_package_has_a_layer(layers: ModuleType) -> None:
    modules = layers.package_modules()
    assert "saliency_fast.metrics" in modules and "saliency_fast.methods.samp" in modules
    assert layers.unknown_modules(modules) == []


def write_package(root: Path, files: Dict[str, str]) -> None:
    for name, source in files.items():
        path = root / "saliency_fast" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


CLEAN = {
    "__init__.py": "from . import metrics, ops\nfrom .methods import Saliency\n__version__ = '0'\n",
    "_C.cpython-311-x86_64-linux-gnu.so": "",  # not parsed (not .py); a fresh clone lacks it
    "_native.py": "from . import _C\n",
    "_reference.py": "ATOL = 1e-6\n",
    "ops.py": "from ._native import _C\nfrom ._reference import ATOL\n",
    "_common.py": "import torch\n",
    "references.py": "",
    "metrics.py": "from . import ops\nfrom ._common import torch\nfrom .references import x\n",
    "methods/__init__.py": "from ._base import AttributionMethod\nfrom .samp import SAMP\n",
    "methods/_base.py": "from .._common import torch\n",
    "methods/samp.py": "from .. import ops\nfrom ._base import AttributionMethod\n",
    "train/__init__.py": "from .fit import fit\n",
    "train/fit.py": "from ..methods import SAMP\nfrom ..metrics import deletion_insertion\nfrom .. import _distributed\n",
    "_distributed.py": "",
    "commands/__init__.py": "",
    "commands/_args.py": "from ..models import load_model\n",
    "commands/demo.py": "from .. import SAMP\nfrom ._args import load_model\n",
    "models.py": "",
    "cli.py": "from . import __version__\nimport saliency_fast.commands.demo\n",
    "__main__.py": "from .cli import main\n",
}


def test_a_clean_synthetic_package_passes(layers: ModuleType, tmp_path: Path) -> None:
    write_package(tmp_path, CLEAN)
    errors, known = layers.check(str(tmp_path), known=[])
    assert errors == [] and known == []
    imports, _ = layers.all_imports(str(tmp_path))
    pairs = {(i.importer, i.imported) for i in imports}
    assert ("saliency_fast._native", "saliency_fast._C") in pairs          # the extension, not the root
    assert ("saliency_fast.methods.samp", "saliency_fast.ops") in pairs     # from .. import ops
    assert ("saliency_fast.commands.demo", "saliency_fast") in pairs        # from .. import SAMP
    assert ("saliency_fast.cli", "saliency_fast.commands.demo") in pairs    # an absolute import


@pytest.mark.parametrize("name, source, expected", [
    ("ops.py", "from . import metrics\n", "saliency_fast.ops -> saliency_fast.metrics: imports upward (layer 1 -> 3)"),
    ("metrics.py", "from .methods import SAMP\n", "saliency_fast.metrics -> saliency_fast.methods: imports sideways"),
    ("metrics.py", "from ._reference import ATOL\n", "saliency_fast._reference, internal to the ops component"),
    ("metrics.py", "def f():\n    from .methods._base import AttributionMethod\n",
     "imports the private module saliency_fast.methods._base"),
    ("metrics.py", "from . import __version__\n", "saliency_fast.metrics -> saliency_fast: imports the package root"),
    ("train/fit.py", "import saliency_fast\n", "saliency_fast.train.fit -> saliency_fast: imports the package root"),
    ("commands/demo.py", "from .attribute import run\n",
     "saliency_fast.commands.demo -> saliency_fast.commands.attribute: imports sideways"),
    ("newmodule.py", "", "saliency_fast.newmodule: no layer in LAYERS"),
])
def test_each_kind_of_violation_is_found(layers: ModuleType, tmp_path: Path, name: str, source: str,
                                         expected: str) -> None:
    files = dict(CLEAN, **{name: source, "commands/attribute.py": "def run(): pass\n"})
    write_package(tmp_path, files)
    errors, _ = layers.check(str(tmp_path), known=[])
    assert len(errors) == 1 and expected in errors[0], errors


def test_known_violations_are_reported_and_stale_ones_fail(layers: ModuleType, tmp_path: Path) -> None:
    write_package(tmp_path, dict(CLEAN, **{"metrics.py": "from .methods import SAMP\n"}))
    known = [("saliency_fast.metrics", "saliency_fast.methods", "a test")]
    errors, found = layers.check(str(tmp_path), known=known)
    assert errors == [] and len(found) == 1 and "saliency_fast.metrics -> saliency_fast.methods" in found[0]
    stale = known + [("saliency_fast.ops", "saliency_fast.metrics", "fixed long ago")]
    errors, _ = layers.check(str(tmp_path), known=stale)
    assert errors == ["KNOWN_VIOLATIONS: saliency_fast.ops -> saliency_fast.metrics no longer occurs; remove the entry"]
