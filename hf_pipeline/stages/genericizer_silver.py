"""genericizer_silver — paper §3.1, the silver data the Query Genericizer Model is distilled from.

"To train a model to convert queries into templates, we first select a subset of ~50K queries spanning the
selected datasets. These queries are converted to 'silver' synthetic templates by prompting an LLM with a series
of prompts. We also generate synthetic 'compatible document descriptions' for each of these ~50K templates. ...
We train the efficient Query Genericizer Model by fine-tuning a Llama-3.2 1B Instruct model on the generated
synthetic data." (§3: "The LLM we use to generate silver-standard data is Llama-3.3 70B Instruct.")

1. Sample: a seeded draw of `sample_size` queries from the collect_queries output, stratified by `source` with
   equal shares (a source with fewer queries than its share gives all it has; the rest goes to the others), so
   the subset spans every dataset instead of mirroring WildChat's and Reddit's sheer volume.
2. Teacher: the queries go through genericize's own code path (`genericize_batch`) in teacher mode, so the
   silver templates pass exactly the checks the pipeline's templates pass (schema, `<fi>` grammar, ≥ 1 variable).
3. Keep what validates (status ok); every other row is dropped in finalize and counted by reason in the card.

Each row carries `messages`, the student contract of `fineinstructions/query_templatizer` as the training stage
reads it: the bare query as the user turn and, as the assistant turn (the only one with loss), the JSON reply
{"template", "compatible_document_description"} that genericize in student mode parses.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm_config import LLMConfig, llm_card_ref
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.stages import genericize
from hf_pipeline.stages.genericize import GENERICIZE_COLUMNS, TEACHER_PROMPT, GenericizeConfig, genericize_batch, messages_for
from hf_pipeline.text.strata import round_robin_sample

TEACHER_MODEL = "meta-llama/Llama-3.3-70B-Instruct"  # §3: the LLM that generates all silver-standard data
QUERY_COLUMNS = ("query_id", "query", "source")


@dataclass
class GenericizerSilverConfig:
    queries: str = field(default="", metadata={"help": "the collect_queries output (query_id, query, source): org/name@revision or path"})
    sample_size: int = field(default=50_000, metadata={"help": "queries drawn, equal shares per source (§3.1: ~50K)"})
    seed: int = field(default=0, metadata={"help": "seed of the stratified draw"})
    llm: LLMConfig = field(
        # 70B in bf16 needs ~140 GB of weights: set llm.tensor_parallel_size (e.g. 4 on 80 GB GPUs) for vllm
        default_factory=lambda: LLMConfig(model=TEACHER_MODEL, max_tokens=512),
        metadata={"help": "the teacher LLM and how to run it (llm.model, llm.backend, llm.tensor_parallel_size, ...)"},
    )
    min_variables: int = field(default=1, metadata={"help": "templates with fewer <fi> variables are dropped (no_variables)"})
    max_field_chars: int = field(default=1500, metadata={"help": "maxLength of the template and description strings in the JSON schema"})


def check_config(config: GenericizerSilverConfig) -> list[str]:
    if not config.queries:
        raise PipelineError("genericizer_silver needs config key 'queries' (the collect_queries output: a dataset ref).")
    if config.sample_size < 1:
        raise PipelineError(f"sample_size must be at least 1, got {config.sample_size}.")
    return [config.queries]


def teacher_config(config: GenericizerSilverConfig) -> GenericizeConfig:
    """genericize's config with the mode fixed to teacher: the silver data comes from a prompted instruct LLM."""
    return GenericizeConfig(mode="teacher", llm=config.llm, min_variables=config.min_variables, max_field_chars=config.max_field_chars)


def load_queries(ctx: StageContext):
    config: GenericizerSilverConfig = ctx.config
    ds = ctx.load(config.queries)
    missing = [c for c in QUERY_COLUMNS if c not in ds.column_names]
    if missing:
        raise PipelineError(f"{config.queries} lacks column '{missing[0]}' (it has: {', '.join(ds.column_names)}).")
    return ds


def sample_queries(ctx: StageContext):
    """The stratified sample, in draw order (so `--max-rows N` takes a prefix that is itself balanced by source).

    Keys are the query ids (unique after collect_queries' dedupe), so the sample does not depend on row order."""
    config: GenericizerSilverConfig = ctx.config
    ds = load_queries(ctx)
    return ds.select(round_robin_sample(ds["source"][:], ds["query_id"][:], config.sample_size, config.seed))


def student_messages(query: str, template: str, description: str) -> list[dict[str, str]]:
    """What genericize in student mode sends (the bare query) and should get back (its JSON reply)."""
    reply = json.dumps({"template": template, "compatible_document_description": description}, ensure_ascii=False)
    return messages_for([query], "student")[0] + [{"role": "assistant", "content": reply}]


def silver_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    out = genericize_batch(batch, dataclasses.replace(ctx, config=teacher_config(ctx.config)))
    out["query"] = list(batch["query"])  # genericize_batch keeps one row per query, in order
    out["messages"] = [
        student_messages(q, t, d) if status == "ok" else None
        for q, t, d, status in zip(batch["query"], out["template"], out["compatible_document_description"], out["status"])
    ]
    return out


def keep_valid(ds, ctx: StageContext):
    """Drop every row the teacher did not turn into a valid template, counted by its status; per-source counts."""
    statuses = ds["status"][:]
    sources = ds["source"][:]
    keep = [i for i, s in enumerate(statuses) if s == "ok"]
    drops = Counter(s for s in statuses if s != "ok")
    population = Counter(load_queries(ctx)["source"][:])
    stats = {
        "sample_size": ctx.config.sample_size,
        "queries_by_source": dict(sorted(population.items())),
        "sampled_by_source": dict(sorted(Counter(sources).items())),
        "kept_by_source": dict(sorted(Counter(sources[i] for i in keep).items())),
    }
    return ds.select(keep), dict(drops), stats


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
    map_columns={**GENERICIZE_COLUMNS, "query": "string", "messages": "chat"},
    input_columns=QUERY_COLUMNS,
    map_batch=silver_batch,
    setup=genericize.setup,  # loads ctx.config.llm: the teacher
    load_input=sample_queries,
    finalize=keep_valid,
    input_refs=check_config,
    models=lambda config: {"teacher": llm_card_ref(config.llm)},
    prompts=lambda config: [TEACHER_PROMPT],  # always teacher mode: the prompt's content is part of the fingerprint
    needs_input=False,
)
