"""genericizer_silver — paper §3.1, the silver data the Query Genericizer Model is distilled from.

"To train a model to convert queries into templates, we first select a subset of ~50K queries spanning the
selected datasets. These queries are converted to 'silver' synthetic templates by prompting an LLM with a series
of prompts. We also generate synthetic 'compatible document descriptions' for each of these ~50K templates. ...
We train the efficient Query Genericizer Model by fine-tuning a Llama-3.2 1B Instruct model on the generated
synthetic data." (§3: "The LLM we use to generate silver-standard data is Llama-3.3 70B Instruct.")

1. Sample, row by row in the map: ~`sample_size` of the collect_queries output, stratified by `source` with
   equal shares (a source with fewer queries than its share gives all it has; the rest goes to the others), so
   the subset spans every dataset instead of mirroring WildChat's and Reddit's sheer volume. Each worker keeps a
   query when a hash of (seed, query_id) falls under its source's rate (`text.strata.draw_rates`); the rates come
   from the per-source counts, read once per worker from the queries' card (collect_queries records them) or, for
   a dataset without them, counted from its `source` column. No process ever holds the whole query set.
2. Teacher, per shard, on the drawn queries only: they go through genericize's own code path
   (`genericizing.genericize_batch`) in teacher mode, so the silver templates pass exactly the checks the
   pipeline's templates pass (schema, `<fi>` grammar, ≥ 1 variable). The teacher runs in the shard's finalize, not
   in the map, so that it gets full batches: at the paper's rate (50K of ~18M queries) a map batch of 64 queries
   holds ~0.2 drawn ones.
3. Keep what validates (status ok); every other row, and every query not drawn, is dropped and counted by reason.

The trade-off of the per-row draw: an exact-size draw (round-robin over the sources, as before) needs every
query's hash in one place (a scan of all ids, or a one-partition global step) before the teacher starts; the
per-row draw needs only the per-source counts, and its size is `sample_size` in expectation, within ±3·√(sample
size) (99.7%; `text.strata.draw_tolerance`, in the card): 50K ± ~670, each source within ±3·√(its share). The same
queries, seed and counts give the same sample whatever the sharding. With `--max-rows` the rates are still the
whole dataset's, so a prefix gives a proportionally smaller sample.

Resume: the drawn rows are checkpointed chunk by chunk like any map; the teacher's work is per shard, so a worker
lost mid-shard redoes that shard's teacher calls (more shards, less to redo).

Each row carries `messages`, the student contract of `fineinstructions/query_templatizer` as the training stage
reads it: the bare query as the user turn and, as the assistant turn (the only one with loss), the JSON reply
{"template", "compatible_document_description"} that genericize in student mode parses.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import InputPart
from hf_pipeline.io.features import features_from_spec
from hf_pipeline.llm import load_backend
from hf_pipeline.llm.config import LLMConfig, llm_card_ref, llm_field
from hf_pipeline.methods.genericizing import GENERICIZE_COLUMNS, TEACHER_PROMPT, GenericizeConfig, genericize_batch, messages_for
from hf_pipeline.methods.text.strata import draw_rates, draw_tolerance, drawn, equal_shares
from hf_pipeline.stage import Card, Inputs, Map, Stage, StageContext

QUERY_COLUMNS = ("query_id", "query", "source")
TEACHER_GROUP = 1024  # drawn queries per teacher call in a shard's finalize (vLLM schedules them together)


@dataclass
class GenericizerSilverConfig:
    queries: str = field(default="", metadata={"help": "the collect_queries output (query_id, query, source): org/name@revision or path"})
    sample_size: int = field(default=50_000, metadata={"help": "queries drawn (in expectation), equal shares per source (§3.1: ~50K)"})
    seed: int = field(default=0, metadata={"help": "seed of the stratified draw"})
    llm: LLMConfig = llm_field(role="teacher")
    min_variables: int = field(default=1, metadata={"help": "templates with fewer <fi> variables are dropped (no_variables)"})
    max_field_chars: int = field(default=1500, metadata={"help": "maxLength of the template and description strings in the JSON schema"})
    # for a small offline teacher that writes no <fi> variable from the prompt alone (see genericize)
    constrain_format: bool = field(
        default=False,
        metadata={"help": "decode each template as the query's words with at least one run replaced by <fi>a few words</fi>"},
    )
    max_description_words: int = field(default=5, metadata={"help": "constrain_format: most words of a variable's description"})
    max_pattern_units: int = field(default=32, metadata={"help": "constrain_format: longer queries are decoded without the pattern"})


def check_config(config: GenericizerSilverConfig) -> None:
    if not config.queries:
        raise PipelineError("genericizer_silver needs config key 'queries' (the collect_queries output: a dataset ref).")
    if config.sample_size < 1:
        raise PipelineError(f"sample_size must be at least 1, got {config.sample_size}.")


def inputs(config: GenericizerSilverConfig, options: Any = None) -> list[InputPart]:
    """The map reads every query (cheaply: a hash per row); the teacher sees only the drawn ones."""
    check_config(config)
    return [InputPart(config.queries, label="queries")]


def check_input(part: InputPart, schema: Any, config: GenericizerSilverConfig) -> None:
    names = list(schema.names) if schema is not None else []
    missing = [c for c in QUERY_COLUMNS if c not in names]
    if missing:
        raise PipelineError(f"{part.ref} lacks column '{missing[0]}' (it has: {', '.join(names) or 'no columns'}).")


def teacher_config(config: GenericizerSilverConfig) -> GenericizeConfig:
    """genericize's config with the mode fixed to teacher: the silver data comes from a prompted instruct LLM."""
    return GenericizeConfig(
        mode="teacher", llm=config.llm, min_variables=config.min_variables, max_field_chars=config.max_field_chars,
        constrain_format=config.constrain_format, max_description_words=config.max_description_words,
        max_pattern_units=config.max_pattern_units,
    )


