"""The statistics of the paper's analysis (§3.2, §6.1), pure: lists and numbers in, numbers out. No I/O.

At a billion documents the analysis is computed from additive figures: each shard records counts, sums and
histograms, the shards' figures are summed, and the results (means, Pearson r, the power-law fit) are derived
from the sums once. Everything here is either such a per-shard reduction or such a derivation.

- Template usage (§6.1): uses per template, unique templates, the top template's share, a histogram of
  uses per template in power-of-two bins (`usage_bins`, summed across partitions of the templates).
- Diversity growth (§6.1, "a power-fit relationship between the number of pre-training documents (x) and
  the number of unique instruction templates (y) utilized at least once ... y = 16,891·x^0.24, r² = 0.96"):
  documents are taken in the order of a seeded hash of their id (`doc_hash`, uniform in [0, 1)); at each
  threshold t (log-spaced, `growth_thresholds`), x(t) = documents with hash < t and y(t) = templates whose
  smallest hash over the documents using them is < t: exactly the templates used among those x documents. Both
  are counts that add up over shards (x) and over partitions of the templates (y); log y = log a + b log x is
  fitted by ordinary least squares, r² that of the fit in log-log space.
- Chunk index vs. excerpt position (§3.2, "a Pearson correlation of 0.99 between the index of the chunk (k)
  used to retrieve the instruction template and the location of the retrieved answer excerpt"): Pearson r
  over pairs from the sums n, Σk, Σk², Σp, Σp², Σkp (`pearson_from_sums`), and over the per-chunk mean
  positions (per chunk: n, Σp, Σp², and a histogram for quartiles).
- Distributions: fixed-bin histograms on [0, 1] (`bin_counts`), quantiles read from them (`histogram_quantile`,
  to within a bin's width), on the grids of `hf_pipeline.methods.histograms`.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hf_pipeline.methods.histograms import Grid

PAPER_POWER_LAW = {"a": 16891.0, "b": 0.24, "r2": 0.96}
PAPER_CHUNK_PEARSON = 0.99


def _r(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), digits)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's r, or None with fewer than two points or a constant variable."""
    if len(x) != len(y):
        raise ValueError("x and y differ in length")
    if len(x) < 2:
        return None
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    xd, yd = xa - xa.mean(), ya - ya.mean()
    denom = math.sqrt(float((xd * xd).sum()) * float((yd * yd).sum()))
    return None if denom == 0 else float((xd * yd).sum()) / denom


# ---------------------------------------------------------------- template usage


def usage_histogram(uses: Iterable[int]) -> list[dict[str, int]]:
    """Templates by uses in power-of-two bins [1,1], [2,3], [4,7], ...: [{"min", "max", "templates"}], empty bins omitted."""
    return histogram_from_bins(usage_bins(uses))


def usage_bins(uses: Iterable[int]) -> dict[str, int]:
    """Templates per power-of-two bin of uses, keyed by the bin's lower bound ("1", "2", "4", ...): additive."""
    bins: Counter = Counter()
    for n in uses:
        if n >= 1:
            bins[1 << (int(n).bit_length() - 1)] += 1
    return {str(k): bins[k] for k in sorted(bins)}


def histogram_from_bins(bins: Mapping[str, int]) -> list[dict[str, int]]:
    """`usage_bins` (summed) as [{"min", "max", "templates"}], the form `usage_histogram` returns."""
    return [{"min": int(k), "max": 2 * int(k) - 1, "templates": int(n)} for k, n in sorted(bins.items(), key=lambda kv: int(kv[0])) if n]


def median_bin(histogram: Sequence[Mapping[str, int]]) -> dict[str, int] | None:
    """The bin of `histogram_from_bins` holding the median template (by uses)."""
    total = sum(b["templates"] for b in histogram)
    seen = 0
    for b in histogram:
        seen += b["templates"]
        if 2 * seen >= total and total:
            return {"min": b["min"], "max": b["max"]}
    return None


