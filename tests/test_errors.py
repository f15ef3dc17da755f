"""ckpttui.errors documents every error class ckpttui defines, where it lives and what it extends."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import ckpttui
import ckpttui.errors


def _defined_errors() -> dict[str, type[BaseException]]:
    """Every exception class defined in a ckpttui module, by name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(ckpttui.__path__, "ckpttui."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == module.__name__
                and not name.startswith("_")  # private control flow never reaches a user
            ):
                found[name] = obj
    return found


def _documented() -> dict[str, tuple[str, str]]:
    """``{class: (module, documented parent)}`` read from the tree in ckpttui.errors."""
    tree: dict[str, tuple[str, str]] = {}
    parents: dict[int, str] = {}
    for line in (ckpttui.errors.__doc__ or "").splitlines():
        m = re.match(r"^(\s*(?:[│ ]\s*)*(?:├── |└── )?)(\w+)(?:\s+(ckpttui\.[\w.]+))?", line)
        if not m or not (
            m.group(3)
            or m.group(2)
            in ("BaseException", "Exception", "RuntimeError", "ValueError", "KeyboardInterrupt")
        ):
            continue
        depth = len(m.group(1))
        parents[depth] = m.group(2)
        parent = next((parents[d] for d in sorted(parents, reverse=True) if d < depth), "")
        if m.group(3):
            tree[m.group(2)] = (m.group(3), parent)
    return tree


def test_every_error_class_is_in_the_documented_tree() -> None:
    defined, documented = _defined_errors(), _documented()
    assert sorted(defined) == sorted(documented)
    for name, cls in defined.items():
        module, parent = documented[name]
        assert cls.__module__ == module, name
        assert cls.__bases__[0].__name__ == parent, name
