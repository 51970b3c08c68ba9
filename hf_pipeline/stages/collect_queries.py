"""collect_queries — paper §3.1, first paragraph.

"We source user-written queries from the following datasets: WildChat, LMSys Chat, ... We filter out
harmful queries using the OpenAI Moderation API and decontaminate the queries from overlap with common
benchmarks using the procedure used by Tulu 3."

Each source dataset has a mapping saying where its user's first message lives (a column, or the first
user turn of a conversation; shipped in hf_pipeline/configs/query_sources.yaml). Every (source, split) is one
input part of the run (`inputs`), so the sources are sharded and read like any input, file by file.

1. Map, per row: the user's first message by the part's mapping, normalised, checked (empty / too long / not
   text), decontaminated by n-gram overlap, optionally moderated by a text-classification model. Every row
   keeps a `status` and its `dedup_key` (the normalised key, or the exact query with `dedupe: exact`).
2. Per shard: rows that are not ok are dropped and counted by reason.
3. Reduce, per partition of the dedup key's hash (`dedupe_partitions`): rows with the same key are in one
   partition, in input order (shard order, then row order), so "first occurrence wins" is exactly the global
   rule; exact and normalised duplicates are counted apart. The published set does not depend on the number
   of shards or partitions; its order is by partition, then input order.

Every dropped row is counted by reason in the card; the output holds `query_id, query, source`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import yaml

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import InputPart
from hf_pipeline.io.hub import split_ref
from hf_pipeline.io.package_data import package_file
from hf_pipeline.methods.text.decontamination import NgramIndex
from hf_pipeline.methods.text.queries import (
    SourceMapping,
    check_query,
    extract_first_user_message,
    normalize_whitespace,
    partition_key,
    query_id,
)
from hf_pipeline.run.estimate import CostModel, MEASURED, StageEstimate, Workload, hours
from hf_pipeline.stage import Inputs, Map, Reduce, Stage, StageContext

SHIPPED_SOURCES = package_file("configs", "query_sources.yaml")
# The paper's sources that have a public dataset with a shipped mapping (Reddit QA and the prompt
# libraries have none on the Hub). Offline runs override `sources` (see configs/quickstart.yaml).
PAPER_SOURCES = [
    "wildchat", "lmsys_chat", "chatbot_arena", "oasst1", "no_robots", "helpsteer", "dolly",
    "gooaq", "sharelm", "expertqa", "chatdoctor_icliniq", "chatdoctor_healthcaremagic",
]


@lru_cache(maxsize=1)
def shipped_sources() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(SHIPPED_SOURCES.read_text())["sources"]


def source_mapping(entry: dict[str, Any]) -> SourceMapping:
    """A configured source: a shipped source by `name`, with any of its keys overridden, or a new one in full."""
    name = entry.get("name")
    if not name:
        raise PipelineError(f"query source {entry!r} needs a name.")
    merged = {**shipped_sources().get(name, {}), **entry}
    if "dataset" not in merged:
        known = ", ".join(sorted(shipped_sources()))
        raise PipelineError(f"query source '{name}' is not a shipped source ({known}); give it a dataset and a mapping.")
    try:
        return SourceMapping.from_dict(merged)
    except (TypeError, ValueError) as e:
        raise PipelineError(f"query source '{name}': {e}.") from None


def source_ref(mapping: SourceMapping) -> str:
    return f"{mapping.dataset}@{mapping.revision}" if mapping.revision else mapping.dataset


# Partitions of the dedupe. At the paper's scale (~25M raw queries, ~18M kept, ~2.2 GB of parquet) 8 partitions keep
# each reduce task to ~1/8 of the rows (well under 1 GB of Arrow with the key column) and give output files of a few
# hundred MB, the size the Hub recommends; on a small input they cost 8 small commits. The published set is the
# same for any number; only the row order (by partition, then input order) and the file count change.
DEFAULT_DEDUPE_PARTITIONS = 8


@dataclass
class BenchmarkSet:
    """A benchmark whose texts must not leak into the queries."""

    dataset: str
    columns: list[str] = field(default_factory=lambda: ["question"])
    split: str = "test"
    subset: str | None = None


@dataclass
class CollectQueriesConfig:
    sources: list[dict] = field(
        default_factory=lambda: [{"name": n} for n in PAPER_SOURCES],
        metadata={"help": "query datasets: {name: <shipped source>} or {name, dataset, column | conversation_column, ...}"},
    )
    max_chars: int = field(default=8000, metadata={"help": "drop queries longer than this (too_long)"})
    dedupe: Literal["exact", "normalized", "none"] = field(default="normalized", metadata={"help": "'exact', 'normalized' (exact, then case/punct-insensitive) or 'none'"})
    dedupe_partitions: int = field(
        default=DEFAULT_DEDUPE_PARTITIONS,
        metadata={"help": "the dedupe runs per partition of the dedup key's hash: one task (and one output file) per partition"},
    )
    benchmarks: list[BenchmarkSet] = field(
        default_factory=list, metadata={"help": "benchmark sets to decontaminate against: {dataset, columns, split, subset}"}
    )
    ngram_size: int = field(default=8, metadata={"help": "n of the n-gram overlap test (Tulu 3 uses 8)"})
    contamination_threshold: float = field(
        default=0.5,
        metadata={"help": "drop a query covering more than this share of a benchmark item's tokens with shared n-grams (Tulu 3: 0.5)"},
    )
    moderation_model: str | None = field(
        default=None, metadata={"help": "text-classification model (Hub id[@revision] or path) used to drop harmful queries; off when unset"}
    )
    moderation_labels: list[str] = field(
        default_factory=lambda: ["S", "H", "V", "HR", "SH", "S3", "H2", "V2", "toxic", "LABEL_1"],
        metadata={"help": "labels of the moderation model that count as harmful"},
    )
    moderation_threshold: float = field(default=0.5, metadata={"help": "score at or above which a harmful label drops a query"})


def check_config(config: CollectQueriesConfig) -> None:
    if not config.sources:
        raise PipelineError("collect_queries needs at least one query source (config key 'sources').")
    names = [entry.get("name") for entry in config.sources]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise PipelineError(f"query source '{repeated[0]}' is configured twice: source names must be unique (they label the rows).")
    if config.dedupe_partitions < 1:
        raise PipelineError(f"dedupe_partitions must be at least 1, got {config.dedupe_partitions}.")


def mappings(config: CollectQueriesConfig) -> dict[str, SourceMapping]:
    """Source name -> its mapping, in config order."""
    return {m.name: m for m in (source_mapping(entry) for entry in config.sources)}


def inputs(config: CollectQueriesConfig, options: Any = None) -> list[InputPart]:
    """One input part per (source, split), in config order: the mapping's dataset at its revision and config."""
    check_config(config)
    return [
        InputPart(source_ref(m), split=split, name=m.config, label=m.name)
        for m in mappings(config).values()
        for split in m.splits
    ]


