"""Old import paths and names, kept for one release with a DeprecationWarning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

_NOTICE = "; the old {kind} goes in the next release"


def warn_moved(old: str, new: str) -> None:
    """Warn, when a deprecated module is imported, that it moved."""
    warnings.warn(f"{old} is now {new}" + _NOTICE.format(kind="path"), DeprecationWarning, stacklevel=3)


def renamed(module: str, names: dict[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module `__getattr__` that still serves old names, each with a DeprecationWarning.

    Args:
        module: The module's `__name__`.
        names: Old name → (what to use instead, the object).
    """

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, value = names[name]
        warnings.warn(f"{module}.{name} is now {new}" + _NOTICE.format(kind="name"), DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
