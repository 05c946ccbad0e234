"""Check the package's imports against its layers (ARCHITECTURE.md).

    python scripts/check_layers.py          # exit 1 and one line per violation, 0 when clean
    python scripts/check_layers.py -v       # also list the known violations

Every module of saliency_fast has a layer (LAYERS: module prefix -> layer number and component).
The rule, checked on every import statement (at the top of a module or inside a function,
``TYPE_CHECKING`` blocks included; the sources are parsed, nothing is imported):

- a module may import modules of its own component, and public modules of lower layers;
- nothing imports a higher layer, or another component of its own layer (no sideways imports:
  shared code moves down a layer instead);
- a module marked ``internal`` is imported only inside its component (the op layer's fallback,
  fakes and compiled extension sit behind ``ops``), and a private submodule of a package
  component (``methods._base``) only inside that package;
- the package root (``saliency_fast/__init__.py``) is imported only by the CLI: ``cli``,
  ``__main__`` and ``commands``;
- a module missing from LAYERS is an error: a new module gets its layer when it is added.

KNOWN_VIOLATIONS lists the imports that break the rule today, each with the reason it exists;
they are reported as known, and an entry that no longer matches an import is an error too, so
the list only shrinks.
"""
from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "saliency_fast"
EACH_MODULE = "<each module>"  # a component per module: no module of the entry imports a sibling
CLI_MODULES = ("saliency_fast.cli", "saliency_fast.__main__", "saliency_fast.commands")  # may import the root


@dataclass(frozen=True)
class Layer:
    level: int
    component: str
    internal: bool = False  # imported only inside its component


# Lowest layer first. A prefix covers the module of that name and its submodules; the longest
# matching prefix wins.
LAYERS: Dict[str, Layer] = {
    # 0 foundations: small helpers that import nothing from the package
    "saliency_fast.allocator": Layer(0, "base"),
    "saliency_fast._distributed": Layer(0, "base"),
    "saliency_fast._io": Layer(0, "base"),  # atomic file writes (checkpoints, shards)
    "saliency_fast._version": Layer(0, "base"),  # __version__, read by setup.py too
    "saliency_fast._jsonable": Layer(0, "base"),  # JSON-ready records (run configs, manifests)
    "saliency_fast._lock": Layer(0, "base"),  # output-folder locks (checkpoints, shards)
    "saliency_fast._validation": Layer(0, "base"),  # checks of scalar arguments
    # 1 the op layer: one contract (ops), the compiled ops and their pure-PyTorch twins behind it
    "saliency_fast._C": Layer(1, "ops", internal=True),
    "saliency_fast._reference": Layer(1, "ops", internal=True),
    "saliency_fast._fakes": Layer(1, "ops", internal=True),  # register_fake of every op
    "saliency_fast._op_constants": Layer(1, "ops", internal=True),  # shared by ops and _reference
    "saliency_fast._native": Layer(1, "ops"),  # build information is public (sf.build_info, --version)
    "saliency_fast.ops": Layer(1, "ops"),
    # 2 shared: argument validation and model binding; reference images
    "saliency_fast._common": Layer(2, "common"),
    "saliency_fast.references": Layer(2, "references"),
    # 3 the library: attribution methods (with their registry), metrics, models, data, figures
    "saliency_fast.methods": Layer(3, "methods"),
    "saliency_fast.metrics": Layer(3, "metrics"),
    "saliency_fast.models": Layer(3, "models"),
    "saliency_fast.data": Layer(3, "data"),
    "saliency_fast.viz": Layer(3, "viz"),
    # 4 workflows over the library: dataset attribution (runner and shard store), training, adapters
    "saliency_fast.dataset": Layer(4, "dataset"),
    "saliency_fast.attribution_store": Layer(4, "dataset"),
    "saliency_fast.train": Layer(4, "train"),
    "saliency_fast.interop": Layer(4, "interop"),
    # 5-7 the command line: shared CLI helpers, one module per subcommand, the entry points
    "saliency_fast.commands._args": Layer(5, "cli-helpers"),
    "saliency_fast.commands": Layer(6, EACH_MODULE),
    "saliency_fast.cli": Layer(7, "cli"),
    "saliency_fast.__main__": Layer(7, "cli"),
    # the package root re-exports the public API and imports every layer
    PACKAGE: Layer(8, "root"),
}


class Import(NamedTuple):
    importer: str
    imported: str
    line: int


# (importer, imported, why it is there). Emptied by the issue-19 refactor.
KNOWN_VIOLATIONS: List[Tuple[str, str, str]] = [
]