# ---------------------------------------------------------------- the per-source counts behind the draw


def counts_from_card(ctx: StageContext) -> dict[str, int] | None:
    """Queries per source as the collect_queries card of the pinned revision records them, when it does (and they
    add up to its rows); None otherwise."""
    from huggingface_hub import DatasetCard

    try:
        card = DatasetCard.load(ctx.download(ctx.config.queries, "README.md"))
    except (PipelineError, OSError, ValueError):
        return None
    meta = (card.data.to_dict() or {}).get("hf_pipeline") or {}
    counts = ((meta.get("counts") or {}).get("stats") or {}).get("queries_by_source")
    if meta.get("stage") != "collect_queries" or not isinstance(counts, dict) or sum(counts.values()) != meta.get("rows_out"):
        return None
    return {str(k): int(v) for k, v in counts.items()}


def counts_from_data(ctx: StageContext) -> dict[str, int]:
    """Queries per source counted from the `source` column (the dataset memory-mapped, one column read)."""
    import pyarrow.compute as pc

    ds = ctx.load(ctx.config.queries)
    if "source" not in ds.column_names:
        raise PipelineError(f"{ctx.config.queries} lacks column 'source' (it has: {', '.join(ds.column_names)}).")
    column = ds.with_format("arrow", columns=["source"])[:]["source"]
    return {str(v["values"]): int(v["counts"]) for v in pc.value_counts(column).to_pylist()}


def source_counts(ctx: StageContext) -> dict[str, int]:
    return counts_from_card(ctx) or counts_from_data(ctx)


def setup(ctx: StageContext) -> dict[str, Any]:
    """The draw's per-source rates (first: they fail fast), then the teacher."""
    config: GenericizerSilverConfig = ctx.config
    counts = source_counts(ctx)
    return {"rates": draw_rates(counts, config.sample_size), "llm": load_backend(config.llm)}


# ---------------------------------------------------------------- map: the draw; finalize: the teacher


def draw_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """Every query with whether it is drawn; a query not drawn keeps only its id and source (its text is not needed)."""
    config: GenericizerSilverConfig = ctx.config
    rates: dict[str, float] = ctx.resources["rates"]
    keep = []
    for qid, source in zip(batch["query_id"], batch["source"]):
        if source not in rates:
            raise PipelineError(
                f"query {qid} has source '{source}', which the per-source counts of {config.queries} do not list "
                f"({', '.join(sorted(rates))}): the counts and the data disagree."
            )
        keep.append(drawn(config.seed, qid, rates[source]))
    return {
        "query_id": list(batch["query_id"]),
        "source": list(batch["source"]),
        "query": [q if k else None for q, k in zip(batch["query"], keep)],
        "drawn": keep,
    }


