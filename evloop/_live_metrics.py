"""``state['metrics']``: a dict whose averaged entries are computed when read.

An averager that posts each batch (``EpochMetricAvg``) puts a :class:`Deferred` there
instead of computing its mean every step, which is one device op a step whether or
not anything reads it. Any read through the dict's methods — ``m[k]``, ``get``,
``items``, ``values``, ``copy``, iteration by ``dict(m)`` or ``{**m}``, pickling —
computes the mean then, stores it in place of the placeholder and returns it, so code
reading ``state['metrics']`` at any batch sees the current mean, as a value computed
once however often it is read. A snapshot taken for an event holds values only: a
tensor posted once never changes afterwards.

Only C code that walks the dict's storage directly (``dict.values(m)``, a C extension's
``PyDict_Next``) can meet a :class:`Deferred`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["LiveMetrics", "Deferred"]


class Deferred:
    """A metric's value, computed by ``compute()`` when the dict holding it is read.

    Valid only until its averager takes the next value: the averager re-posts it (or
    a value) every batch, and the dict resolves it before anything else can see it.
    """

    __slots__ = ("compute",)

    def __init__(self, compute: Callable[[], Any]) -> None:
        self.compute = compute

    def __repr__(self) -> str:
        return f"Deferred({self.compute()!r})"


class LiveMetrics(dict[str, Any]):
    """The run's ``state['metrics']``: a plain dict to its readers, whose
    :class:`Deferred` entries become values as they are read."""

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if type(value) is Deferred:
            value = value.compute()
            dict.__setitem__(self, key, value)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def resolve(self) -> LiveMetrics:
        """Every deferred entry computed now; returns the dict itself."""
        for key, value in dict.items(self):
            if type(value) is Deferred:
                dict.__setitem__(self, key, value.compute())
        return self

    def snapshot(self) -> dict[str, Any]:
        """A plain dict of the current values."""
        return dict(dict.items(self.resolve()))

    def __iter__(self) -> Iterator[str]:
        # Defined so that dict(m), {**m} and update(m) read values through __getitem__
        # (CPython copies a dict subclass's storage directly only when it keeps dict's).
        return dict.__iter__(self)

    def items(self) -> Any:
        return dict.items(self.resolve())

    def values(self) -> Any:
        return dict.values(self.resolve())

    def copy(self) -> dict[str, Any]:
        return self.snapshot()

    def pop(self, key: str, *default: Any) -> Any:
        if key in self:
            value = self[key]
            dict.__delitem__(self, key)
            return value
        return dict.pop(self, key, *default)

    def popitem(self) -> tuple[str, Any]:
        self.resolve()
        return dict.popitem(self)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key in self:
            return self[key]
        return dict.setdefault(self, key, default)

    def __or__(self, other: Any) -> Any:
        return self.snapshot() | other

    def __eq__(self, other: object) -> bool:
        return dict.__eq__(self.resolve(), other)

    def __ne__(self, other: object) -> bool:
        return dict.__ne__(self.resolve(), other)

    __hash__ = None

    def __repr__(self) -> str:
        return dict.__repr__(self.resolve())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self.snapshot(),))
