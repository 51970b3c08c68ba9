"""genericize — paper §3.1, second paragraph.

"We convert queries to genericized templates by inserting <fi></fi> tags in place of spans in the query that
refer to specific entities or scenarios. Within each pair of tags is a short, natural language description
of what kind of text might be appropriate at that span. ... We also generate synthetic 'compatible document
descriptions' for each of these templates."

Two modes: `student` speaks the published `fineinstructions/query_templatizer` contract (the bare query is
the user message; the reply is JSON {template, compatible_document_description}); `teacher` wraps the query
in prompts/genericize_teacher.txt for a general instruct LLM (silver data). Output is schema-constrained;
whatever still fails keeps its row with a status and the raw text.

`constrain_format` is for small teacher models that do not write `<fi>` variables from the prompt alone (SmolLM2
wrote none for 16 of 16 queries): each query gets its own grammar (`template_pattern`), under which the template is
the query's own words in order, where the model may replace runs of words by `<fi>` + a few words + `</fi>`, at
least once. The model still chooses which spans become variables and writes their descriptions and the compatible
document description; the grammar only keeps it to the format, and the template checks apply unchanged, plus one:
a template that leaves out a query word without a variable in its place gets status `dropped_words` (the grammar
allows it to stay linear in size; see `template_pattern`).

The schema, grammar, messages and batch function are in hf_pipeline/methods/genericizing.py: genericizer_silver's teacher
runs them too.
"""

from __future__ import annotations

from hf_pipeline.llm import load_backend
from hf_pipeline.llm.config import llm_card_ref
from hf_pipeline.methods.genericizing import GENERICIZE_COLUMNS, TEACHER_PROMPT, GenericizeConfig, genericize_batch
from hf_pipeline.run.estimate import CostModel, GENERICIZER, StageEstimate, Workload, llm_stage_estimate
from hf_pipeline.stage import Inputs, Map, Stage, StageContext


def setup(ctx: StageContext):
    return load_backend(ctx.config.llm)


def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    return llm_stage_estimate("genericize", rows, unit, GENERICIZER, w.genericize_prompt_tokens,
                              w.genericize_output_tokens, [f"{rows:,.0f} queries -> templates"], 350, rows,
                              ["prompt/output token counts per query"])


STAGE = Stage(
    name="genericize",
    description="turn queries into <fi> instruction templates + compatible document descriptions with an LLM (§3.1)",
    config_class=GenericizeConfig,
    output_columns=GENERICIZE_COLUMNS,
    inputs=Inputs(
        columns=("query_id", "query", "source"),
        models=lambda config: {"genericizer": llm_card_ref(config.llm)},
        prompts=lambda config: [TEACHER_PROMPT] if config.mode == "teacher" else [],
    ),
    map=Map(
        batch=genericize_batch,
        setup=setup,
    ),
    cost=CostModel("queries", lambda w: w.templates, "queries", estimate_cost, step=2),
)
