"""instantiate — paper §3.3.

"We prompt an LLM to instantiate the instruction templates and identify excerpt(s) of the document that could
be a relevant answer for the query ... we ensure that the ratio of excerpted text in generated answers is
≥ 0.80 ... introducing tags that designate that text should be directly copied instead of generated."

For each (document, template) pair the LLM fills the template's variables from the document and answers
mostly with `<excerpt>start<...>end</excerpt>` tags, which `expand_excerpts` turns into exact document spans
(offsets kept, so every answer traces back to its source). Two modes: `student` speaks the published
`fineinstructions/template_instantiator` contract (user message = JSON {"instruction_template", "document"};
the reply is JSON {instruction, answer} or null when the template does not fit); `teacher` uses
prompts/instantiate_teacher.txt (in the spirit of Appendix C) with a general instruct LLM.
Every pair keeps its row, with a status.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm_config import LLMConfig, llm_card_ref, load_llm, sampling
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.text.excerpts import ExcerptError, expand_excerpts

TEACHER_PROMPT = Path(__file__).resolve().parent.parent / "prompts" / "instantiate_teacher.txt"

PAIR_SCHEMA = {
    "type": "object",
    "properties": {
        "instruction": {"type": "string", "minLength": 1, "maxLength": 2000},
        "answer": {"type": "string", "minLength": 1, "maxLength": 4000},
    },
    "required": ["instruction", "answer"],
    "additionalProperties": False,
}


@dataclass
class InstantiateConfig:
    documents: str = field(default="", metadata={"help": "documents dataset (doc_id, text): org/name@revision or path"})
    templates: str = field(default="", metadata={"help": "templates dataset (template_id, template): the genericize output"})
    mode: Literal["student", "teacher"] = field(
        default="student", metadata={"help": "student (template_instantiator contract) | teacher (prompted instruct LLM)"}
    )
    llm: LLMConfig = field(
        default_factory=lambda: LLMConfig(model="fineinstructions/template_instantiator", max_tokens=1024),
        metadata={"help": "the model and how to run it (llm.model, llm.backend, ...)"},
    )
    min_excerpt_ratio: float = field(default=0.80, metadata={"help": "answers with a smaller excerpted share get status low_excerpt_ratio"})
    max_document_chars: int = field(default=20000, metadata={"help": "longer documents are cut to this many characters in the prompt"})


def check_config(config: InstantiateConfig) -> list[str]:
    if not config.documents or not config.templates:
        raise PipelineError("instantiate needs config keys 'documents' and 'templates' (dataset refs).")
    return [config.documents, config.templates]


def user_message(template: str, document: str, mode: str) -> str:
    if mode == "student":
        return json.dumps({"instruction_template": template, "document": document}, ensure_ascii=False)
    return TEACHER_PROMPT.read_text().format(template=template, document=document)


def setup(ctx: StageContext) -> dict:
    """The LLM, and lookups from doc_id / template_id to their text (the pairs carry only ids)."""
    config: InstantiateConfig = ctx.config
    docs = ctx.load(config.documents)
    templates = ctx.load(config.templates)
    for ds, ref, columns in ((docs, config.documents, ("doc_id", "text")), (templates, config.templates, ("template_id", "template"))):
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise PipelineError(f"{ref} lacks column '{missing[0]}' (it has: {', '.join(ds.column_names)}).")
    return {
        "llm": load_llm(config.llm),
        "documents": dict(zip(docs["doc_id"][:], docs["text"][:])),
        "templates": {t: s for t, s in zip(templates["template_id"][:], templates["template"][:]) if t is not None},
    }


def instantiate_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    from hf_pipeline.llm.json_output import nullable, parse_json_completion

    config: InstantiateConfig = ctx.config
    documents, templates = ctx.resources["documents"], ctx.resources["templates"]
    out: dict[str, list] = {k: [] for k in INSTANTIATE_COLUMNS}
    rows = list(zip(batch["doc_id"], batch["template_id"], batch["chunk_index"], batch["score"]))
    todo, messages = [], []
    for i, (doc_id, template_id, _, _) in enumerate(rows):
        if doc_id in documents and template_id in templates:
            todo.append(i)
            document = documents[doc_id][: config.max_document_chars]
            messages.append([{"role": "user", "content": user_message(templates[template_id], document, config.mode)}])
    schema = nullable(PAIR_SCHEMA)
    completions = dict(zip(todo, ctx.resources["llm"].generate(messages, sampling(config.llm), schema))) if todo else {}

    for i, (doc_id, template_id, chunk_index, score) in enumerate(rows):
        instruction = answer = raw = None
        spans: list[list[int]] = []
        ratio, generated = None, 0
        completion = completions.get(i)
        if completion is None:
            status = "unknown_document" if doc_id not in documents else "unknown_template"
            detail = f"{doc_id if status == 'unknown_document' else template_id} is not in the {status.split('_')[1]}s input"
        else:
            generated = completion.completion_tokens or 0
            value, status, detail = parse_json_completion(completion, schema)
            if status == "ok":
                instruction, raw = value["instruction"].strip(), value["answer"]
                status, detail, answer, spans, ratio = check_pair(instruction, raw, documents[doc_id], config)
            elif status != "null":
                raw = completion.text
        out["doc_id"].append(doc_id)
        out["template_id"].append(template_id)
        out["chunk_index"].append(chunk_index)
        out["score"].append(score)
        out["instruction"].append(instruction)
        out["answer"].append(answer)
        out["excerpt_ratio"].append(ratio)
        out["excerpt_spans"].append(spans)
        out["raw_answer"].append(raw)
        out["generated_tokens"].append(generated)
        out["status"].append(status)
        out["status_detail"].append(detail or None)
    return out


def check_pair(instruction: str, raw_answer: str, document: str, config: InstantiateConfig):
    """Expand the excerpts and apply the paper's checks: (status, detail, answer, spans, ratio)."""
    if "<fi>" in instruction or "</fi>" in instruction:
        return "unfilled_variables", "the instruction still holds <fi> tags", None, [], None
    try:
        expanded = expand_excerpts(raw_answer, document)
    except ExcerptError as e:
        return e.reason, str(e), None, [], None
    spans = [[s.doc_start, s.doc_end] for s in expanded.excerpts]
    if expanded.excerpt_ratio < config.min_excerpt_ratio:
        detail = f"excerpt ratio {expanded.excerpt_ratio:.2f} < {config.min_excerpt_ratio}"
        return "low_excerpt_ratio", detail, expanded.answer, spans, expanded.excerpt_ratio
    return "ok", None, expanded.answer, spans, expanded.excerpt_ratio


INSTANTIATE_COLUMNS = {
    "doc_id": "string",
    "template_id": "string",
    "chunk_index": "int32",
    "score": "float32",
    "instruction": "string",
    "answer": "string",  # excerpts expanded to the document's exact text
    "excerpt_ratio": "float32",  # share of the answer's non-whitespace characters copied from the document
    "excerpt_spans": "list<list<int64>>",  # [doc_start, doc_end) of each excerpt, in answer order
    "raw_answer": "string",  # what the model wrote, excerpt tags and all (or its raw text when unparseable)
    "generated_tokens": "int32",
    "status": "string",
    "status_detail": "string",
}

STAGE = Stage(
    name="instantiate",
    description="fill each matched template from its document and answer with document excerpts (§3.3)",
    config_class=InstantiateConfig,
    output_columns=INSTANTIATE_COLUMNS,
    input_columns=("doc_id", "template_id", "chunk_index", "score"),
    map_batch=instantiate_batch,
    setup=setup,
    input_refs=check_config,
    models=lambda config: {"instantiator": llm_card_ref(config.llm)},
)
