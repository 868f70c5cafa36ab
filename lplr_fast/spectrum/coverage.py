"""Which tiles of an n×n matrix have been fed: rejects overlaps, certifies exact coverage.

A tile is a rectangle rows × cols of half-open sample intervals. With ``upper=True`` a tile
stands for itself and its mirror, so it must be a diagonal block (rows == cols) or lie
strictly above the diagonal (cols.start ≥ rows.stop); its share of the upper triangle
(diagonal included) is b(b+1)/2 for a b×b diagonal block and r·c otherwise. For such tiles
two upper-triangle shares meet exactly when the rectangles intersect (an entry shared with
a diagonal block lies in that block's upper triangle, because the other tile lies on or
above the diagonal), so pairwise-disjoint rectangles whose shares add up to n(n+1)/2 cover
every entry exactly once. With ``upper=False`` the tiles must cover the n² entries, again
without overlap.
"""

from __future__ import annotations

import operator

import numpy as np


def _interval(s: object, what: str) -> tuple[int, int]:
    if not isinstance(s, slice):
        raise TypeError(f"{what} must be a slice, got {type(s).__name__}")
    if s.start is None or s.stop is None:
        raise ValueError(f"{what} must be a slice with explicit start and stop, got {s}")
    try:
        start, stop = operator.index(s.start), operator.index(s.stop)
        step = 1 if s.step is None else operator.index(s.step)
    except TypeError:
        raise TypeError(f"{what} must be a slice of integers, got {s}") from None
    if step != 1:
        raise ValueError(f"{what} must be a contiguous slice (step 1), got {s}")
    return start, stop


class TileCoverage:
    """Rectangles fed so far (in sample units) and their share of the matrix."""

    def __init__(self, n: int, upper: bool) -> None:
        self.n, self.upper = n, upper
        self._rects = np.empty((16, 4), dtype=np.int64)
        self._count = 0
        self.area = 0
        self.target = n * (n + 1) // 2 if upper else n * n

    def check(self, rows: slice, cols: slice) -> tuple[int, int, int, int]:
        """Validate a new tile; returns (r0, r1, c0, c1). Raises on misuse or overlap (the
        tile is not recorded: call :meth:`add` once the tile has been accepted)."""
        r0, r1 = _interval(rows, "rows")
        c0, c1 = _interval(cols, "cols")
        if not (0 <= r0 < r1 <= self.n and 0 <= c0 < c1 <= self.n):
            raise ValueError(
                f"tile (rows {r0}:{r1}, cols {c0}:{c1}) lies outside a {self.n}-sample kernel "
                "or is empty"
            )
        if self.upper and (r0, r1) != (c0, c1) and c0 < r1:
            raise ValueError(
                f"with upper=True a tile must be a diagonal block (rows == cols) or lie above "
                f"the diagonal (cols.start ≥ rows.stop); got rows {r0}:{r1}, cols {c0}:{c1} "
                "(only tiles on or above the diagonal may be fed)"
            )
        rects = self._rects[: self._count]
        hit = (rects[:, 0] < r1) & (r0 < rects[:, 1]) & (rects[:, 2] < c1) & (c0 < rects[:, 3])
        if hit.any():
            q = rects[int(np.argmax(hit))]
            raise ValueError(
                f"tile (rows {r0}:{r1}, cols {c0}:{c1}) overlaps the tile already fed at "
                f"(rows {q[0]}:{q[1]}, cols {q[2]}:{q[3]}); every entry must be fed once"
            )
        return r0, r1, c0, c1

    def add(self, r0: int, r1: int, c0: int, c1: int) -> None:
        if self._count == len(self._rects):
            self._rects = np.concatenate([self._rects, np.empty_like(self._rects)])
        self._rects[self._count] = (r0, r1, c0, c1)
        self._count += 1
        b = r1 - r0
        self.area += b * (b + 1) // 2 if self.upper and r0 == c0 else b * (c1 - c0)

    @property
    def tiles(self) -> int:
        return self._count

    @property
    def complete(self) -> bool:
        return self.area == self.target

    def describe(self) -> str:
        unit = "upper-triangle entries (diagonal included)" if self.upper else "entries"
        return f"tiles covered {self.area} of {self.target} {unit}"
