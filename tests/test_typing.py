"""Every public function and method of the package states its return type, so that the type checker
(`make typecheck`, mypy configured in pyproject.toml) can follow values across module boundaries.

"Public" means: a name without a leading underscore, defined in a module that is not private, or
re-exported under a public name by a public module (e.g. ``AttributionMethod`` from
``methods._base``, ``BoundModel`` from ``_common``); plus ``_attribute``, the method every
attribution method implements."""
from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from types import ModuleType
from typing import Any, Iterator, List, Set, Tuple

import saliency_fast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ALSO_PUBLIC = {"_attribute"}
SKIPPED_MODULES = {"saliency_fast.__main__"}  # importing it runs the CLI


def is_private_module(module_name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module_name.split("."))


def package_modules() -> Iterator[ModuleType]:
    yield saliency_fast
    for info in pkgutil.walk_packages(saliency_fast.__path__, prefix="saliency_fast."):
        if info.name in SKIPPED_MODULES or info.name.rsplit(".", 1)[-1] == "_C":
            continue
        yield importlib.import_module(info.name)


def defined_in(obj: Any, module: ModuleType) -> bool:
    return getattr(obj, "__module__", None) == module.__name__


def reexported_ids(modules: List[ModuleType]) -> Set[int]:
    """ids of the package's functions and classes reachable under a public name of a public module."""
    ids = set()
    for module in modules:
        if is_private_module(module.__name__):
            continue
        for name, obj in vars(module).items():
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and \
                    str(getattr(obj, "__module__", "")).startswith("saliency_fast"):
                ids.add(id(obj))
    return ids


def plain_function(member: Any) -> Any:
    """The function behind a class attribute (staticmethod, classmethod, property getter), or None."""
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    return member if inspect.isfunction(member) else None


def is_public_name(name: str) -> bool:
    return not name.startswith("_") or name in ALSO_PUBLIC


def public_callables(modules: List[ModuleType]) -> Iterator[Tuple[str, Any]]:
    exported = reexported_ids(modules)
    for module in modules:
        private_module = is_private_module(module.__name__)
        for name, obj in vars(module).items():
            if not defined_in(obj, module) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            if name.startswith("_") or (private_module and id(obj) not in exported):
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
                continue
            for member_name, member in vars(obj).items():
                function = plain_function(member)
                if function is not None and is_public_name(member_name):
                    yield f"{module.__name__}.{name}.{member_name}", function


def missing_return_types(modules: List[ModuleType]) -> List[str]:
    missing = []
    for qualified_name, function in public_callables(modules):
        if "return" not in getattr(function, "__annotations__", {}):
            missing.append(f"{qualified_name} ({function.__module__}:{function.__code__.co_firstlineno})")
    return sorted(set(missing))


def test_public_functions_state_their_return_type() -> None:
    missing = missing_return_types(list(package_modules()))
    assert not missing, "public functions without a return annotation:\n  " + "\n  ".join(missing)


def test_the_walk_finds_what_it_should() -> None:
    """The check cannot pass by finding nothing: it sees the functions and methods it must see."""
    modules = list(package_modules())
    names = {name for name, _ in public_callables(modules)}
    assert {"saliency_fast.metrics.deletion_insertion", "saliency_fast.viz.heatmap_grid",
            "saliency_fast.methods._base.AttributionMethod.attribute",     # re-exported from a private module
            "saliency_fast.methods._base.AttributionMethod._attribute",    # the _attribute family
            "saliency_fast._common.BoundModel.forward"} <= names
    assert not any(name.rsplit(".", 1)[-1].startswith("__") for name in names)
    assert len(names) > 100


def test_an_unannotated_function_is_reported() -> None:
    """The check names a public function without a return type, and leaves private ones alone."""
    module = ModuleType("saliency_fast.viz")
    exec("def shown(x: int):\n    return x\n\ndef _hidden(x):\n    return x\n\n"
         "class Shown:\n    def method(self, x: int):\n        return x\n    def _private(self):\n        return 1\n",
         module.__dict__)
    found = dict(public_callables([module]))
    assert set(found) == {"saliency_fast.viz.shown", "saliency_fast.viz.Shown.method"}
    missing = missing_return_types([module])
    assert [m.split(" ")[0] for m in missing] == ["saliency_fast.viz.Shown.method", "saliency_fast.viz.shown"]
    module.__dict__["shown"].__annotations__["return"] = "int"
    assert [m.split(" ")[0] for m in missing_return_types([module])] == ["saliency_fast.viz.Shown.method"]
