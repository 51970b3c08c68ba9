"""collect_queries — paper §3.1, first paragraph.

"We source user-written queries from the following datasets: WildChat, LMSys Chat, ... We filter out
harmful queries using the OpenAI Moderation API and decontaminate the queries from overlap with common
benchmarks using the procedure used by Tulu 3."

Each source dataset has a mapping saying where its user's first message lives (a column, or the first
user turn of a conversation; shipped in hf_pipeline/configs/query_sources.yaml). Rows are normalised,
checked (empty / too long / not text), decontaminated by n-gram overlap, optionally moderated by a
text-classification model, then deduplicated exactly and after normalisation. Every dropped row is
counted by reason in the card; the output holds `query_id, query, source`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml

from hf_pipeline.errors import PipelineError
from hf_pipeline.hub_io import split_ref
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.text.decontamination import NgramIndex
from hf_pipeline.text.queries import (
    SourceMapping,
    check_query,
    dedup_key,
    extract_first_user_message,
    normalize_whitespace,
    query_id,
)

SHIPPED_SOURCES = Path(__file__).resolve().parent.parent / "configs" / "query_sources.yaml"
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


def input_refs(config: CollectQueriesConfig) -> list[str]:
    check_config(config)
    return [source_ref(source_mapping(s)) for s in config.sources] + [b.dataset for b in config.benchmarks]


def load_sources(ctx: StageContext):
    """All sources as one dataset of (source, raw, problem): the user's first message, or why there is none."""
    import datasets

    features = datasets.Features(
        {"source": datasets.Value("string"), "raw": datasets.Value("string"), "problem": datasets.Value("string")}
    )
    parts = []
    for entry in ctx.config.sources:
        mapping = source_mapping(entry)
        ref = source_ref(mapping)
        needed = [mapping.column or mapping.conversation_column, *mapping.where]

        def extract(batch: dict[str, list], mapping: SourceMapping = mapping) -> dict[str, list]:
            found = [extract_first_user_message(dict(zip(batch, values)), mapping) for values in zip(*batch.values())]
            return {
                "source": [mapping.name] * len(found),
                "raw": [f.text for f in found],
                "problem": [f.drop_reason or "" for f in found],
            }

        for split in mapping.splits:
            ds = ctx.load(ref, split=split, name=mapping.config)
            missing = [c for c in needed if c not in ds.column_names]
            if missing:
                raise PipelineError(
                    f"query source '{mapping.name}' ({ref}) lacks column '{missing[0]}' named by its mapping "
                    f"(it has: {', '.join(ds.column_names)})."
                )
            parts.append(
                ds.map(extract, batched=True, remove_columns=ds.column_names, features=features,
                       desc=f"reading {mapping.name} ({split})")
            )
    return datasets.concatenate_datasets(parts)


def setup(ctx: StageContext) -> dict[str, Any]:
    """Benchmark n-gram index and moderation model, built once per process."""
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

        name, revision = split_ref(config.moderation_model)
        moderator = pipeline("text-classification", model=name, revision=revision, top_k=None, truncation=True)
    return {"benchmarks": index, "moderator": moderator}


def collect_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    config: CollectQueriesConfig = ctx.config
    index: NgramIndex | None = ctx.resources["benchmarks"]
    queries, statuses = [], []
    for raw, problem in zip(batch["raw"], batch["problem"]):
        query = normalize_whitespace(raw) if raw is not None else ""
        status = problem or check_query(query if raw is not None else None, config.max_chars) or "ok"
        if status == "ok" and index is not None and index.is_contaminated(query, config.contamination_threshold):
            status = "contaminated"
        queries.append(query)
        statuses.append(status)
    if ctx.resources["moderator"] is not None:
        flagged_labels = set(config.moderation_labels)
        todo = [i for i, s in enumerate(statuses) if s == "ok"]
        for i, scores in zip(todo, ctx.resources["moderator"]([queries[i] for i in todo])):
            if any(s["label"] in flagged_labels and s["score"] >= config.moderation_threshold for s in scores):
                statuses[i] = "moderation"
    return {
        "query_id": [query_id(q) for q in queries],
        "query": queries,
        "source": batch["source"],
        "status": statuses,
    }


def dedupe_and_filter(ds, ctx: StageContext):
    """Keep ok rows, first occurrence wins (input order), counting every drop by reason."""
    from collections import Counter

    drops: Counter = Counter()
    seen_exact: set[str] = set()
    seen_normalized: set[str] = set()
    keep = []
    for i, (query, status) in enumerate(zip(ds["query"][:], ds["status"][:])):  # [:] = plain lists, fast
        if status != "ok":
            drops[status] += 1
            continue
        if ctx.config.dedupe != "none":
            if query in seen_exact:
                drops["duplicate_exact"] += 1
                continue
            seen_exact.add(query)
            if ctx.config.dedupe == "normalized":
                key = dedup_key(query)
                if key in seen_normalized:
                    drops["duplicate_normalized"] += 1
                    continue
                seen_normalized.add(key)
        keep.append(i)
    return ds.select(keep), dict(drops)


def check_config(config: CollectQueriesConfig) -> None:
    if not config.sources:
        raise PipelineError("collect_queries needs at least one query source (config key 'sources').")


STAGE = Stage(
    name="collect_queries",
    description="gather users' first messages from query datasets; normalise, decontaminate, moderate, dedupe (§3.1)",
    config_class=CollectQueriesConfig,
    output_columns={"query_id": "string", "query": "string", "source": "string"},
    map_columns={"query_id": "string", "query": "string", "source": "string", "status": "string"},
    input_columns=("source", "raw", "problem"),
    map_batch=collect_batch,
    setup=setup,
    load_input=load_sources,
    finalize=dedupe_and_filter,
    input_refs=input_refs,
    models=lambda config: {"moderation": config.moderation_model} if config.moderation_model else {},
    needs_input=False,
)
