"""The values a steerable setting may take: a low and a high bound, each closed or
open, finite numbers only unless said otherwise. NaN lies in no domain."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Domain", "WHOLE_LIMIT"]

WHOLE_LIMIT = 2**53
"""The largest whole number a whole-number setting may take: every whole number up to
it is exact in a float (and in JSON), and it fits the wire's 64-bit integers."""


@dataclass(frozen=True)
class Domain:
    """``low``/``high``: None for no bound; ``low_open``/``high_open``: the bound
    itself is excluded; ``finite``: infinities are excluded (NaN always is)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    finite: bool = True

    def __contains__(self, value: float) -> bool:
        if isinstance(value, float) and (math.isnan(value) or (self.finite and math.isinf(value))):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (
            value > self.high or (self.high_open and value == self.high)
        )

    def __str__(self) -> str:
        """Interval notation: ``[0, 1)``, ``(0, inf)``."""
        low = "-inf" if self.low is None else _number(self.low)
        high = "inf" if self.high is None else _number(self.high)
        opening = "(" if self.low_open or self.low is None else "["
        closing = ")" if self.high_open or self.high is None else "]"
        return f"{opening}{low}, {high}{closing}"

    def whole(self) -> Domain:
        """This domain for a whole-number setting: at most :data:`WHOLE_LIMIT` either
        way."""
        high = WHOLE_LIMIT if self.high is None else min(self.high, WHOLE_LIMIT)
        low = -WHOLE_LIMIT if self.low is None else max(self.low, -WHOLE_LIMIT)
        return Domain(low, high, self.low_open, self.high_open, finite=True)


def _number(value: float) -> str:
    if isinstance(value, int) or (value == int(value) and abs(value) < 1e16):
        return str(int(value))
    return f"{value:g}"
