"""PNG plots of an analysis (matplotlib, Agg backend: no display needed). Each function writes one file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence



def _pyplot():
    from hf_pipeline.optional import require

    require("matplotlib", "analyze", "plots (or set config key plots=false)")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def check_available() -> None:
    _pyplot()


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def template_usage(histogram: Sequence[Mapping[str, int]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = [str(b["min"]) if b["min"] == b["max"] else f"{b['min']}–{b['max']}" for b in histogram]
    heights = [b["templates"] for b in histogram]
    ax.bar(range(len(histogram)), heights, color="#4C72B0")
    ax.set_xticks(range(len(histogram)), labels, rotation=45, ha="right")
    if heights and max(heights) > 20 * min(heights):  # a long tail: log scale, bars from below 1
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
    ax.set_xlabel("uses per template")
    ax.set_ylabel("templates")
    ax.set_title("Template usage")
    return _save(fig, path)


def power_law(x: Sequence[int], y: Sequence[int], fit: Mapping[str, Any] | None, path: Path) -> Path:
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.scatter(x, y, s=14, color="#4C72B0", label="observed")
    if fit:
        xs = np.geomspace(max(1, min(x)), max(x), 100)
        r2 = "n/a" if fit["r2"] is None else f"{fit['r2']:.3f}"
        ax.plot(xs, fit["a"] * xs ** fit["b"], color="#C44E52", label=f"y = {fit['a']:.4g}·x^{fit['b']:.3f} (r² {r2})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("documents (x)")
    ax.set_ylabel("unique templates used (y)")
    ax.set_title("Template diversity vs. documents")
    ax.legend(fontsize=8)
    return _save(fig, path)


def chunk_position(by_chunk: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], path: Path) -> Path:
    """Per chunk index k: the mean relative position of the first excerpt (line) and its quartiles (bars), from the
    summed per-chunk figures; no per-pair scatter."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    rows = [r for r in by_chunk if r.get("mean") is not None]
    ks = [r["chunk_index"] for r in rows]
    quartiles = [(r["p25"], r["p75"]) for r in rows if r.get("p25") is not None and r.get("p75") is not None]
    if len(quartiles) == len(rows):
        ax.vlines(ks, [q[0] for q in quartiles], [q[1] for q in quartiles], color="#4C72B0", linewidth=6, alpha=0.4,
                  label="p25–p75")
    ax.plot(ks, [r["mean"] for r in rows], "o-", color="#C44E52", label="mean")
    ax.set_xticks(ks)
    ax.set_xlabel("chunk index k of the retrieving vector")
    ax.set_ylabel("first excerpt's relative position")
    ax.set_ylim(0, 1)
    r, rm = summary.get("pearson_r"), summary.get("pearson_r_chunk_means")
    ax.set_title(f"Pearson r = {r if r is not None else 'n/a'} (pairs), {rm if rm is not None else 'n/a'} (chunk means)", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def ratio_histogram(histogram: Sequence[Mapping[str, Any]], threshold: float | None, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    widths = [b["max"] - b["min"] for b in histogram]
    ax.bar([b["min"] for b in histogram], [b["pairs"] for b in histogram], width=widths, align="edge", color="#4C72B0",
           edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#C44E52", linestyle="--", label=f"keep ≥ {threshold}")
        ax.legend(fontsize=8)
    ax.set_xlabel("excerpt ratio (excerpted share of the answer)")
    ax.set_ylabel("pairs")
    ax.set_title("Excerpt ratio")
    return _save(fig, path)


def judge_scores(counts: Mapping[str, int], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    keys = [k for k in ("1", "2", "3", "4", "5") if k in counts] + [k for k in counts if k not in ("1", "2", "3", "4", "5")]
    ax.bar(keys, [counts[k] for k in keys], color=["#C44E52" if k in ("1", "2", "3") else "#55A868" if k in ("4", "5") else "#8C8C8C" for k in keys])
    ax.set_xlabel("judge score")
    ax.set_ylabel("pairs")
    ax.set_title("Judge scores")
    return _save(fig, path)


def score_histogram(counts: Mapping[str, int], bin_width: float, thresholds: Sequence[float], used: float | None,
                    path: Path) -> Path:
    """Documents per bin of their best cosine ({bin start: documents}), with the calibration table's thresholds
    (the one used dashed in red)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    starts = [float(k) for k in counts]
    ax.bar(starts, list(counts.values()), width=bin_width, align="edge", color="#4C72B0", edgecolor="white", linewidth=0.3)
    for t in thresholds:
        is_used = used is not None and abs(t - used) < 5e-5
        ax.axvline(t, color="#C44E52" if is_used else "#8C8C8C", linestyle="--" if is_used else ":",
                   label=f"threshold {t:.4g}" if is_used else None)
    if used is not None:
        ax.legend(fontsize=8)
    ax.set_xlabel("best cosine of a document with any template")
    ax.set_ylabel("documents")
    ax.set_title("Best cosine per document (thresholds of the calibration table dotted)", fontsize=9)
    return _save(fig, path)
