"""Histogram statistics over additive figures, pure: counts in, numbers out. No I/O.

A shard counts its values on a fixed grid of equal bins (`Grid.counts`), so shards' histograms add bin by bin; the
statistics are read back once from the summed counts: quantiles (`Grid.quantile`, to within a bin's width) and, for
values counted exactly ({value: count}), the median (`histogram_median`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """`bins` equal bins over [start, stop]: bin i holds [start + i·width, start + (i + 1)·width), the last one
    closed; values outside are counted in the first or last bin."""

    start: float
    stop: float
    bins: int

    @property
    def width(self) -> float:
        return (self.stop - self.start) / self.bins

    def bin_start(self, i: int) -> float:
        """Where bin i starts (i = bins: where the last one ends)."""
        return self.start + i * self.width

    def counts(self, values: Iterable[float | None]) -> list[int]:
        """How many of the non-null values fall in each bin: additive."""
        v = np.asarray(values if isinstance(values, np.ndarray) else [x for x in values if x is not None], dtype=np.float64)
        # scaled by bins / (stop - start), not divided by the width: the width is rarely exact in binary (0.05, 0.005)
        # and dividing by it puts a value on a bin's start (0.15 on a grid of 0.05) into the bin below
        scaled = (np.clip(v, self.start, self.stop) - self.start) * self.bins / (self.stop - self.start)
        index = np.clip(scaled.astype(np.int64), 0, self.bins - 1)
        return [int(c) for c in np.bincount(index, minlength=self.bins)]

    def quantile(self, counts: Sequence[int], q: float, lo: float | None = None, hi: float | None = None) -> float | None:
        """The q-quantile (0 < q <= 1) of the values counted in `counts` (`Grid.counts`, summed), interpolated linearly
        within the bin holding it: exact to within a bin's width, and kept within [lo, hi] when the exact smallest and
        largest values are known. None when nothing was counted."""
        if len(counts) != self.bins:
            raise ValueError(f"{len(counts)} counts for a grid of {self.bins} bins")
        total = sum(counts)
        if not total:
            return None
        target, seen = q * total, 0
        value = self.stop
        for i, c in enumerate(counts):
            if c and seen + c >= target:
                value = self.start + (i + (target - seen) / c) * self.width
                break
            seen += c
        if lo is not None:
            value = max(value, lo)
        if hi is not None:
            value = min(value, hi)
        return value


def histogram_median(histogram: Mapping[str | int, int]) -> float:
    """The median of integer values given as {value: count} (the mean of the two middle values for an even count);
    0.0 when nothing was counted."""
    items = sorted((int(v), int(n)) for v, n in histogram.items())
    total = sum(n for _, n in items)
    if not total:
        return 0.0
    cumulative = np.cumsum([n for _, n in items])
    values = [v for v, _ in items]
    lo = values[int(np.searchsorted(cumulative, (total - 1) // 2, side="right"))]
    hi = values[int(np.searchsorted(cumulative, total // 2, side="right"))]
    return (lo + hi) / 2