def check_input(part: InputPart, schema: Any, config: CollectQueriesConfig) -> None:
    """The columns a source's mapping names are in its data: said at plan time, before any model loads."""
    mapping = mappings(config)[part.label]
    names = list(schema.names) if schema is not None else []
    needed = [mapping.column or mapping.conversation_column, *mapping.where]
    missing = [c for c in needed if c not in names]
    if missing:
        raise PipelineError(
            f"query source '{mapping.name}' ({part.ref}) lacks column '{missing[0]}' named by its mapping "
            f"(it has: {', '.join(names) or 'no columns'})."
        )


def input_refs(config: CollectQueriesConfig) -> list[str]:
    """Side inputs: the benchmarks (the sources are the mapped input parts)."""
    return [b.dataset for b in config.benchmarks]


def setup(ctx: StageContext) -> dict[str, Any]:
    """Benchmark n-gram index and moderation model, built once per process; the benchmarks are a small side input."""
    config: CollectQueriesConfig = ctx.config
    texts = []
    for bench in config.benchmarks:
        ds = ctx.load(bench.dataset, split=bench.split, name=bench.subset)
        for column in bench.columns:
            if column not in ds.column_names:
                raise PipelineError(f"benchmark {bench.dataset} lacks column '{column}' (it has: {', '.join(ds.column_names)}).")
            texts += [t for t in ds[column] if isinstance(t, str)]
    index = NgramIndex.from_texts(texts, n=config.ngram_size) if texts else None
    moderator = None
    if config.moderation_model:
        from transformers import pipeline

        from hf_pipeline.methods.usage import TextClassifier

        name, revision = split_ref(config.moderation_model)
        classify = pipeline("text-classification", model=name, revision=revision, top_k=None, truncation=True)
        moderator = TextClassifier(classify, config.moderation_model)  # called like the pipeline; its work is in the card
    return {"benchmarks": index, "moderator": moderator, "mappings": mappings(config)}