def student_messages(query: str, template: str, description: str) -> list[dict[str, str]]:
    """What genericize in student mode sends (the bare query) and should get back (its JSON reply)."""
    reply = json.dumps({"template": template, "compatible_document_description": description}, ensure_ascii=False)
    return messages_for([query], "student")[0] + [{"role": "assistant", "content": reply}]


def silver_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """The teacher on drawn queries: genericize's teacher mode, plus the student contract's messages."""
    out = genericize_batch(batch, dataclasses.replace(ctx, config=teacher_config(ctx.config), resources=ctx.resources["llm"]))
    out["query"] = list(batch["query"])  # genericize_batch keeps one row per query, in order
    out["messages"] = [
        student_messages(q, t, d) if status == "ok" else None
        for q, t, d, status in zip(batch["query"], out["template"], out["compatible_document_description"], out["status"])
    ]
    return out


def teach_and_keep(ds, ctx: StageContext):
    """Per shard: the teacher on the drawn queries only, in full batches; keep what validates. Drops counted by
    reason (`not_sampled` for a query not drawn); per-source counts of queries read, drawn and kept."""
    import datasets

    drawn_flags = ds["drawn"][:]
    sources = ds["source"][:]
    picked = [i for i, d in enumerate(drawn_flags) if d]
    sample = ds.select(picked).select_columns(list(QUERY_COLUMNS))
    columns = {**GENERICIZE_COLUMNS, "query": "string", "messages": "chat"}
    out: dict[str, list] = {c: [] for c in columns}
    for start in range(0, len(sample), TEACHER_GROUP):
        batch = sample[start : start + TEACHER_GROUP]
        for c, values in silver_batch(batch, ctx).items():
            out[c] += values
    taught = datasets.Dataset.from_dict(out, features=features_from_spec(columns))
    statuses = out["status"]
    drops = Counter(s for s in statuses if s != "ok")
    if len(ds) - len(picked):
        drops["not_sampled"] = len(ds) - len(picked)
    kept = [i for i, s in enumerate(statuses) if s == "ok"]
    stats = {
        "queries_by_source": dict(Counter(sources)),
        "sampled_by_source": dict(Counter(sources[i] for i in picked)),
        "kept_by_source": dict(Counter(out["source"][i] for i in kept)),
    }
    return taught.select(kept), dict(drops), stats


def summarize(stats: dict, config: GenericizerSilverConfig) -> dict:
    """The draw's targets from the summed per-source counts: what each source should have given, and the tolerance."""
    counts = stats.get("queries_by_source") or {}
    shares = equal_shares(counts, config.sample_size)
    sampled = sum((stats.get("sampled_by_source") or {}).values())
    return {
        **stats,
        "target_by_source": {s: round(v, 1) for s, v in sorted(shares.items())},
        "sample_target": round(sum(shares.values()), 1),
        "sampled": sampled,
        "sample_tolerance": round(draw_tolerance(counts, config.sample_size), 1),
    }


STAGE = Stage(
    name="genericizer_silver",
    description="silver data for the query genericizer: a source-stratified query sample templatized by the teacher LLM (§3.1)",
    config_class=GenericizerSilverConfig,
    output_columns={
        "query_id": "string",
        "source": "string",
        "query": "string",
        "template": "string",
        "compatible_document_description": "string",
        "num_variables": "int32",
        "messages": "chat",
    },
    inputs=Inputs(
        needs_input=False,
        parts=inputs,
        check=check_input,
        models=lambda config: {"teacher": llm_card_ref(config.llm)},
        prompts=lambda config: [TEACHER_PROMPT],  # always teacher mode: the prompt's content is part of the fingerprint
    ),
    map=Map(
        batch=draw_batch,
        columns={"query_id": "string", "source": "string", "query": "string", "drawn": "bool"},
        setup=setup,  # the draw's rates, then the teacher (ctx.config.llm)
        finalize=teach_and_keep,
    ),
    card=Card(summarize=summarize),
    version=2,
)
