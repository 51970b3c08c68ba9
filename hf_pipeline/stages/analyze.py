"""analyze — the paper's analysis of its data: §6.1 (template usage, power law) and §3.2 (chunk index vs. position).

"4.3M unique instruction templates were used to instantiate ~1.08B total instructions. We find no single
instruction template comprises more than 0.09% of the generated instructions ... a power-fit relationship
between the number of pre-training documents (x) and the number of unique instruction templates (y) ...
y = 16,891·x^0.24 with an r² = 0.96." (§6.1) "We find a Pearson correlation of 0.99 between the index of the
chunk (k) used to retrieve the instruction template and the location of the retrieved answer excerpt within
the source document." (§3.2)

Reads the judged pairs (--input: match's `doc_id, template_id, chunk_index` + instantiate's `status,
excerpt_ratio, excerpt_spans` + judge's `judge_score, judge_status`), the source documents (config
`documents`: their lengths place excerpts, and every document counts towards x), and optionally the
`assemble` output (config `assembled`). The pairs analysed ("the final data") are:

- with `assembled`: the input rows whose (doc_id, template_id) is a row of the assembled data;
- without: the input rows that assemble would consider, `status == "ok"` and `judge_score >= min_judge_score`.

On those pairs: uses per template; unique templates y among the first x documents, documents taken in a
seeded random order, at log-spaced x, fitted to y = a·x^b by least squares in log-log space; and the Pearson
correlation between `chunk_index` and the relative position `excerpt_spans[0][0] / len(document text)` of the
answer's first excerpt. Pairs retrieved by the global vector (chunk 0) have no position and are left out of the
correlation (counted), as are answers without an excerpt. r is reported over pairs and over the per-chunk mean
positions (one point per k); the paper's 0.99 with "increasing linearly with the chunk index used" reads as the
latter. Over all input rows: the excerpt-ratio distribution, the judge-score distribution (of instantiated
pairs) and status counts per stage (instantiate `status`, judge `judge_status`, documents without any pair,
and assemble's drop counts from its card).

Published in one commit: per-template usage (`default`: template_id, uses, documents, share, rank), the
scalar figures (`metrics`: metric, value), `analysis.json` with everything, and PNG plots shown in the card.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_pipeline import analysis as an
from hf_pipeline.errors import PipelineError
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.text.budget import pair_drop_reason

OUTPUT_COLUMNS = {"template_id": "string", "uses": "int64", "documents": "int64", "share": "float64", "rank": "int64"}
MAP_COLUMNS = {
    "doc_id": "string", "template_id": "string", "chunk_index": "int64", "status": "string", "excerpt_ratio": "float64",
    "first_excerpt_start": "int64", "judge_score": "int64", "judge_status": "string", "used": "bool",
}
METRICS_COLUMNS = {"metric": "string", "value": "float64"}
PLOTS = {
    "template_usage": "plots/template_usage.png",
    "power_law": "plots/power_law.png",
    "chunk_position": "plots/chunk_position.png",
    "excerpt_ratio": "plots/excerpt_ratio.png",
    "judge_scores": "plots/judge_scores.png",
}


@dataclass
class AnalyzeConfig:
    documents: str | None = field(
        default=None, metadata={"help": "the source documents (org/name@revision or a path; columns doc_id, text); required"}
    )
    documents_split: str = field(default="train", metadata={"help": "split of the documents dataset"})
    assembled: str | None = field(
        default=None,
        metadata={"help": "the assemble output (org/name@tag): analyse the pairs it kept; default: the pairs passing the judge filter"},
    )
    min_judge_score: int | None = field(
        default=4, metadata={"help": "without 'assembled': pairs count as used when judged at least this (paper: 4); null: no judge filter"}
    )
    excerpt_ratio_threshold: float = field(default=0.8, metadata={"help": "reported share of answers with excerpt ratio at or above this (paper: 0.80)"})
    power_law_points: int = field(default=20, metadata={"help": "document counts x (log-spaced) at which unique templates are counted"})
    seed: int = field(default=0, metadata={"help": "seed of the random document order for the growth curve"})
    top_templates: int = field(default=10, metadata={"help": "most used templates listed in the card"})
    plots: bool = field(default=True, metadata={"help": "draw PNG plots (needs matplotlib) and show them in the card"})
    batch_size: int = field(default=1000, metadata={"help": "documents read per batch when measuring their length"})


def check_config(config: AnalyzeConfig) -> None:
    if not config.documents:
        raise PipelineError("analyze needs config key 'documents': the source documents (org/name@revision or a path).")
    if config.power_law_points < 2 or config.top_templates < 0 or config.batch_size < 1:
        raise PipelineError("config key 'power_law_points' must be at least 2, 'top_templates' >= 0 and 'batch_size' >= 1.")


def input_refs(config: AnalyzeConfig) -> list[str]:
    check_config(config)
    return [config.documents] + ([config.assembled] if config.assembled else [])


def setup(ctx: StageContext) -> None:
    if ctx.config.plots:
        from hf_pipeline.plots import check_available

        check_available()  # fail before the map, not after it


def pair_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """Per pair: what the analysis needs, with the first excerpt's start offset and whether the pair is 'used'."""
    config: AnalyzeConfig = ctx.config
    n = len(batch["doc_id"])
    judge_filter = config.min_judge_score if not config.assembled else None
    if judge_filter is not None and "judge_score" not in batch:
        raise PipelineError(
            "analyze's input lacks column 'judge_score' (the judge stage's output); set min_judge_score=null to "
            "analyse pairs without a judge filter."
        )
    none = [None] * n
    spans = batch.get("excerpt_spans", none)
    scores, judge_status = batch.get("judge_score", none), batch.get("judge_status", none)
    return {
        "doc_id": batch["doc_id"],
        "template_id": batch["template_id"],
        "chunk_index": batch["chunk_index"],
        "status": batch["status"],
        "excerpt_ratio": batch.get("excerpt_ratio", none),
        "first_excerpt_start": [int(s[0][0]) if s else None for s in spans],
        "judge_score": scores,
        "judge_status": judge_status,
        "used": [pair_drop_reason(st, sc, js, judge_filter) is None for st, sc, js in zip(batch["status"], scores, judge_status)],
    }


