"""A value in the state that a callback watches (``'test_metrics.acc'``).

It may be absent for a while — before the first evaluation, nothing is in
``test_metrics`` — so absence is not an error. But a misspelt name would make the
callback do nothing for the whole run, silently: a warning says so once, as soon as the
dict it should be in holds other keys, or at the run's end when it never appeared.
"""

from __future__ import annotations

import collections.abc
import warnings
from typing import Any

from ..utils import dict_by_key

__all__ = ["WatchedValue"]

ABSENT = (KeyError, IndexError, TypeError, ValueError)


class WatchedValue:
    """``path`` (dotted, as ``dict_by_key`` takes it) read by ``owner``; ``optional``:
    a value that may never appear (no warning)."""

    def __init__(self, owner: str, path: str, optional: bool = False) -> None:
        if not isinstance(path, str) or not path:
            raise TypeError(f"{owner} watches a dotted path in the state, got {path!r}")
        self.owner = owner
        self.path = path
        self.seen = False
        self._asked = False  # whether the run read it (a run of no step has nothing to say)
        self._warned = optional  # nothing to say about an optional value

    def get(self, state: dict[str, Any], default: Any = None) -> Any:
        """Its value, or ``default`` while it is absent."""
        self._asked = True
        try:
            value = dict_by_key(state, self.path)
        except ABSENT:
            self._check_spelling(state)
            return default
        self.seen = True
        return value

    def _check_spelling(self, state: dict[str, Any]) -> None:
        group_path, _, name = self.path.rpartition(".")
        if self._warned or not group_path:
            return  # the state itself always holds other keys: wait for the run's end
        try:
            group = dict_by_key(state, group_path)
        except ABSENT:
            return  # not there yet
        if isinstance(group, collections.abc.Mapping) and group:
            self._warn(
                f"state[{group_path!r}] has no {name!r}; it holds {sorted(map(str, group))} "
                "(a typo?)"
            )

    def expected_now(self, state: dict[str, Any]) -> None:
        """Warn if it is absent at a moment it should be there (an epoch's end, for a
        top-level key: every output of a step and every callback has written by then)."""
        if self._warned or "." in self.path:
            return
        try:
            dict_by_key(state, self.path)
        except ABSENT:
            keys = sorted(k for k in state if not str(k).startswith("_"))
            metrics = state.get("metrics")
            hint = (
                f"; 'metrics.{self.path}' exists"
                if isinstance(metrics, collections.abc.Mapping) and self.path in metrics
                else ""
            )
            self._warn(
                f"state has no {self.path!r} at the epoch's end; it holds {keys} (a typo?){hint}"
            )

    def run_ended(self, state: dict[str, Any]) -> None:
        """Warn if it never appeared during the run (one that read it at all)."""
        asked, self._asked = self._asked, False
        if asked and not self.seen and not self._warned:
            keys = sorted(k for k in state if not str(k).startswith("_"))
            self._warn(
                f"{self.path!r} never appeared in the state during the run; the state holds "
                f"{keys} (a typo?)"
            )

    def _warn(self, problem: str) -> None:
        self._warned = True
        warnings.warn(f"{self.owner} did nothing: {problem}", RuntimeWarning, stacklevel=3)
