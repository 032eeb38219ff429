"""Which tier serves which part of a read: the coarsest tier whose resolution divides the
query's window serves the whole buckets it has completed; what is left at either edge goes to
the next finer eligible tier, and the finest tier serves the rest. Pure arithmetic, shared by
every backend."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Segment:
    """Rows of tier `resolution` with lo <= ts < hi."""

    resolution: float
    lo: float
    hi: float

    @property
    def buckets(self) -> int:
        """How many buckets of one series the segment spans."""
        return math.ceil((self.hi - self.lo) / self.resolution)


def plan_segments(
    resolutions: Sequence[float],
    complete_until: dict[float, float],
    window: float | None,
    start: float,
    until: float,
) -> list[Segment]:
    """The segments covering [start, until), in time order."""
    coarse = [r for r in reversed(resolutions[1:]) if window is None or is_multiple(window, r)]
    segments: list[Segment] = []

    def cover(lo: float, hi: float, candidates: list[float]) -> None:
        if lo >= hi:
            return
        if not candidates:
            segments.append(Segment(resolutions[0], lo, hi))
            return
        r, finer = candidates[0], candidates[1:]
        a = math.ceil(lo / r) * r
        b = min(math.floor(hi / r) * r, complete_until.get(r, 0.0))
        if a >= b:
            cover(lo, hi, finer)
            return
        cover(lo, a, finer)
        segments.append(Segment(r, a, b))
        cover(b, hi, finer)

    cover(start, until, coarse)
    return segments


def is_multiple(a: float, b: float) -> bool:
    """Whether `a` is a whole multiple (at least 1×) of `b`."""
    q = a / b
    return q >= 1 and abs(q - round(q)) < 1e-9