def _documents(ctx: StageContext) -> tuple[list[str], list[int]]:
    """doc_ids and text lengths in characters, in the documents' row order."""
    config: AnalyzeConfig = ctx.config
    docs = ctx.load(config.documents, split=config.documents_split)
    missing = [c for c in ("doc_id", "text") if c not in docs.column_names]
    if missing:
        raise PipelineError(f"documents {config.documents} lack column '{missing[0]}' (they have: {', '.join(docs.column_names)}).")
    ids, chars = [], []
    for batch in docs.select_columns(["doc_id", "text"]).iter(batch_size=config.batch_size):
        ids += [str(d) for d in batch["doc_id"]]  # pairs carry doc_id as a string (match's output)
        chars += [len(t) if t else 0 for t in batch["text"]]
    return ids, chars


def _assemble_counts(ctx: StageContext) -> dict[str, Any] | None:
    """The drop counts recorded in the assemble output's card, when it has one."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(ctx.download(ctx.config.assembled, "README.md"))
    except PipelineError:
        return None
    counts = card.data.to_dict().get("hf_pipeline", {}).get("counts", {})
    return dict(counts.get("drops", {})) or None


def analyze(ds, ctx: StageContext):
    config: AnalyzeConfig = ctx.config
    col = {c: ds[c][:] for c in ds.column_names}
    n_rows = len(ds)
    doc_ids, doc_chars = _documents(ctx)
    chars_by_doc = dict(zip(doc_ids, doc_chars))

    # which pairs are "the final data"
    if config.assembled:
        final = ctx.load(config.assembled)
        kept_keys = set(zip(final["doc_id"][:], final["template_id"][:]))
        used = [(d, t) in kept_keys for d, t in zip(col["doc_id"], col["template_id"])]
        matched = set(k for k, u in zip(zip(col["doc_id"], col["template_id"]), used) if u)
        basis = f"pairs kept by assemble ({config.assembled})"
        not_found = len(kept_keys - matched)
    else:
        used = col["used"]
        not_found = 0
        basis = "pairs with status ok" + (f" and judge_score >= {config.min_judge_score}" if config.min_judge_score is not None else "")
    rows = [i for i in range(n_rows) if used[i]]

    # template usage and the per-template table
    usage = an.template_usage((col["template_id"][i] for i in rows), top=config.top_templates)
    docs_per_template: dict[str, set] = defaultdict(set)
    templates_by_doc: dict[str, set] = defaultdict(set)
    for i in rows:
        docs_per_template[col["template_id"][i]].add(col["doc_id"][i])
        templates_by_doc[col["doc_id"][i]].add(col["template_id"][i])
    uses = Counter(col["template_id"][i] for i in rows)
    ranked = sorted(uses.items(), key=lambda kv: (-kv[1], kv[0]))
    table = {
        "template_id": [t for t, _ in ranked],
        "uses": [n for _, n in ranked],
        "documents": [len(docs_per_template[t]) for t, _ in ranked],
        "share": [n / len(rows) for _, n in ranked],
        "rank": list(range(1, len(ranked) + 1)),
    }

    # diversity growth: unique templates among the first x documents, documents in a seeded random order
    known = set(doc_ids)
    order = an.document_order(len(doc_ids), config.seed)
    points = an.log_spaced_points(len(doc_ids), config.power_law_points)
    growth_y = an.unique_growth([templates_by_doc.get(doc_ids[i], ()) for i in order], points)
    fit = an.fit_power_law(points, growth_y)
    power = {
        "documents": len(doc_ids),
        "fit": fit.to_dict() if fit else None,
        "curve": [{"x": x, "y": y} for x, y in zip(points, growth_y)],
        "paper": an.PAPER_POWER_LAW,
    }

    # chunk index vs. where the first excerpt starts
    excluded: Counter = Counter()
    chunks, positions = [], []
    for i in rows:
        k, start, doc = col["chunk_index"][i], col["first_excerpt_start"][i], col["doc_id"][i]
        if k is None or k < 1:
            excluded["global_vector"] += 1
        elif start is None:
            excluded["no_excerpt"] += 1
        elif not chars_by_doc.get(doc):
            excluded["unknown_or_empty_document"] += 1
        else:
            chunks.append(int(k))
            positions.append(an.relative_position(start, chars_by_doc[doc]))
    chunk = {**an.chunk_position(chunks, positions), "excluded": dict(excluded), "paper_r": an.PAPER_CHUNK_PEARSON}

    # distributions and status counts over all input rows
    ratios = [r for r in col["excerpt_ratio"] if r is not None]
    instantiated = [i for i in range(n_rows) if col["status"][i] == "ok"]
    has_judge = any(s is not None for s in col["judge_score"]) or any(s is not None for s in col["judge_status"])
    docs_with_pairs = len(set(col["doc_id"]) & known)
    status = {
        "instantiate": an.value_counts(col["status"]),
        "judge": an.value_counts(col["judge_status"][i] for i in instantiated) if has_judge else None,
        "documents": {
            "documents": len(doc_ids), "with_pairs": docs_with_pairs, "without_pairs": len(doc_ids) - docs_with_pairs,
            "pair_rows_of_unknown_documents": sum(1 for d in col["doc_id"] if d not in known),
        },
        "assemble": _assemble_counts(ctx) if config.assembled else None,
    }
    result: dict[str, Any] = {
        "pairs_in": n_rows,
        "pairs_analysed": len(rows),
        "basis": basis,
        "assembled_rows_not_in_input": not_found,
        "templates": usage,
        "power_law": power,
        "chunk_position": chunk,
        "excerpt_ratio": {
            **an.distribution(col["excerpt_ratio"], config.excerpt_ratio_threshold),
            "threshold": config.excerpt_ratio_threshold,
            "histogram": an.ratio_histogram(ratios),
        },
        "judge_score": an.value_counts(col["judge_score"][i] for i in instantiated) if has_judge else None,
        "status": status,
    }
    ctx.scratch.update(analysis=result, chunks=chunks, positions=positions)

    import datasets

    from hf_pipeline.features import features_from_spec

    out = datasets.Dataset.from_dict(table, features=features_from_spec(OUTPUT_COLUMNS))
    return out, {}, result


def write_report(ds, ctx: StageContext, out_dir: Path) -> dict[str, Path]:
    """analysis.json, the metrics table (config `metrics`) and the plots, all in the data's commit."""
    import datasets

    from hf_pipeline.features import features_from_spec

    result = ctx.scratch["analysis"]
    files: dict[str, Path] = {}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2))
    files["analysis.json"] = out_dir / "analysis.json"
    metrics = an.metrics_table(result)
    table = datasets.Dataset.from_dict(
        {"metric": [m for m, _ in metrics], "value": [v for _, v in metrics]}, features=features_from_spec(METRICS_COLUMNS)
    )
    table.to_parquet(str(out_dir / "metrics.parquet"))
    files["data/metrics-00000-of-00001.parquet"] = out_dir / "metrics.parquet"
    if ctx.config.plots:
        from hf_pipeline import plots

        t, pw, ch = result["templates"], result["power_law"], result["chunk_position"]
        if t["histogram"]:
            files[PLOTS["template_usage"]] = plots.template_usage(t["histogram"], out_dir / PLOTS["template_usage"])
        if any(p["y"] > 0 for p in pw["curve"]):
            xs, ys = zip(*[(p["x"], p["y"]) for p in pw["curve"] if p["y"] > 0])
            files[PLOTS["power_law"]] = plots.power_law(xs, ys, pw["fit"], out_dir / PLOTS["power_law"])
        if ctx.scratch["chunks"]:
            files[PLOTS["chunk_position"]] = plots.chunk_position(
                ctx.scratch["chunks"], ctx.scratch["positions"], ch, out_dir / PLOTS["chunk_position"]
            )
        if result["excerpt_ratio"]["count"]:
            files[PLOTS["excerpt_ratio"]] = plots.ratio_histogram(
                result["excerpt_ratio"]["histogram"], ctx.config.excerpt_ratio_threshold, out_dir / PLOTS["excerpt_ratio"]
            )
        if result["judge_score"]:
            files[PLOTS["judge_scores"]] = plots.judge_scores(result["judge_score"], out_dir / PLOTS["judge_scores"])
    return files


STAGE = Stage(
    name="analyze",
    description="template usage and power-law diversity, chunk-index vs excerpt-position correlation, distributions, plots (§6.1, §3.2)",
    config_class=AnalyzeConfig,
    output_columns=OUTPUT_COLUMNS,
    map_columns=MAP_COLUMNS,
    input_columns=("doc_id", "template_id", "chunk_index", "status"),
    map_batch=pair_batch,
    setup=setup,
    finalize=analyze,
    input_refs=input_refs,
    artifacts=write_report,
    extra_configs=lambda config: {"metrics": "data/metrics-*"},
)