def collect_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """The user's first message of each row by its source's mapping, normalised and checked; a status per row."""
    config: CollectQueriesConfig = ctx.config
    resources = ctx.resources or {}
    mapping = (resources.get("mappings") or mappings(config))[ctx.part.label]
    index: NgramIndex | None = resources.get("benchmarks")
    n = len(next(iter(batch.values()))) if batch else 0
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())] if batch else []
    queries, statuses = [], []
    for row in rows:
        found = extract_first_user_message(row, mapping)
        raw = found.text
        query = normalize_whitespace(raw) if raw is not None else ""
        status = found.drop_reason or check_query(query if raw is not None else None, config.max_chars) or "ok"
        if status == "ok" and index is not None and index.is_contaminated(query, config.contamination_threshold):
            status = "contaminated"
        queries.append(query)
        statuses.append(status)
    if resources.get("moderator") is not None:
        flagged_labels = set(config.moderation_labels)
        todo = [i for i, s in enumerate(statuses) if s == "ok"]
        for i, scores in zip(todo, resources["moderator"]([queries[i] for i in todo])):
            if any(s["label"] in flagged_labels and s["score"] >= config.moderation_threshold for s in scores):
                statuses[i] = "moderation"
    return {
        "query_id": [query_id(q) for q in queries],
        "query": queries,
        "source": [mapping.name] * n,
        "status": statuses,
        "dedup_key": [partition_key(q, config.dedupe) if s == "ok" else "" for q, s in zip(queries, statuses)],
    }


def drop_failed(ds, ctx: StageContext):
    """Per shard: keep the ok rows, counting every other row by its status; rows read per source."""
    from collections import Counter

    statuses = ds["status"][:]  # [:] = plain lists, fast
    sources = ds["source"][:]
    drops = Counter(s for s in statuses if s != "ok")
    keep = [i for i, s in enumerate(statuses) if s == "ok"]
    stats = {"read_by_source": dict(Counter(sources))}
    return ds.select(keep).remove_columns(["status"]), dict(drops), stats


def dedupe(ds, ctx: StageContext):
    """Per partition: the first occurrence of each key wins, in input order (shard order, then row order: the order
    in which the runner hands a partition its rows). Exact duplicates are counted before normalised ones."""
    from collections import Counter

    config: CollectQueriesConfig = ctx.config
    queries, keys, sources = ds["query"][:], ds["dedup_key"][:], ds["source"][:]
    drops: Counter = Counter()
    seen_exact: set[str] = set()
    seen_key: set[str] = set()
    keep = []
    for i, (query, key) in enumerate(zip(queries, keys)):
        if config.dedupe != "none":
            if query in seen_exact:
                drops["duplicate_exact"] += 1
                continue
            seen_exact.add(query)
            if config.dedupe == "normalized":
                if key in seen_key:
                    drops["duplicate_normalized"] += 1
                    continue
                seen_key.add(key)
        keep.append(i)
    stats = {"queries_by_source": dict(Counter(sources[i] for i in keep))}
    return ds.select(keep), dict(drops), stats


def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    rate = MEASURED["collect_queries_rows_per_s"]
    return StageEstimate(
        "collect_queries", rows, unit, [f"{rows:,.0f} queries normalised, 8-gram decontaminated, deduped"], "CPU core",
        rate.value, hours(rows / rate.value), f"{rate.value:,.0f} rows/s/core, {rate.label} on {rate.device}", True,
        memory=["dedupe sets per reduce partition: ~100 B per kept query (~2 GB for 18M, over dedupe_partitions = 8 by default)"],
        output_rows=rows * 0.72, output_bytes_per_row=120,
        unmeasured=["moderation model (a classifier per query; GPU) not included", "reading the source datasets from the Hub"],
    )


STAGE = Stage(
    name="collect_queries",
    description="gather users' first messages from query datasets; normalise, decontaminate, moderate, dedupe (§3.1)",
    config_class=CollectQueriesConfig,
    output_columns={"query_id": "string", "query": "string", "source": "string"},
    inputs=Inputs(
        needs_input=False,
        parts=inputs,
        check=check_input,
        side=input_refs,
        models=lambda config: {"moderation": config.moderation_model} if config.moderation_model else {},
    ),
    map=Map(
        batch=collect_batch,
        columns={"query_id": "string", "query": "string", "source": "string", "status": "string", "dedup_key": "string"},
        setup=setup,
        finalize=drop_failed,
    ),
    reduce=Reduce(
        step=dedupe,
        partitions=lambda config: config.dedupe_partitions,
        key="dedup_key",
    ),
    cost=CostModel("raw user queries", lambda w: w.queries_in, "queries", estimate_cost, step=1),
    version=2,
)