# -- reading the imports ---------------------------------------------------------------------------
def package_modules(root: str = ROOT) -> Dict[str, str]:
    """{module name: file} for every .py file of the package."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                modules[module[: -len(".__init__")] if module.endswith(".__init__") else module] = path
    return modules


def _is_module(name: str, modules: Dict[str, str]) -> bool:
    return name in modules or name in LAYERS  # LAYERS knows the compiled extension, absent from a fresh clone


def imports_of(module: str, source: str, is_package: bool, modules: Dict[str, str]) -> Iterator[Import]:
    """The package modules ``module`` imports: ``from . import ops`` names the module ops, ``from
    .ops import x`` the module ops, ``from .. import SAMP`` the package root."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    yield Import(module, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
                if base != PACKAGE and not base.startswith(PACKAGE + "."):
                    continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield Import(module, submodule if _is_module(submodule, modules) else base, node.lineno)


def all_imports(root: str = ROOT) -> Tuple[List[Import], Dict[str, str]]:
    modules = package_modules(root)
    found = []
    for module, path in sorted(modules.items()):
        with open(path, encoding="utf-8") as f:
            source = f.read()
        found.extend(sorted(set(imports_of(module, source, path.endswith("__init__.py"), modules))))
    return found, modules


# -- the rule ---------------------------------------------------------------------------------------
def layer_entry(module: str) -> Optional[str]:
    """The LAYERS prefix that covers ``module`` (the root entry covers the root only)."""
    if module == PACKAGE:
        return PACKAGE
    matches = [prefix for prefix in LAYERS if prefix != PACKAGE and (module == prefix or module.startswith(prefix + "."))]
    return max(matches, key=len) if matches else None


def component_of(module: str) -> str:
    entry = layer_entry(module)
    if entry is None:
        raise KeyError(module)
    component = LAYERS[entry].component
    if component == EACH_MODULE:
        return module
    return component


def _private_below(module: str, entry: str) -> bool:
    """A private submodule (``_name``) below the entry's prefix, e.g. methods._base under methods."""
    below = module[len(entry) + 1:].split(".") if module != entry else []
    return any(part.startswith("_") and not part.startswith("__") for part in below)


def violation(found: Import) -> Optional[str]:
    """Why this import breaks the layer rule, or None."""
    importer, imported = found.importer, found.imported
    if imported == PACKAGE:
        if importer == PACKAGE or any(importer == m or importer.startswith(m + ".") for m in CLI_MODULES):
            return None
        return "imports the package root (only the CLI may)"
    source_entry, target_entry = layer_entry(importer), layer_entry(imported)
    if source_entry is None or target_entry is None:
        return None  # reported once per module by unknown_modules
    if component_of(importer) == component_of(imported):
        return None
    source, target = LAYERS[source_entry], LAYERS[target_entry]
    target_component = component_of(imported)
    if target.internal:
        return f"imports {imported}, internal to the {target_component} component"
    if _private_below(imported, target_entry):
        return f"imports the private module {imported} of the {target_component} component"
    if target.level > source.level:
        return f"imports upward (layer {source.level} -> {target.level})"
    if target.level == source.level:
        return (f"imports sideways ({component_of(importer)} and {target_component} are different components of "
                f"layer {source.level}; move what both need down a layer)")
    return None


def unknown_modules(modules: Dict[str, str]) -> List[str]:
    return sorted(module for module in modules if layer_entry(module) is None)


def check(root: str = ROOT, known: Optional[List[Tuple[str, str, str]]] = None) -> Tuple[List[str], List[str]]:
    """(errors, known violations found). Errors: new violations, modules without a layer, and
    KNOWN_VIOLATIONS entries that no longer occur."""
    known = KNOWN_VIOLATIONS if known is None else known
    known_pairs = {(importer, imported) for importer, imported, _ in known}
    imports, modules = all_imports(root)
    errors = [f"{module}: no layer in LAYERS (scripts/check_layers.py); give it one" for module in unknown_modules(modules)]
    seen: Set[Tuple[str, str]] = set()
    reported_known = []
    for found in imports:
        why = violation(found)
        if why is None:
            continue
        where = f"{os.path.relpath(modules[found.importer], root)}:{found.line}: {found.importer} -> {found.imported}: {why}"
        if (found.importer, found.imported) in known_pairs:
            reported_known.append(where)
            seen.add((found.importer, found.imported))
        else:
            errors.append(where)
    for importer, imported, _ in known:
        if (importer, imported) not in seen:
            errors.append(f"KNOWN_VIOLATIONS: {importer} -> {imported} no longer occurs; remove the entry")
    return errors, reported_known


def main(argv: List[str]) -> int:
    errors, known = check()
    if "-v" in argv or "--verbose" in argv:
        for line in known:
            print(f"known: {line}")
    for line in errors:
        print(line, file=sys.stderr)
    print(f"{len(errors)} layer violation(s), {len(known)} known (KNOWN_VIOLATIONS)",
          file=sys.stderr if errors else sys.stdout)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
