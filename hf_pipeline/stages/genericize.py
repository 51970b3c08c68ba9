"""genericize — paper §3.1, second paragraph.

"We convert queries to genericized templates by inserting <fi></fi> tags in place of spans in the query that
refer to specific entities or scenarios. Within each pair of tags is a short, natural language description
of what kind of text might be appropriate at that span. ... We also generate synthetic 'compatible document
descriptions' for each of these templates."

Two modes: `student` speaks the published `fineinstructions/query_templatizer` contract (the bare query is
the user message; the reply is JSON {template, compatible_document_description}); `teacher` wraps the query
in prompts/genericize_teacher.txt for a general instruct LLM (silver data). Output is schema-constrained;
whatever still fails keeps its row with a status and the raw text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hf_pipeline.llm import load_backend, sampling
from hf_pipeline.llm_config import LLMConfig, llm_card_ref
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.text.templates import TemplateError, parse_template, template_id

TEACHER_PROMPT = Path(__file__).resolve().parent.parent / "prompts" / "genericize_teacher.txt"



def template_schema(max_chars: int) -> dict:
    """The reply's JSON schema. String fields get maxLength: a small model can otherwise loop inside a string
    until max_tokens; with maxLength the grammar closes the string, so a long enough max_tokens always ends in
    valid JSON."""
    field_schema = {"type": "string", "minLength": 1, "maxLength": max_chars}
    return {
        "type": "object",
        "properties": {"template": field_schema, "compatible_document_description": field_schema},
        "required": ["template", "compatible_document_description"],
        "additionalProperties": False,
    }


@dataclass
class GenericizeConfig:
    mode: Literal["student", "teacher"] = field(
        default="student", metadata={"help": "student (query_templatizer contract) | teacher (prompted instruct LLM)"}
    )
    llm: LLMConfig = field(
        default_factory=lambda: LLMConfig(model="fineinstructions/query_templatizer", max_tokens=512),
        metadata={"help": "the model and how to run it (llm.model, llm.backend, ...)"},
    )
    min_variables: int = field(default=1, metadata={"help": "templates with fewer <fi> variables get status no_variables"})
    max_field_chars: int = field(default=1500, metadata={"help": "maxLength of the template and description strings in the JSON schema"})


def messages_for(queries: list[str], mode: str) -> list[list[dict]]:
    if mode == "student":
        return [[{"role": "user", "content": q}] for q in queries]
    prompt = TEACHER_PROMPT.read_text()
    return [[{"role": "user", "content": prompt.format(query=q)}] for q in queries]


def setup(ctx: StageContext):
    return load_backend(ctx.config.llm)


def genericize_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    from hf_pipeline.llm.json_output import parse_json_completion

    config: GenericizeConfig = ctx.config
    schema = template_schema(config.max_field_chars)
    completions = ctx.resources.generate(messages_for(batch["query"], config.mode), sampling(config.llm), schema)
    out: dict[str, list] = {k: [] for k in GENERICIZE_COLUMNS}
    for qid, source, completion in zip(batch["query_id"], batch["source"], completions):
        value, status, detail = parse_json_completion(completion, schema)
        template = description = None
        num_variables = 0
        if status == "ok":
            template, description = value["template"].strip(), value["compatible_document_description"].strip()
            try:
                num_variables = parse_template(template, min_variables=config.min_variables).num_variables
            except TemplateError as e:
                status, detail = e.reason, str(e)
        out["template_id"].append(template_id(template) if template else None)
        out["query_id"].append(qid)
        out["source"].append(source)
        out["template"].append(template)
        out["compatible_document_description"].append(description)
        out["num_variables"].append(num_variables)
        out["status"].append(status)
        out["status_detail"].append(detail or None)
        out["raw_output"].append(None if status == "ok" else completion.text)
    return out


GENERICIZE_COLUMNS = {
    "template_id": "string",
    "query_id": "string",
    "source": "string",
    "template": "string",
    "compatible_document_description": "string",
    "num_variables": "int32",
    "status": "string",
    "status_detail": "string",
    "raw_output": "string",  # kept for every row that is not ok, so failures can be inspected
}

STAGE = Stage(
    name="genericize",
    description="turn queries into <fi> instruction templates + compatible document descriptions with an LLM (§3.1)",
    config_class=GenericizeConfig,
    output_columns=GENERICIZE_COLUMNS,
    input_columns=("query_id", "query", "source"),
    map_batch=genericize_batch,
    setup=setup,
    models=lambda config: {"genericizer": llm_card_ref(config.llm)},
    prompts=lambda config: [TEACHER_PROMPT] if config.mode == "teacher" else [],
)
