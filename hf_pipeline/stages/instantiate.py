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

A batch is one generate call, with the rows of one document adjacent. `prompt_layout: document_first` puts the
document before the template (JSON {"document", "instruction_template"}, or
prompts/instantiate_teacher_document_first.txt), so an engine with prefix caching (vLLM) prefills a document once
for all its templates; the published instantiator expects `template_first`, the default.

Pairs carry their template's text and their document's position (`doc_file`, `doc_row`, written by `match`): a
batch reads its documents from the `documents` input (the one match read, pinned) by position, only the files
and row groups its pairs point at, never a lookup of the corpus. The id found at the position must be the pair's
`doc_id` (status `document_mismatch` otherwise: the documents are not the revision match read); at plan time, a
`documents` other than the repo and commit that the pairs' card records match read is refused. The documents'
id and text columns are the config keys `doc_id_column` and `text_column` (a user's own corpus; checked at plan
time, see hf_pipeline/methods/documents.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm import load_backend, sampling
from hf_pipeline.llm.config import LLMConfig, llm_card_ref, llm_field
from hf_pipeline.methods.documents import DOC_ID_COLUMN, TEXT_COLUMN  # noqa: F401  (the default document columns)
from hf_pipeline.methods.documents import check_documents_input, doc_id_field, text_field
from hf_pipeline.methods.pairs import (
    INSTANTIATE_COLUMNS, MAX_DOCUMENT_CHARS, PromptLayout, check_documents_lineage, read_documents, teacher_prompt, user_message,
)
from hf_pipeline.methods.text.excerpts import ExcerptError, expand_excerpts
from hf_pipeline.methods.text.patterns import UNSPELLABLE, escape_regex
from hf_pipeline.run.estimate import (CHARS_PER_TOKEN, INSTANTIATOR, PARQUET_TEXT_RATIO, CostModel, StageEstimate, Workload,
                                      gpu_tokens_per_s, hours, llm_stage_estimate)
from hf_pipeline.stage import Inputs, Map, Stage, StageContext, add_row

# constrain_format: regexes for the reply's strings (what a pattern cannot spell: hf_pipeline/methods/text/patterns.py).
_FI = re.compile(r"<fi>.*?</fi>", re.S)
# excerpt markup belongs in answers only: an instruction holding any is not a user's question
_EXCERPT_MARKUP = re.compile(r"</?\s*excerpt\b[^>]*>|<\.\.\.>", re.I)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_MAX_WORD_CHARS = 30


def instruction_pattern(template: str, max_variable_words: int) -> str | None:
    """The template's wording with each <fi> variable replaced by a few words; None for a template the pattern
    cannot spell. A word may end in a comma but holds no other separator, so a variable cannot run on as one
    long comma-joined "word"; no brackets, so it cannot be a placeholder like "[name of a country]"."""
    if UNSPELLABLE.search(_FI.sub("", template)):
        return None
    word = f"[^<>\\[\\] ,;?]{{1,{_MAX_WORD_CHARS}}},?"
    words = f"{word}( {word}){{0,{max_variable_words - 1}}}"
    return "^" + words.join(escape_regex(part) for part in _FI.split(template)) + "$"


def _prefixes(text: str, min_chars: int) -> str:
    """Any prefix of text at least min_chars long (or all of a shorter text): ab(c(d|)|) for "abcd" and 2.
    Alternatives with an empty branch, not `?`: xgrammar 0.2.8 loses the bound of a repetition before a `?`
    group inside a JSON string."""
    pattern = ""
    for char in reversed(text[min_chars:]):
        pattern = f"({escape_regex(char)}{pattern}|)"
    return escape_regex(text[:min_chars]) + pattern


def _suffixes(text: str, min_chars: int) -> str:
    """Any suffix of text at least min_chars long: ((a|)b|)cd for "abcd" and 2."""
    pattern = ""
    for char in text[:-min_chars]:
        pattern = f"({pattern}{escape_regex(char)}|)"
    return pattern + escape_regex(text[-min_chars:])


def excerpt_answer_pattern(document: str, min_fragment_chars: int, max_fragment_chars: int) -> str:
    """One excerpt, <excerpt>start<...>end</excerpt>, whose start is the beginning of one of the document's
    sentences and whose end is the end of one: the model chooses which sentences, and how much of each it writes,
    and expansion checks the span as usual (an end before the start is not found, a short start can be
    ambiguous). A fragment has at least min_fragment_chars (so "The" alone cannot start one) and at most
    max_fragment_chars."""
    starts, ends = [], []
    for sentence in _SENTENCE_BREAK.split(document):
        pieces = UNSPELLABLE.split(" ".join(sentence.split()))
        head, tail = pieces[0][:max_fragment_chars].strip(), pieces[-1][-max_fragment_chars:].strip()
        starts += [_prefixes(head, min_fragment_chars)] if head else []
        ends += [_suffixes(tail, min_fragment_chars)] if tail else []
    if not starts:  # nothing spellable: free text, which expansion will most likely not find
        starts = ends = [f"[^<>]{{1,{max_fragment_chars}}}"]
    return f"^<excerpt>({'|'.join(starts)})<\\.\\.\\.>({'|'.join(ends)})</excerpt>$"


def pair_schema(config: InstantiateConfig, template: str = "", document: str = "") -> dict:
    """The reply's JSON schema; with `constrain_format`, patterns for this template and document (their bounds do
    maxLength's job: xgrammar ignores maxLength beside a pattern)."""
    instruction = {"type": "string", "minLength": 1, "maxLength": 2000}
    answer = {"type": "string", "minLength": 1, "maxLength": 4000}
    if config.constrain_format:
        pattern = instruction_pattern(template, config.max_variable_words)
        if pattern is not None:
            instruction = {"type": "string", "pattern": pattern}
        pattern = excerpt_answer_pattern(document, config.min_fragment_chars, config.max_fragment_chars)
        answer = {"type": "string", "pattern": pattern}
    return {
        "type": "object",
        "properties": {"instruction": instruction, "answer": answer},
        "required": ["instruction", "answer"],
        "additionalProperties": False,
    }


@dataclass
class InstantiateConfig:
    documents: str = field(
        default="", metadata={"help": "documents dataset: the one match read (org/name@revision or path); read by position"}
    )
    doc_id_column: str = doc_id_field()
    text_column: str = text_field()
    mode: Literal["student", "teacher"] = field(
        default="student", metadata={"help": "student (template_instantiator contract) | teacher (prompted instruct LLM)"}
    )
    llm: LLMConfig = llm_field(role="student", model="fineinstructions/template_instantiator", max_tokens=1024)
    min_excerpt_ratio: float = field(default=0.80, metadata={"help": "answers with a smaller excerpted share get status low_excerpt_ratio"})
    max_document_chars: int = field(default=MAX_DOCUMENT_CHARS, metadata={"help": "longer documents are cut to this many characters in the prompt"})
    prompt_layout: PromptLayout = field(
        default="template_first",
        metadata={"help": "template_first (the published template_instantiator contract) | document_first (prefix caching "
                  "prefills a document once for all its templates; for teacher prompts and models trained that way)"},
    )
    # For small teacher models that do not follow the reply format from the prompt alone. The model still chooses
    # every word; the grammar only keeps it to the format, and the paper's checks apply unchanged.
    constrain_format: bool = field(
        default=False,
        metadata={"help": "decode the instruction as the template's wording with its variables filled, the answer as one <excerpt>"},
    )
    max_variable_words: int = field(default=8, metadata={"help": "constrain_format: most words filling one variable"})
    min_fragment_chars: int = field(default=12, metadata={"help": "constrain_format: fewest characters of an excerpt's start or end"})
    max_fragment_chars: int = field(default=40, metadata={"help": "constrain_format: most characters of an excerpt's start or end"})


def check_config(config: InstantiateConfig) -> list[str]:
    if not config.documents:
        raise PipelineError("instantiate needs config key 'documents': the documents dataset match read (a dataset ref).")
    return [config.documents]


def resolve_config(config: InstantiateConfig, plan) -> InstantiateConfig:
    """At plan time: the documents are those match read (the pairs' card lineage, when it says) and have the id and
    text columns the config names (one footer read)."""
    check_documents_lineage("instantiate", config.documents, plan.pinned(config.documents), plan.part_refs[0])
    check_documents_input(config, plan, "instantiate")
    return config


def setup(ctx: StageContext) -> dict:
    """The LLM (documents are read per batch, by position)."""
    return {"llm": load_backend(ctx.config.llm)}


def instantiate_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    from hf_pipeline.llm.json_output import nullable, parse_json_completion

    config: InstantiateConfig = ctx.config
    documents, problems = read_documents(batch, ctx)  # by row; problems: row -> (status, detail)
    templates = batch["template"]
    for i, template in enumerate(templates):
        if i not in problems and not template:
            problems[i] = ("unknown_template", f"the pair carries no template text for {batch['template_id'][i]}")
    out: dict[str, list] = {k: [] for k in INSTANTIATE_COLUMNS}
    rows = list(zip(batch["doc_id"], batch["template_id"], batch["chunk_index"], batch["score"]))
    # one generate call for the batch, a document's rows adjacent (in the order documents first appear), so an
    # engine with prefix caching prefills each document once; with constrain_format every row has its own schema
    first_seen: dict[str, int] = {}
    for i, (doc_id, *_) in enumerate(rows):
        first_seen.setdefault(doc_id, i)
    todo = sorted((i for i in range(len(rows)) if i not in problems), key=lambda i: first_seen[rows[i][0]])
    schemas, messages = {}, []
    for i in todo:
        document, template = documents[i][: config.max_document_chars], templates[i]
        schemas[i] = nullable(pair_schema(config, template, document))
        messages.append([{"role": "user", "content": user_message(template, document, config.mode, config.prompt_layout)}])
    per_row = [schemas[i] for i in todo] if config.constrain_format else (schemas[todo[0]] if todo else None)
    replies = ctx.resources["llm"].generate(messages, sampling(config.llm), per_row) if todo else []
    completions = dict(zip(todo, replies))

    for i, (doc_id, template_id, chunk_index, score) in enumerate(rows):
        instruction = answer = raw = None
        spans: list[list[int]] = []
        ratio, generated = None, 0
        completion = completions.get(i)
        if completion is None:  # not sent (problems say why), or sent and the engine gave no answer
            status, detail = problems.get(i, ("error", "the engine returned no completion for this row"))
        else:
            generated = completion.completion_tokens or 0
            value, status, detail = parse_json_completion(completion, schemas[i])
            if status == "ok":
                instruction, raw = value["instruction"].strip(), value["answer"]
                status, detail, answer, spans, ratio = check_pair(instruction, raw, documents[i], config)
            elif status != "null":
                raw = completion.text
        add_row(
            out,
            doc_id=doc_id,
            template_id=template_id,
            template=templates[i],
            doc_file=batch["doc_file"][i],
            doc_row=batch["doc_row"][i],
            chunk_index=chunk_index,
            score=score,
            instruction=instruction,
            answer=answer,
            excerpt_ratio=ratio,
            excerpt_spans=spans,
            raw_answer=raw,
            generated_tokens=generated,
            status=status,
            status_detail=detail or None,
        )
    return out


def check_pair(instruction: str, raw_answer: str, document: str, config: InstantiateConfig):
    """Expand the excerpts and apply the paper's checks: (status, detail, answer, spans, ratio)."""
    if "<fi>" in instruction or "</fi>" in instruction:
        return "unfilled_variables", "the instruction still holds <fi> tags", None, [], None
    markup = _EXCERPT_MARKUP.search(instruction)
    if markup:
        return "excerpt_in_instruction", f"the instruction holds excerpt markup {markup.group(0)!r}", None, [], None
    try:
        expanded = expand_excerpts(raw_answer, document)
    except ExcerptError as e:
        return e.reason, str(e), None, [], None
    spans = [[s.doc_start, s.doc_end] for s in expanded.excerpts]
    if expanded.excerpt_ratio < config.min_excerpt_ratio:
        detail = f"excerpt ratio {expanded.excerpt_ratio:.2f} < {config.min_excerpt_ratio}"
        return "low_excerpt_ratio", detail, expanded.answer, spans, expanded.excerpt_ratio
    return "ok", None, expanded.answer, spans, expanded.excerpt_ratio


# every row's `status`; dataset_cards/instantiate.md says what each means
STATUSES = (
    "ok", "null", "unfilled_variables", "excerpt_in_instruction", "excerpt_not_found", "excerpt_ambiguous", "malformed_excerpt",
    "low_excerpt_ratio", "unparseable", "length", "schema_mismatch", "error", "prompt_too_long", "unknown_document",
    "document_mismatch",
    "unknown_template",
)

def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    prompt = w.tokens_per_document + w.instantiate_prompt_tokens
    # document-first prompts + vLLM prefix caching: each document is prefilled once for its six templates
    cached = rows * w.tokens_per_document * (1 - 1 / w.templates_per_document)
    est = llm_stage_estimate(
        "instantiate", rows, unit, INSTANTIATOR, prompt, w.instantiate_output_tokens,
        [f"{rows / 1e9:,.1f}B pairs instantiated (prompt = document + template, document first, prefix-cached)"],
        PARQUET_TEXT_RATIO * CHARS_PER_TOKEN * (40 + w.expanded_answer_tokens) + 60, rows * w.instantiate_ok_rate,
        ["prefix-cache hit rate (assumed: every document prefilled once)",
         f"generated tokens per pair with <excerpt> tags (assumed {w.instantiate_output_tokens:.0f}; "
         f"{w.expanded_answer_tokens:.0f} after expansion)"], cached_prefix=cached)
    no_tags = replace(w, instantiate_output_tokens=w.instantiate_output_tokens + w.expanded_answer_tokens * 0.8)
    decode = gpu_tokens_per_s(INSTANTIATOR, "decode").value
    extra = hours(rows * (no_tags.instantiate_output_tokens - w.instantiate_output_tokens) / decode)
    est.work.append(f"without excerpt tags: +{extra:,.0f} GPU-h of decode; without prefix caching: "
                    f"+{hours(cached / gpu_tokens_per_s(INSTANTIATOR, 'prefill').value):,.0f} GPU-h of prefill")
    return est


STAGE = Stage(
    name="instantiate",
    description="fill each matched template from its document and answer with document excerpts (§3.3)",
    config_class=InstantiateConfig,
    output_columns=INSTANTIATE_COLUMNS,
    inputs=Inputs(
        columns=("doc_id", "template_id", "template", "doc_file", "doc_row", "chunk_index", "score"),
        side=check_config,
        resolve_config=resolve_config,
        models=lambda config: {"instantiator": llm_card_ref(config.llm)},
        prompts=lambda config: [teacher_prompt(config.prompt_layout)] if config.mode == "teacher" else [],
    ),
    map=Map(
        batch=instantiate_batch,
        setup=setup,
    ),
    cost=CostModel("(document, template) pairs", lambda w: w.pairs, "documents", estimate_cost, step=5),
)
