"""analyze — the paper's analysis of its data: §6.1 (template usage, power law) and §3.2 (chunk index vs. position).

"4.3M unique instruction templates were used to instantiate ~1.08B total instructions. We find no single
instruction template comprises more than 0.09% of the generated instructions ... a power-fit relationship
between the number of pre-training documents (x) and the number of unique instruction templates (y) ...
y = 16,891·x^0.24 with an r² = 0.96." (§6.1) "We find a Pearson correlation of 0.99 between the index of the
chunk (k) used to retrieve the instruction template and the location of the retrieved answer excerpt within
the source document." (§3.2)

Like `assemble`, the stage maps over the **documents** (config `documents`: every document counts towards x, and
their lengths place excerpts) with the judged pairs (`--input`: match's `doc_file, doc_row, doc_id, template_id,
chunk_index` + instantiate's `status, excerpt_ratio, excerpt_spans` + judge's `judge_score, judge_status`) as an
aligned input, read per chunk by the positions the pairs carry. The pairs analysed ("the final data") are:

- without `assembled`: the pairs assemble would consider, `status == "ok"` and `judge_score >= min_judge_score`
  (the paper's §6.1 figures are over the generated instructions);
- with `assembled` (the assemble output, whose rows carry their document's position too): a second aligned input;
  a document's pairs are used when assemble kept a row of that document with their template (as many as it kept).

Per shard (`finalize`), from the map's compact rows (one per document, one per pair), additive figures only:
documents and, per log-spaced threshold t of a seeded document hash, the documents with hash < t (x); pairs read,
status / judge-status / judge-score counts, an excerpt-ratio histogram; over used pairs, the sums n, Σk, Σk², Σp,
Σp², Σkp of chunk index k and first-excerpt position p (and per k: n, Σp, Σp², a histogram), and, per template,
(uses, documents, smallest document hash). Those per-template rows go to a `reduce` partitioned by `template_id`
(each template's rows from every shard meet in one partition) that sums them, publishes (template_id, uses,
documents, share) and counts, per threshold, the templates whose smallest hash is < t (y), the histogram of uses
and its top templates. `summarize` derives the figures once: Pearson r from the sums, the growth curve (x, y) and
its power-law fit, the global top templates (merged from the partitions' tops).

Published: per-template usage (`default`: template_id, uses, documents, share; sorted by uses within each
partition's file, no global rank: that would need one process to see every template), the scalar figures
(`metrics`: metric, value), `analysis.json` with everything, and PNG plots drawn from the summed figures.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import FILE_COLUMN, ROW_COLUMN, InputPart
from hf_pipeline.methods import analysis as an
from hf_pipeline.methods.documents import check_mapped_documents, doc_id_field, text_field
from hf_pipeline.methods.pairs import aligned_lineage_check
from hf_pipeline.methods.text.budget import pair_drop_reason
from hf_pipeline.run.estimate import CostModel, MEASURED, StageEstimate, Workload, hours
from hf_pipeline.stage import AlignedInput, ArtifactContext, Card, Inputs, Map, Reduce, Stage, StageContext

OUTPUT_COLUMNS = {"template_id": "string", "uses": "int64", "documents": "int64", "share": "float64"}
# per shard and template, what the reduce sums (finalize's output, partitioned by template_id)
TEMPLATE_COLUMNS = {"template_id": "string", "uses": "int64", "documents": "int64", "min_hash": "float64"}
# the map's rows: one per document (kind "document"), then one per pair pointing at it (kind "pair")
MAP_COLUMNS = {
    "kind": "string", "template_id": "string", "doc_hash": "float64", "pairs": "int64", "assembled_unmatched": "int64",
    "used": "bool", "new_doc": "bool", "mismatch": "bool", "chunk_index": "int64", "position": "float64",
    "excluded": "string", "excerpt_ratio": "float64", "judge_score": "int64", "status": "string", "judge_status": "string",
    "doc_key": "string",  # the nemotron layout: a pair's document id (new_doc is set per shard in finalize); else null
}
# the layout of the published fineinstructions/fineinstructions_nemotron as third parties report it (docs/LAYOUTS.md):
# one row per pair, the document's text on one row of its WARC record, judge scores in row-aligned judge-*.json
NEMOTRON_COLUMNS = ("warc_record_id", "template_id", "instantiated_instruction", "answer", "text")
PAIR_COLUMNS = ("doc_id", "template_id", "chunk_index", "status", "excerpt_ratio", "excerpt_spans", "judge_score", "judge_status")
METRICS_COLUMNS = {"metric": "string", "value": "float64"}
PLOTS = {
    "template_usage": "plots/template_usage.png",
    "power_law": "plots/power_law.png",
    "chunk_position": "plots/chunk_position.png",
    "excerpt_ratio": "plots/excerpt_ratio.png",
    "judge_scores": "plots/judge_scores.png",
}
BINS = 20  # histogram bins on [0, 1] (positions, excerpt ratios): quartiles to within 0.05
FINALIZE_BATCH = 10_000  # mapped rows read at once by finalize (bounded: the same at any shard size)
COMBINE_ROWS = 500_000  # per-template partial rows kept before they are summed again


@dataclass
class AnalyzeConfig:
    documents: str | None = field(
        default=None,
        metadata={"help": "the source documents the pairs were matched to (org/name@revision or a path; columns doc_id_column, text_column); the stage maps over them; unset: --input is in the fineinstructions_nemotron layout and holds the documents itself"},
    )
    documents_split: str = field(default="train", metadata={"help": "split of the documents dataset"})
    doc_id_column: str = doc_id_field()
    text_column: str = text_field()
    assembled: str | None = field(
        default=None,
        metadata={"help": "the assemble output (org/name@tag, rows with doc_file/doc_row): analyse the pairs it kept; default: the pairs passing the judge filter"},
    )
    min_judge_score: int | None = field(
        default=4, metadata={"help": "without 'assembled': pairs count as used when judged at least this (paper: 4); null: no judge filter"}
    )
    excerpt_ratio_threshold: float = field(default=0.8, metadata={"help": "reported share of answers with excerpt ratio at or above this (paper: 0.80)"})
    power_law_points_per_decade: int = field(
        default=4, metadata={"help": "growth-curve points per decade of documents (hash thresholds 10^(-j/this), down to 10^-12)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the document hash that orders documents for the growth curve"})
    top_templates: int = field(default=10, metadata={"help": "most used templates listed in the card"})
    partitions: int = field(default=8, metadata={"help": "partitions of the templates for the per-template sums (reduce tasks)"})
    plots: bool = field(default=True, metadata={"help": "draw PNG plots (needs matplotlib) and show them in the card"})
    input_config: str | None = field(
        default=None, metadata={"help": "the dataset config of --input to read, e.g. 'nemotron' for assemble's nemotron layout"}
    )
    judge_files: bool = field(
        default=True,
        metadata={"help": "nemotron layout: read each data file's row-aligned judge scores from judge-NNNNN-of-NNNNN.json beside "
                  "it, when there is one (the published set's reported layout), and keep pairs scored >= min_judge_score"},
    )


def nemotron_mode(config: AnalyzeConfig) -> bool:
    """Without `documents`, --input is in the fineinstructions_nemotron layout: its rows are the documents (the rows
    with text) and the pairs (the rows with an instruction) at once."""
    return not config.documents


def check_config(config: AnalyzeConfig) -> None:
    if nemotron_mode(config) and config.assembled:
        raise PipelineError("analyze's config key 'assembled' needs 'documents' (an --input in the fineinstructions_nemotron "
                            "layout is the final data already).")
    if config.power_law_points_per_decade < 1 or config.top_templates < 0 or config.partitions < 1:
        raise PipelineError("config keys 'power_law_points_per_decade' and 'partitions' must be at least 1, 'top_templates' >= 0.")


def documents_part(config: AnalyzeConfig, options: Any) -> list[InputPart]:
    """The mapped input: the documents; or, without them, --input itself in the nemotron layout."""
    check_config(config)
    if nemotron_mode(config):
        if not getattr(options, "input", None):
            raise PipelineError("analyze needs --input (the judged pairs, or a dataset in the fineinstructions_nemotron layout).")
        return [InputPart(options.input, options.split, name=config.input_config, label="nemotron")]
    return [InputPart(config.documents, config.documents_split)]


def check_input(part: InputPart, schema: Any, config: AnalyzeConfig) -> None:
    """At plan time: the documents' id and text columns, or the nemotron layout's columns."""
    if not nemotron_mode(config):
        return check_mapped_documents("analyze")(part, schema, config)
    names = list(schema.names) if schema is not None else []
    missing = [c for c in NEMOTRON_COLUMNS if c not in names]
    if missing:
        raise PipelineError(
            f"analyze needs config key 'documents' (the source documents), or an --input in the fineinstructions_nemotron "
            f"layout ({', '.join(NEMOTRON_COLUMNS)}); input {part.ref} lacks column '{missing[0]}' (it has: "
            f"{', '.join(names) or 'no columns'})."
        )


def aligned_inputs(config: AnalyzeConfig, options: Any) -> list[AlignedInput]:
    """--input (the judged pairs), and the assemble output when given: both read by document position. None in the
    nemotron layout (--input is the mapped input)."""
    if nemotron_mode(config):
        return []
    if not getattr(options, "input", None):
        raise PipelineError("analyze needs --input: the judged pairs (org/name[@revision] or a local path), the judge stage's output.")
    specs = [AlignedInput(options.input, columns=PAIR_COLUMNS)]
    if config.assembled:
        specs.append(AlignedInput(config.assembled, columns=("doc_id", "template_id")))
    return specs


def setup(ctx: StageContext) -> None:
    if ctx.config.plots:
        from hf_pipeline.methods.plots import check_available

        check_available()  # fail before the map, not after it


# ---------------------------------------------------------------- map


def check_pairs(pairs, config: AnalyzeConfig) -> None:
    names = pairs.column_names
    if config.min_judge_score is not None and not config.assembled and "judge_score" not in names:
        raise PipelineError(
            "analyze's input lacks column 'judge_score' (the judge stage's output); set min_judge_score=null to "
            "analyse pairs without a judge filter."
        )
    missing = [c for c in ("doc_id", "template_id", "chunk_index", "status") if c not in names]
    if missing:
        raise PipelineError(f"analyze's input lacks column '{missing[0]}' (it has: {', '.join(names)}).")


def by_position(table) -> dict[tuple[str, int], list[int]]:
    out: dict[tuple[str, int], list[int]] = {}
    if table is None:
        return out
    for j, (f, r) in enumerate(zip(table["doc_file"].to_pylist(), table["doc_row"].to_pylist())):
        out.setdefault((f, int(r)), []).append(j)
    return out


def judge_file_of(path: str) -> str | None:
    """The row-aligned judge scores of a data file in the nemotron layout: `judge-NNNNN-of-NNNNN.json` beside
    `<split>-NNNNN-of-NNNNN.parquet` (the naming is the reported layout's, unconfirmed)."""
    import re

    m = re.match(r"^(.*/)?[^/]*?-(\d+-of-\d+)\.parquet$", path)
    return f"{m.group(1) or ''}judge-{m.group(2)}.json" if m else None


def judge_scores(ctx: StageContext, path: str) -> list | None:
    """The judge scores of one data file (one file's list kept per worker), or None when it has none."""
    cached = ctx.scratch.get("judge_file")
    if cached is not None and cached[0] == path:
        return cached[1]
    name = judge_file_of(path) if ctx.config.judge_files else None
    scores = None
    if name is not None:
        try:
            scores = json.loads(ctx.download(ctx.part.ref, name).read_text())
        except PipelineError:  # no such file: the rows carry no judge score
            scores = None
        if scores is not None and not isinstance(scores, list):
            raise PipelineError(f"{ctx.part.ref} file {name} is not a list of judge scores (row-aligned with {path}).")
    ctx.scratch["judge_file"] = (path, scores)
    return scores


def map_nemotron(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """A batch of the nemotron layout -> a document row for each row with text (the one row of its WARC record that
    carries the document), a pair row for each row with an instruction (both for a row with both). A pair's judge
    score comes from its data file's row-aligned judge file when there is one; `new_doc` is set in finalize."""
    config: AnalyzeConfig = ctx.config
    out: dict[str, list] = {c: [] for c in MAP_COLUMNS}

    def add(**row):
        for c in MAP_COLUMNS:
            out[c].append(row.get(c))

    rows = zip(batch["warc_record_id"], batch["template_id"], batch["instantiated_instruction"], batch["text"],
               batch[FILE_COLUMN], batch[ROW_COLUMN])
    for key, tid, instruction, text, f, r in rows:
        key = None if key is None else str(key)
        h = an.doc_hash(config.seed, key or "")
        if text:
            add(kind="document", doc_hash=h, pairs=0, assembled_unmatched=0, used=False, new_doc=False, mismatch=False)
        if not instruction:
            continue
        scores = judge_scores(ctx, f)
        if scores is not None and len(scores) <= int(r):
            raise PipelineError(f"{ctx.part.ref}: the judge file of {f} has {len(scores)} scores, fewer than its rows: not row-aligned.")
        score = None if scores is None or scores[int(r)] is None else int(scores[int(r)])
        judge_status = None if score is None else "ok"
        used = pair_drop_reason("ok", score, judge_status, config.min_judge_score if score is not None else None) is None
        add(kind="pair", template_id=tid, doc_hash=h, pairs=0, assembled_unmatched=0, used=used, new_doc=False,
            mismatch=False, excluded="no_chunk_index" if used else None, judge_score=score, status="ok",
            judge_status=judge_status, doc_key=key)
    return out


def map_documents(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """A batch of documents -> per document its row (hash, pairs), then a compact row per pair pointing at it."""
    config: AnalyzeConfig = ctx.config
    if nemotron_mode(config):
        return map_nemotron(batch, ctx)
    files, rows = batch[FILE_COLUMN], batch[ROW_COLUMN]
    pairs = ctx.aligned_rows(files, rows)
    found, cols = {}, {}
    if pairs is not None:
        check_pairs(pairs, config)
        found = by_position(pairs)
        cols = {c: pairs[c].to_pylist() if c in pairs.column_names else [None] * pairs.num_rows for c in PAIR_COLUMNS}
    kept_rows, kept_templates = {}, []
    if config.assembled:
        kept = ctx.aligned_rows(files, rows, which=1)
        kept_rows = by_position(kept)
        kept_templates = kept["template_id"].to_pylist() if kept is not None else []
    judge_filter = None if config.assembled else config.min_judge_score
    out: dict[str, list] = {c: [] for c in MAP_COLUMNS}

    def add(**row):
        for c in MAP_COLUMNS:
            out[c].append(row.get(c))

    for doc_id, text, f, r in zip(batch[config.doc_id_column], batch[config.text_column], files, rows):
        doc_id = str(doc_id)  # the corpus's own id, as a string (as match wrote it on the pairs)
        h, chars = an.doc_hash(config.seed, doc_id), len(text) if text else 0
        mine = found.get((f, int(r)), [])
        kept_here = Counter(kept_templates[j] for j in kept_rows.get((f, int(r)), ()))
        doc_row = len(out["kind"])
        add(kind="document", doc_hash=h, pairs=len(mine), assembled_unmatched=0, used=False, new_doc=False, mismatch=False)
        templates_here: set = set()
        for j in mine:
            tid = cols["template_id"][j]
            mismatch = str(cols["doc_id"][j]) != doc_id  # matched against another revision of the documents
            if mismatch:
                used = False
            elif config.assembled:
                used = kept_here[tid] > 0
                kept_here[tid] -= used
            else:
                used = pair_drop_reason(cols["status"][j], cols["judge_score"][j], cols["judge_status"][j], judge_filter) is None
            k, spans = cols["chunk_index"][j], cols["excerpt_spans"][j]
            position = excluded = None
            if used:
                if k is None or k < 1:
                    excluded = "global_vector"  # chunk 0: retrieved by the whole document's vector, no position
                elif not spans:
                    excluded = "no_excerpt"
                elif not chars:
                    excluded = "empty_document"
                else:
                    position = an.relative_position(int(spans[0][0]), chars)
            add(kind="pair", template_id=tid, doc_hash=h, pairs=0, assembled_unmatched=0, used=used,
                new_doc=used and tid not in templates_here, mismatch=mismatch, chunk_index=k, position=position,
                excluded=excluded, excerpt_ratio=cols["excerpt_ratio"][j], judge_score=cols["judge_score"][j],
                status=cols["status"][j], judge_status=cols["judge_status"][j])
            if used:
                templates_here.add(tid)
        out["assembled_unmatched"][doc_row] = sum(kept_here.values())
    return out


# ---------------------------------------------------------------- per shard


def _counts(array) -> dict[str, int]:
    import pyarrow.compute as pc

    return {("null" if v["values"] is None else str(v["values"])): int(v["counts"]) for v in pc.value_counts(array).to_pylist()}


def _sum_templates(tables: list):
    """Per-template rows (template_id, uses, documents, min_hash) summed: uses and documents add, min_hash is the min."""
    import pyarrow as pa

    table = pa.concat_tables(tables)
    grouped = table.group_by("template_id").aggregate([("uses", "sum"), ("documents", "sum"), ("min_hash", "min")])
    grouped = grouped.rename_columns({"uses_sum": "uses", "documents_sum": "documents", "min_hash_min": "min_hash"})
    return grouped.select(list(TEMPLATE_COLUMNS)).sort_by("template_id")


def shard_figures(ds, ctx: StageContext):
    """This shard's additive figures, and its per-template rows for the reduce (streamed, a batch at a time)."""
    import datasets
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from hf_pipeline.io.features import features_from_spec
    from hf_pipeline.stage import merge_stats

    config: AnalyzeConfig = ctx.config
    thresholds = an.growth_thresholds(config.power_law_points_per_decade)
    stats: dict[str, Any] = {
        "shards": 1, "documents": 0, "documents_with_pairs": 0, "pairs_read": 0, "pairs_analysed": 0,
        "pairs_with_mismatched_document": 0, "assembled_rows_not_in_input": 0,
        "growth": {"documents": [0] * len(thresholds)},
    }
    partial: list = []
    current: dict[str, Any] = {"key": None, "templates": set(), "any": False}  # nemotron: the document being read
    for table in ds.with_format("arrow").iter(batch_size=FINALIZE_BATCH):
        runs = None
        if nemotron_mode(config):
            table, runs = documents_of_pairs(table, current)
        is_doc = pc.equal(table["kind"], "document")
        docs, pairs = table.filter(is_doc), table.filter(pc.invert(is_doc))
        used = pairs.filter(pairs["used"])
        placed = used.filter(pc.is_valid(used["position"]))
        ok = pairs.filter(pc.equal(pairs["status"], "ok"))
        ratios = pairs["excerpt_ratio"].drop_null().to_numpy()
        batch_stats = {
            "documents": docs.num_rows,
            "documents_with_pairs": runs if runs is not None else int(pc.sum(pc.greater(docs["pairs"], 0)).as_py() or 0),
            "assembled_rows_not_in_input": int(pc.sum(docs["assembled_unmatched"]).as_py() or 0),
            "pairs_read": pairs.num_rows,
            "pairs_analysed": used.num_rows,
            "pairs_with_mismatched_document": int(pc.sum(pairs["mismatch"].cast(pa.int64())).as_py() or 0),
            "growth": {"documents": an.count_below(docs["doc_hash"].to_numpy(), thresholds)},
            "status": {"instantiate": _counts(pairs["status"]), "judge": _counts(ok["judge_status"])},
            "judge_score": _counts(ok["judge_score"]),
            "excerpt_ratio": {
                "count": int(ratios.size), "nulls": pairs.num_rows - int(ratios.size), "sum": float(ratios.sum()),
                "at_or_above": int((ratios >= config.excerpt_ratio_threshold).sum()), "histogram": an.bin_counts(ratios, BINS),
            },
            "chunk_position": {
                **an.chunk_sums(placed["chunk_index"].to_numpy(zero_copy_only=False), placed["position"].to_numpy(zero_copy_only=False), BINS),
                "excluded": _counts(used["excluded"].drop_null()),
            },
        }
        stats = merge_stats(stats, batch_stats)
        if used.num_rows:
            partial.append(pa.table({
                "template_id": used["template_id"], "uses": pa.array(np.ones(used.num_rows, dtype=np.int64)),
                "documents": used["new_doc"].cast(pa.int64()), "min_hash": used["doc_hash"],
            }))
            if sum(t.num_rows for t in partial) > COMBINE_ROWS:
                partial = [_sum_templates(partial)]
    for key in ("status", "judge_score", "excerpt_ratio", "chunk_position"):
        stats.setdefault(key, {})
    if ctx.shard == 0 and config.assembled:
        stats["assemble_drops"] = _assemble_drops(ctx)  # recorded once, by the first shard
    features = features_from_spec(TEMPLATE_COLUMNS)
    if partial:
        out = datasets.Dataset(datasets.table.InMemoryTable(_sum_templates(partial).cast(features.arrow_schema)))
    else:
        out = datasets.Dataset.from_dict({c: [] for c in TEMPLATE_COLUMNS}, features=features)
    return out, {}, stats


def documents_of_pairs(table, current: dict):
    """The nemotron layout: a document's rows are consecutive rows with its `warc_record_id` (doc_key), which may
    run over a batch (or chunk) boundary. Sets `new_doc` (a used template's first use in its document), carrying the
    current document across batches; returns (table, documents whose pairs start in this batch). A document whose
    rows fall in two shards counts once in each (shards are cut at files, rarely inside a document's rows)."""
    import pyarrow as pa

    new_doc, runs = [], 0
    for kind, key, tid, used in zip(*(table[c].to_pylist() for c in ("kind", "doc_key", "template_id", "used"))):
        if kind != "pair":
            new_doc.append(False)
            continue
        if not current["any"] or key != current["key"]:
            current.update(key=key, templates=set(), any=True)
            runs += 1
        fresh = bool(used) and tid not in current["templates"]
        if fresh:
            current["templates"].add(tid)
        new_doc.append(fresh)
    at = table.schema.get_field_index("new_doc")
    return table.set_column(at, "new_doc", pa.array(new_doc, pa.bool_())), runs


def _assemble_drops(ctx: StageContext) -> dict[str, int]:
    """The drop counts recorded in the assemble output's card, when it has one."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(ctx.download(ctx.config.assembled, "README.md"))
    except PipelineError:
        return {}
    counts = card.data.to_dict().get("hf_pipeline", {}).get("counts", {})
    return {k: int(v) for k, v in counts.get("drops", {}).items()}


# ---------------------------------------------------------------- per partition of the templates


def sum_templates(ds, ctx: StageContext):
    """One partition's templates: their rows from every shard summed; y(t) counts, the uses histogram, top k."""
    import datasets

    from hf_pipeline.io.features import features_from_spec

    config: AnalyzeConfig = ctx.config
    features = features_from_spec(OUTPUT_COLUMNS)
    thresholds = an.growth_thresholds(config.power_law_points_per_decade)
    if not len(ds) or "min_hash" not in ds.column_names:  # no shard had a template of this partition
        empty = datasets.Dataset.from_dict({c: [] for c in OUTPUT_COLUMNS}, features=features)
        return empty, {}, {"templates": {"unique": 0, "under_1000": 0, "max_uses": 0, "histogram": {}, "top": {}},
                           "growth": {"templates": [0] * len(thresholds)}}
    table = _sum_templates([ds.with_format("arrow")[:]])
    uses = table["uses"].to_numpy()
    total = max(int(ctx.run_stats.get("pairs_analysed", 0)), 1)
    import numpy as np
    import pyarrow as pa

    order = np.lexsort((np.arange(len(uses)), -uses))  # most used first; ties in template_id order (table is sorted)
    table = table.take(pa.array(order))
    uses = uses[order]
    out_table = pa.table({
        "template_id": table["template_id"], "uses": table["uses"], "documents": table["documents"],
        "share": pa.array(uses / total, pa.float64()),
    })
    top = {t: int(n) for t, n in zip(table["template_id"].slice(0, config.top_templates).to_pylist(), uses[: config.top_templates])}
    stats = {
        "templates": {
            "unique": len(uses), "under_1000": int((uses < 1000).sum()), "max_uses": int(uses.max()),
            "histogram": an.usage_bins(uses.tolist()), "top": top,
        },
        "growth": {"templates": an.count_below(table["min_hash"].to_numpy(), thresholds)},
    }
    return datasets.Dataset(datasets.table.InMemoryTable(out_table.cast(features.arrow_schema))), {}, stats


# ---------------------------------------------------------------- once, at the end


def summarize(stats: dict, config: AnalyzeConfig) -> dict:
    """The analysis from the summed figures: the card's `stats`, analysis.json and the metrics table."""
    thresholds = an.growth_thresholds(config.power_law_points_per_decade)
    growth = stats.get("growth", {})
    curve = an.growth_curve(thresholds, growth.get("documents", [0] * len(thresholds)), growth.get("templates", [0] * len(thresholds)))
    fit = an.fit_power_law([p["x"] for p in curve], [p["y"] for p in curve])
    t = stats.get("templates", {})
    used = stats.get("pairs_analysed", 0)
    histogram = an.histogram_from_bins(t.get("histogram", {}))
    top = an.top_templates(t.get("top", {}), config.top_templates)
    unique = t.get("unique", 0)
    templates = {
        "pairs": used,
        "unique_templates": unique,
        "top_template_share": an._r(top[0][1] / used) if used and top else None,
        "max_uses": t.get("max_uses", 0),
        "mean_uses": an._r(used / unique) if unique else None,
        "median_uses_bin": an.median_bin(histogram),
        "share_used_under_1000": an._r(t.get("under_1000", 0) / unique) if unique else None,
        "top": [{"template_id": tid, "uses": n, "share": an._r(n / used)} for tid, n in top],
        "histogram": histogram,
    }
    ch = stats.get("chunk_position", {})
    chunk = {**an.chunk_position(ch.get("sums", {}), ch.get("by_chunk", {})), "excluded": ch.get("excluded", {}),
             "paper_r": an.PAPER_CHUNK_PEARSON}
    er = stats.get("excerpt_ratio", {})
    counts = er.get("histogram") or [0] * BINS
    excerpt = {
        "count": er.get("count", 0), "nulls": er.get("nulls", 0),
        "mean": an._r(er["sum"] / er["count"]) if er.get("count") else None,
        "p25": an._r(an.histogram_quantile(counts, 0.25)), "median": an._r(an.histogram_quantile(counts, 0.5)),
        "p75": an._r(an.histogram_quantile(counts, 0.75)),
        "share_at_or_above": an._r(er["at_or_above"] / er["count"]) if er.get("count") else None,
        "threshold": config.excerpt_ratio_threshold,
        "histogram": an.ratio_histogram(counts),
    }
    status = stats.get("status", {})
    judge = _sorted_counts(status.get("judge", {}))
    has_judge = bool(judge) and set(judge) != {"null"}
    documents = stats.get("documents", 0)
    basis = (f"pairs kept by assemble ({config.assembled})" if config.assembled else
             "pairs with status ok" + (f" and judge_score >= {config.min_judge_score}" if config.min_judge_score is not None else ""))
    if nemotron_mode(config):
        basis = ("the pair rows of the fineinstructions_nemotron-layout input" + (
            f"; a pair with a judge score (its data file's row-aligned judge file) counts when scored >= {config.min_judge_score}, "
            "one without counts" if config.min_judge_score is not None and config.judge_files else "; no judge filter"))
    return {
        "layout": "fineinstructions_nemotron" if nemotron_mode(config) else "pipeline",
        "pairs_in": stats.get("pairs_read", 0),
        "pairs_analysed": used,
        "basis": basis,
        "assembled_rows_not_in_input": stats.get("assembled_rows_not_in_input", 0),
        "shards": stats.get("shards", 0),
        "templates": templates,
        "power_law": {"documents": documents, "fit": fit.to_dict() if fit else None, "curve": curve, "paper": an.PAPER_POWER_LAW},
        "chunk_position": chunk,
        "excerpt_ratio": excerpt,
        "judge_score": _sorted_counts(stats.get("judge_score", {})) if has_judge else None,
        "status": {
            "instantiate": _sorted_counts(status.get("instantiate", {})),
            "judge": judge if has_judge else None,
            "documents": {
                "documents": documents, "with_pairs": stats.get("documents_with_pairs", 0),
                "without_pairs": documents - stats.get("documents_with_pairs", 0),
                "pairs_with_mismatched_document": stats.get("pairs_with_mismatched_document", 0),
            },
            "assemble": stats.get("assemble_drops") or None,
        },
    }


def _sorted_counts(counts: dict) -> dict[str, int]:
    return dict(sorted(((str(k), int(v)) for k, v in counts.items()), key=lambda kv: (-kv[1], kv[0])))


def write_report(actx: ArtifactContext, out_dir: Path) -> dict[str, Path]:
    """analysis.json, the metrics table (config `metrics`) and the plots, from the summed figures only."""
    import datasets

    from hf_pipeline.io.features import features_from_spec

    result = actx.stats
    files: dict[str, Path] = {}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=2))
    files["analysis.json"] = out_dir / "analysis.json"
    metrics = an.metrics_table(result)
    table = datasets.Dataset.from_dict(
        {"metric": [m for m, _ in metrics], "value": [v for _, v in metrics]}, features=features_from_spec(METRICS_COLUMNS)
    )
    table.to_parquet(str(out_dir / "metrics.parquet"))
    files["data/metrics-00000-of-00001.parquet"] = out_dir / "metrics.parquet"
    if actx.config.plots:
        from hf_pipeline.methods import plots

        t, pw, ch = result["templates"], result["power_law"], result["chunk_position"]
        if t["histogram"]:
            files[PLOTS["template_usage"]] = plots.template_usage(t["histogram"], out_dir / PLOTS["template_usage"])
        if any(p["y"] > 0 for p in pw["curve"]):
            xs, ys = zip(*[(p["x"], p["y"]) for p in pw["curve"] if p["y"] > 0])
            files[PLOTS["power_law"]] = plots.power_law(xs, ys, pw["fit"], out_dir / PLOTS["power_law"])
        if ch["pairs"]:
            files[PLOTS["chunk_position"]] = plots.chunk_position(ch["by_chunk"], ch, out_dir / PLOTS["chunk_position"])
        if result["excerpt_ratio"]["count"]:
            files[PLOTS["excerpt_ratio"]] = plots.ratio_histogram(
                result["excerpt_ratio"]["histogram"], actx.config.excerpt_ratio_threshold, out_dir / PLOTS["excerpt_ratio"]
            )
        if result["judge_score"]:
            files[PLOTS["judge_scores"]] = plots.judge_scores(result["judge_score"], out_dir / PLOTS["judge_scores"])
    return files


def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    rate = MEASURED["collect_queries_rows_per_s"]
    return StageEstimate(
        "analyze", rows, unit, [f"{rows / 1e9:,.1f}B documents and their pairs counted by template, chunk and excerpt position"], "CPU core",
        rate.value * 5, hours(rows / (rate.value * 5)), "assumed 5x collect_queries' per-row speed (counting only): ESTIMATE", False,
        output_rows=0, unmeasured=["everything (not measured)"],
    )


STAGE = Stage(
    name="analyze",
    description="template usage and power-law diversity, chunk-index vs excerpt-position correlation, distributions, plots (§6.1, §3.2)",
    config_class=AnalyzeConfig,
    output_columns=OUTPUT_COLUMNS,
    inputs=Inputs(
        parts=documents_part,
        check=check_input,  # the documents' doc_id_column and text_column, or the nemotron layout, at plan time
        aligned=aligned_inputs,
        resolve_config=aligned_lineage_check("analyze"),  # the pairs point into these documents
    ),
    map=Map(
        batch=map_documents,
        columns=MAP_COLUMNS,
        setup=setup,
        finalize=shard_figures,
    ),
    reduce=Reduce(
        step=sum_templates,
        partitions=lambda config: config.partitions,
        key="template_id",
    ),
    card=Card(
        summarize=summarize,
        artifacts=write_report,
        extra_configs=lambda config: {"metrics": "data/metrics-*"},
    ),
    cost=CostModel("documents (their pairs aligned by position)", lambda w: w.documents, "documents", estimate_cost, step=8),
    version=2,
)