def top_templates(uses: Mapping[str, int], k: int) -> list[tuple[str, int]]:
    """The k most used templates of {template_id: uses} (most uses first, ties by id): merging each partition's
    top k gives the global top k, since a template's uses are all in one partition."""
    return sorted(uses.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


# ---------------------------------------------------------------- power law


def doc_hash(seed: int, doc_id: str) -> float:
    """A document's place in the growth curve's random order: uniform in [0, 1), a function of (seed, doc_id)."""
    digest = hashlib.blake2b(f"{seed}\x1f{doc_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) / float(1 << 53)  # 53 bits: exact as a float, never 1.0


def growth_thresholds(per_decade: int, decades: int = 12) -> list[float]:
    """Hash thresholds 10^(-j/per_decade) for j = decades·per_decade .. 0: ascending, log-spaced, ending at 1 (every
    document). 12 decades reach x ≈ 1 at 10^12 documents."""
    return [10.0 ** (-j / per_decade) for j in range(decades * per_decade, -1, -1)]


def count_below(values: Iterable[float], thresholds: Sequence[float]) -> list[int]:
    """For each threshold t (ascending), how many values are < t: x(t) of a shard's document hashes, y(t) of a
    partition's per-template smallest hashes. Adds up over disjoint sets of values."""
    v = np.sort(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float))
    return [int(c) for c in np.searchsorted(v, np.asarray(thresholds, dtype=float), side="left")]


def growth_curve(thresholds: Sequence[float], documents: Sequence[int], templates: Sequence[int]) -> list[dict[str, Any]]:
    """The (x, y) points of the growth curve from the summed counts: thresholds with x >= 1, one per distinct x (y
    only changes when a document's hash is passed)."""
    out: list[dict[str, Any]] = []
    for t, x, y in zip(thresholds, documents, templates):
        if x >= 1 and (not out or out[-1]["x"] != x):
            out.append({"x": int(x), "y": int(y), "threshold": float(t)})
    return out


def unique_growth(templates_per_document: Sequence[Iterable[str]], points: Sequence[int]) -> list[int]:
    """y at each x in `points`: distinct templates among the first x documents (in the order given). The definition
    the hash thresholds compute without holding the documents in one place (the tests compare the two)."""
    seen: set = set()
    out, want = [], iter(sorted(points))
    x = next(want, None)
    for i, templates in enumerate(templates_per_document, start=1):
        seen.update(templates)
        while x is not None and x == i:
            out.append(len(seen))
            x = next(want, None)
    if x is not None:
        raise ValueError(f"point {x} is beyond the {len(templates_per_document)} documents")
    return out


@dataclass
class PowerLawFit:
    a: float
    b: float
    r2: float | None
    points: int

    def predict(self, x: float | np.ndarray) -> float | np.ndarray:
        return self.a * np.power(x, self.b)

    def to_dict(self) -> dict[str, Any]:
        return {k: (_r(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def fit_power_law(x: Sequence[float], y: Sequence[float]) -> PowerLawFit | None:
    """Least squares of log y = log a + b log x over the points with x > 0 and y > 0; None with < 2 distinct x.

    r² = 1 - SS_res / SS_tot in log space (None when all log y are equal).
    """
    pts = [(float(a), float(b)) for a, b in zip(x, y) if a > 0 and b > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    lx = np.log([p[0] for p in pts])
    ly = np.log([p[1] for p in pts])
    b, log_a = np.polyfit(lx, ly, 1)
    resid = ly - (log_a + b * lx)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = None if ss_tot == 0 else 1.0 - float((resid**2).sum()) / ss_tot
    return PowerLawFit(a=float(math.exp(log_a)), b=float(b), r2=r2, points=len(pts))


# ---------------------------------------------------------------- chunk index vs. excerpt position


def relative_position(span_start: int | None, doc_chars: int | None) -> float | None:
    """Where an excerpt starts, as a fraction of the document's characters; None when unknown."""
    if span_start is None or not doc_chars:
        return None
    return min(max(span_start / doc_chars, 0.0), 1.0)


def pearson_from_sums(n: int, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float | None:
    """Pearson's r from n and the sums of x, y, x², y², xy (summed over shards); None with fewer than two points
    or a constant variable."""
    if n < 2:
        return None
    vx, vy = sxx - sx * sx / n, syy - sy * sy / n
    if vx <= 1e-12 * max(abs(sxx), 1.0) or vy <= 1e-12 * max(abs(syy), 1.0):
        return None
    return max(-1.0, min(1.0, (sxy - sx * sy / n) / math.sqrt(vx * vy)))


def chunk_sums(chunks: Sequence[int], positions: Sequence[float], bins: int = 20) -> dict[str, Any]:
    """A shard's additive figures for the chunk-position correlation: the sums over pairs, and per chunk index
    the pairs, Σp, Σp² and a histogram of positions."""
    k = np.asarray(chunks, dtype=np.int64)
    p = np.asarray(positions, dtype=float)
    sums = {"n": int(k.size), "k": int(k.sum()), "kk": int((k * k).sum()), "p": float(p.sum()), "pp": float((p * p).sum()),
            "kp": float((k * p).sum())}
    by_chunk = {}
    for c in np.unique(k):
        pc = p[k == c]
        by_chunk[str(int(c))] = {"pairs": int(pc.size), "sum": float(pc.sum()), "sum_sq": float((pc * pc).sum()),
                                 "histogram": bin_counts(pc, bins)}
    return {"sums": sums, "by_chunk": by_chunk}


def chunk_position(sums: Mapping[str, Any], by_chunk: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """How excerpt positions follow chunk indices, from the summed `chunk_sums`.

    `pearson_r`: over pairs. `pearson_r_chunk_means`: between k and the mean position of the pairs retrieved
    by chunk k (one point per chunk index; the paper's "increasing linearly with the chunk index" figure).
    Per chunk: mean and standard deviation exactly, quartiles from the histogram (to within a bin's width).
    """
    rows = []
    for key in sorted(by_chunk, key=int):
        c = by_chunk[key]
        n = c["pairs"]
        mean = c["sum"] / n if n else None
        var = max(c["sum_sq"] / n - mean * mean, 0.0) if n else None
        rows.append({
            "chunk_index": int(key), "pairs": int(n), "mean": _r(mean), "std": _r(math.sqrt(var)) if var is not None else None,
            "p25": _r(histogram_quantile(c["histogram"], 0.25)), "median": _r(histogram_quantile(c["histogram"], 0.5)),
            "p75": _r(histogram_quantile(c["histogram"], 0.75)),
        })
    means = [(r["chunk_index"], r["mean"]) for r in rows if r["mean"] is not None]
    return {
        "pairs": int(sums.get("n", 0)),
        "pearson_r": _r(pearson_from_sums(sums.get("n", 0), sums.get("k", 0), sums.get("p", 0.0), sums.get("kk", 0),
                                          sums.get("pp", 0.0), sums.get("kp", 0.0))),
        "pearson_r_chunk_means": _r(pearson([k for k, _ in means], [m for _, m in means])) if len(means) > 1 else None,
        "by_chunk": rows,
    }


# ---------------------------------------------------------------- distributions


# excerpt positions and ratios lie in [0, 1]: their histograms are on that grid, as many bins as they have counts
def bin_counts(values: Iterable[float | None], bins: int = 20) -> list[int]:
    """Counts of the non-null values in `bins` equal bins of [0, 1] (`Grid.counts`): additive."""
    return Grid(0.0, 1.0, bins).counts(values)


def histogram_quantile(counts: Sequence[int], q: float) -> float | None:
    """The q-quantile of values counted by `bin_counts` (`Grid.quantile`), to within a bin's width."""
    return Grid(0.0, 1.0, len(counts)).quantile(counts, q)


def ratio_histogram(counts: Sequence[int]) -> list[dict[str, Any]]:
    """`bin_counts` as [{"min", "max", "pairs"}], for the card and the plot."""
    grid = Grid(0.0, 1.0, len(counts))
    return [{"min": _r(grid.bin_start(i), 4), "max": _r(grid.bin_start(i + 1), 4), "pairs": int(c)} for i, c in enumerate(counts)]


def value_counts(values: Iterable[Any]) -> dict[str, int]:
    """{str(value) or "null": count}, most common first, ties by key."""
    c = Counter("null" if v is None else str(v) for v in values)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def metrics_table(analysis: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The scalar figures of an analysis as (metric, value) rows, dotted names, booleans and None left out."""
    rows: list[tuple[str, float]] = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            rows.append((prefix, float(node)))

    walk("", analysis)
    return rows
