"""Histogram statistics: values counted on a fixed grid, quantiles and medians read back from the counts."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from hf_pipeline.methods.histograms import Grid, histogram_median


def test_grid_counts_values_in_half_open_bins_and_clips_the_rest():
    unit = Grid(0.0, 1.0, 20)
    assert unit.width == 0.05 and unit.bin_start(3) == pytest.approx(0.15) and unit.bin_start(20) == 1.0
    # a value on a bin's start is in that bin, though 0.15 / 0.05 < 3 in binary floating point
    assert unit.counts([0.15]) == [0, 0, 0, 1] + [0] * 16
    assert unit.counts([1.0, 1.5, -0.2, None]) == [1] + [0] * 18 + [2]  # last bin closed, outside values clipped, None dropped
    cosines = Grid(-1.0, 1.0, 400)
    eighths = np.arange(-8, 8) / 8  # the bin starts exact in binary: bins 0, 25, 50, ...
    assert np.flatnonzero(cosines.counts(eighths)).tolist() == list(range(0, 400, 25))
    assert cosines.counts(np.array([], dtype=np.float32)) == [0] * 400


def test_grid_counts_add_up_across_shards():
    values = np.random.default_rng(0).uniform(-1.0, 1.0, 1000)
    grid = Grid(-1.0, 1.0, 64)
    whole = grid.counts(values)
    assert sum(whole) == 1000
    assert [a + b for a, b in zip(grid.counts(values[:300]), grid.counts(values[300:]))] == whole


def test_grid_quantile_interpolates_within_the_bin_and_keeps_to_the_known_extremes():
    unit = Grid(0.0, 1.0, 4)
    assert unit.quantile([0, 4, 0, 0], 0.5) == pytest.approx(0.375)  # halfway through bin [0.25, 0.5)
    assert unit.quantile([1, 0, 0, 1], 1.0) == pytest.approx(1.0)
    assert unit.quantile([1, 0, 0, 1], 0.5) == pytest.approx(0.25)  # the end of the first value's bin
    assert unit.quantile([0, 4, 0, 0], 0.5, lo=0.4, hi=0.45) == 0.4 and unit.quantile([0, 4, 0, 0], 0.5, hi=0.3) == 0.3
    assert unit.quantile([0, 0, 0, 0], 0.5) is None
    with pytest.raises(ValueError, match="3 counts for a grid of 4 bins"):
        unit.quantile([1, 2, 3], 0.5)

    values = np.random.default_rng(1).normal(0.4, 0.1, 5000).clip(-1, 1)
    cosines = Grid(-1.0, 1.0, 400)
    counts = cosines.counts(values)
    for q in (0.01, 0.25, 0.5, 0.9, 0.99):
        assert cosines.quantile(counts, q) == pytest.approx(np.quantile(values, q), abs=cosines.width)


def test_median_of_counted_values():
    for values in ([3], [1, 2], [5, 1, 1, 9], [0, 0, 0, 7, 7, 100], list(range(11))):
        histogram = {str(v): n for v, n in Counter(values).items()}
        assert histogram_median(histogram) == np.median(values)
    assert histogram_median({}) == 0.0
