"""The statistics of the paper's analysis (§3.2, §6.1), pure: lists and numbers in, numbers out. No I/O.

- Template usage (§6.1): uses per template, unique templates, the top template's share, a histogram of
  uses per template in power-of-two bins.
- Diversity growth (§6.1, "a power-fit relationship between the number of pre-training documents (x) and
  the number of unique instruction templates (y) utilized at least once ... y = 16,891·x^0.24, r² = 0.96"):
  documents in a seeded random order, y counted at log-spaced prefixes x, and log y = log a + b log x fitted by
  ordinary least squares; r² is that of the fit in log-log space.
- Chunk index vs. excerpt position (§3.2, "a Pearson correlation of 0.99 between the index of the chunk (k)
  used to retrieve the instruction template and the location of the retrieved answer excerpt"): Pearson r
  over pairs, and over the per-chunk mean positions (see `chunk_position`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

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
    bins: Counter = Counter()
    for n in uses:
        if n >= 1:
            bins[int(n).bit_length() - 1] += 1
    return [{"min": 1 << b, "max": (2 << b) - 1, "templates": bins[b]} for b in sorted(bins)]


def template_usage(template_ids: Iterable[str], top: int = 10) -> dict[str, Any]:
    """Uses per template over the given (one per pair) template ids, summarised."""
    counts = Counter(template_ids)
    total = sum(counts.values())
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    uses = np.asarray([n for _, n in ranked], dtype=float)
    return {
        "pairs": total,
        "unique_templates": len(counts),
        "top_template_share": _r(ranked[0][1] / total) if total else None,
        "max_uses": int(uses[0]) if total else 0,
        "median_uses": _r(float(np.median(uses))) if total else None,
        "mean_uses": _r(total / len(counts)) if total else None,
        "share_used_under_1000": _r(float((uses < 1000).mean())) if total else None,
        "top": [{"template_id": t, "uses": n, "share": _r(n / total)} for t, n in ranked[:top]],
        "histogram": usage_histogram(counts.values()),
    }


# ---------------------------------------------------------------- power law


def log_spaced_points(n: int, k: int) -> list[int]:
    """Up to `k` distinct integers from 1 to n, evenly spaced in log, always ending at n."""
    if n < 1:
        return []
    if k < 2 or n == 1:
        return [n]
    return sorted({int(round(v)) for v in np.geomspace(1, n, k)} | {n})


def unique_growth(templates_per_document: Sequence[Iterable[str]], points: Sequence[int]) -> list[int]:
    """y at each x in `points`: distinct templates among the first x documents (in the order given)."""
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


def document_order(n: int, seed: int) -> np.ndarray:
    """The seeded random order in which documents are added for the growth curve."""
    return np.random.default_rng(seed).permutation(n)


# ---------------------------------------------------------------- chunk index vs. excerpt position


def relative_position(span_start: int | None, doc_chars: int | None) -> float | None:
    """Where an excerpt starts, as a fraction of the document's characters; None when unknown."""
    if span_start is None or not doc_chars:
        return None
    return min(max(span_start / doc_chars, 0.0), 1.0)


def chunk_position(chunk_index: Sequence[int], position: Sequence[float]) -> dict[str, Any]:
    """How excerpt positions follow chunk indices (both sequences over the same pairs, chunk >= 1 only).

    `pearson_r`: over pairs. `pearson_r_chunk_means`: between k and the mean position of the pairs retrieved
    by chunk k (one point per chunk index; the paper's "increasing linearly with the chunk index" figure).
    """
    by_chunk: dict[int, list[float]] = {}
    for k, p in zip(chunk_index, position):
        by_chunk.setdefault(int(k), []).append(float(p))
    rows = []
    for k in sorted(by_chunk):
        v = np.asarray(by_chunk[k])
        rows.append({
            "chunk_index": k, "pairs": int(v.size), "mean": _r(v.mean()), "median": _r(float(np.median(v))),
            "p25": _r(float(np.quantile(v, 0.25))), "p75": _r(float(np.quantile(v, 0.75))),
        })
    return {
        "pairs": len(position),
        "pearson_r": _r(pearson(chunk_index, position)),
        "pearson_r_chunk_means": _r(pearson([r["chunk_index"] for r in rows], [r["mean"] for r in rows])),
        "by_chunk": rows,
    }


# ---------------------------------------------------------------- distributions


def ratio_histogram(values: Iterable[float], bins: int = 10) -> list[dict[str, Any]]:
    """Counts of values in [0, 1] in `bins` equal bins ([lo, hi), the last one closed)."""
    v = np.clip(np.asarray([x for x in values if x is not None], dtype=float), 0.0, 1.0)
    counts, edges = np.histogram(v, bins=bins, range=(0.0, 1.0))
    return [{"min": _r(edges[i], 4), "max": _r(edges[i + 1], 4), "pairs": int(c)} for i, c in enumerate(counts)]


def distribution(values: Iterable[float | None], threshold: float | None = None) -> dict[str, Any]:
    """count / nulls / mean / quantiles (and the share at or above `threshold`) of a numeric column."""
    values = list(values)
    v = np.asarray([x for x in values if x is not None], dtype=float)
    out: dict[str, Any] = {"count": int(v.size), "nulls": len(values) - int(v.size)}
    if v.size:
        out.update(
            mean=_r(v.mean()), min=_r(v.min()), p25=_r(float(np.quantile(v, 0.25))), median=_r(float(np.median(v))),
            p75=_r(float(np.quantile(v, 0.75))), max=_r(v.max()),
        )
        if threshold is not None:
            out["share_at_or_above"] = _r(float((v >= threshold).mean()))
    return out


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
