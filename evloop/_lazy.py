"""Names a package imports on first use (PEP 562), so that importing the package
does not import what only some of its users need (torch, an extra's library)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``homes`` maps each lazy name to the
    submodule (relative, ``'.client'``) that defines it; a name that is itself a
    submodule maps to ``''``. Each is imported once, then kept in the package. The
    package's ``dir()`` lists them before they are imported (completion in notebooks),
    and no name the package's own code imported for itself."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if home == "":
            return importlib.import_module(f".{name}", package)
        value = getattr(importlib.import_module(home, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:  # the public names, imported or not, and the dunders
        public = namespace.get("__all__", ())
        dunders = (name for name in namespace if name.startswith("__"))
        return sorted({*public, *homes, *dunders})

    namespace["__dir__"] = __dir__
    return __getattr__
