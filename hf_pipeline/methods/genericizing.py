"""Genericizing a query into a `<fi>` template (paper §3.1), as genericize and genericizer_silver's teacher share it.

`GenericizeConfig` (a genericize run's config; genericizer_silver builds one for its teacher), the reply's schema
and, with `constrain_format`, the template's grammar (`template_pattern`, checked after decoding by
`dropped_words`), the messages of each mode (`messages_for`), and `genericize_batch`: a batch of queries through
the LLM in `ctx.resources` to `GENERICIZE_COLUMNS` rows, each with a status. What the modes and `constrain_format`
are: hf_pipeline/stages/genericize.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from hf_pipeline.io.package_data import package_file
from hf_pipeline.llm import sampling
from hf_pipeline.llm.config import LLMConfig, llm_field
from hf_pipeline.methods.text.patterns import UNSPELLABLE, escape_regex
from hf_pipeline.methods.text.templates import TemplateError, parse_template, template_id
from hf_pipeline.stage import StageContext, add_row

TEACHER_PROMPT = package_file("prompts", "genericize_teacher.txt")


def template_schema(max_chars: int, template_pattern: str | None = None) -> dict:
    """The reply's JSON schema. String fields get maxLength: a small model can otherwise loop inside a string
    until max_tokens; with maxLength the grammar closes the string, so a long enough max_tokens always ends in
    valid JSON. With a `template_pattern` (constrain_format) the template is that pattern instead (its bounds do
    maxLength's job: xgrammar ignores maxLength beside a pattern)."""
    field_schema = {"type": "string", "minLength": 1, "maxLength": max_chars}
    template = {"type": "string", "pattern": template_pattern} if template_pattern else field_schema
    return {
        "type": "object",
        "properties": {"template": template, "compatible_document_description": field_schema},
        "required": ["template", "compatible_document_description"],
        "additionalProperties": False,
    }


# constrain_format: the template as the query's own words with runs of them replaced by <fi> variables.
# A query is cut into units: its whitespace-separated words, with trailing punctuation split off as a unit of its
# own that is always kept (so "France?" can become "<fi>a country</fi>?"). xgrammar cannot spell quotes,
# backslashes, angle brackets or control characters inside a pattern: a word holding one can only be replaced.
_WORD = re.compile(r"\S+")
_TRAILING_PUNCTUATION = re.compile(r"^(.*?)([?!.,;:]+)$", re.S)
_DESCRIPTION_WORD = "[^<>\\[\\] ,;?]{1,14}"  # a word of a variable's description: 14 characters at most
_VARIABLE = re.compile(r"<fi>.*?</fi>", re.S)


def query_units(query: str) -> list[tuple[str, str, bool]]:
    """(separator before it, text, is punctuation) for each unit of the query, in order."""
    units: list[tuple[str, str, bool]] = []
    for match in _WORD.finditer(query):
        word, punctuation = match.group(), ""
        split = _TRAILING_PUNCTUATION.match(word)
        if split:
            word, punctuation = split.groups()
        if word:
            units.append((" " if units else "", word, False))
        if punctuation:
            units.append(("" if word else (" " if units else ""), punctuation, True))
    return units


def variable_pattern(max_words: int) -> str:
    """`<fi>`, one to max_words words of description, `</fi>`; every part bounded, so the string always closes."""
    return f"<fi>{_DESCRIPTION_WORD}( {_DESCRIPTION_WORD}){{0,{max_words - 1}}}</fi>"


def template_pattern(query: str, max_description_words: int = 5, max_units: int = 32) -> str | None:
    """A regex for templates of `query`: its units in order, each kept, replaced by a variable, or (after the first)
    left out, with at least one variable; punctuation is always kept. None when the query has more than `max_units`
    units (the grammar's cost grows with them) or no unit a variable can replace.

    The exact language (a left-out word only inside a run that a variable replaces) needs a regex quadratic in the
    query's length, each copy of the variable costing xgrammar ~0.1 s to compile on 2 CPU cores; this superset keeps
    one variable per unit, and "at least one variable" split in halves (X = X·Y | N·X) adds a log factor:
    ~n·log2(n)/2 + n variables for n units (~1 s for a 7-unit query). A left-out word without a variable is caught
    after decoding (`dropped_words`)."""
    units = query_units(query)
    if not units or len(units) > max_units:
        return None
    variable = variable_pattern(max_description_words)

    def keep(i: int) -> str | None:
        separator, text, _ = units[i]
        return None if UNSPELLABLE.search(text) else separator + escape_regex(text)

    def replace(i: int) -> str | None:
        separator, _, punctuation = units[i]
        return None if punctuation else separator + variable

    def leave_out(i: int) -> str | None:  # never the first unit: a run left out must follow a variable
        return None if units[i][2] or i == 0 else ""

    def alternatives(options: list[str | None]) -> str | None:
        options = [o for o in options if o is not None]
        if not options:
            return None
        # alternatives with an empty branch, not `?`: xgrammar 0.2.8 loses the bound of a repetition before a `?`
        return options[0] if len(options) == 1 else "(" + "|".join(options) + ")"

    def sequence(parts: list[str | None]) -> str | None:
        return None if any(p is None for p in parts) else "".join(parts)

    def any_units(a: int, b: int) -> str | None:  # Y: units a..b-1, variables allowed
        return sequence([alternatives([keep(i), replace(i), leave_out(i)]) for i in range(a, b)])

    def no_variable(a: int, b: int) -> str | None:  # N: units a..b-1, no variable
        return sequence([alternatives([keep(i), leave_out(i)]) for i in range(a, b)])

    def some_variable(a: int, b: int) -> str | None:  # X: units a..b-1 with at least one variable
        if b - a == 1:
            return replace(a)
        m = (a + b) // 2
        return alternatives([sequence([some_variable(a, m), any_units(m, b)]),
                             sequence([no_variable(a, m), some_variable(m, b)])])

    pattern = some_variable(0, len(units))
    return None if pattern is None else f"^{pattern}$"


def dropped_words(template: str, query: str) -> str | None:
    """Why the template is not the query's words with runs replaced by variables (a word left out with no
    variable in its place, or more variables than the words they replace), or None when it is."""
    query_side = [text for _, text, _ in query_units(query)]
    items: list[str | None] = []  # the template's units, None for a variable
    cursor = 0
    for match in _VARIABLE.finditer(template):
        items += [text for _, text, _ in query_units(template[cursor : match.start()])] + [None]
        cursor = match.end()
    items += [text for _, text, _ in query_units(template[cursor:])]

    def gap_ok(gap: int, variables: int) -> bool:
        return variables == 0 if gap == 0 else 1 <= variables <= gap

    # states: (next query unit, variables since the last kept unit); a kept unit may match any later query unit
    states = {(0, 0)}
    for item in items:
        if item is None:
            states = {(q, v + 1) for q, v in states}
            continue
        states = {(j + 1, 0) for q, v in states for j in range(q, len(query_side))
                  if query_side[j] == item and gap_ok(j - q, v)}
        if not states:
            return f"{item!r} is not the next word of the query, or words before it were left out without a variable"
    if any(gap_ok(len(query_side) - q, v) for q, v in states):
        return None
    return "the template ends before the query does, without a variable in place of its last words"


@dataclass
class GenericizeConfig:
    mode: Literal["student", "teacher"] = field(
        default="student", metadata={"help": "student (query_templatizer contract) | teacher (prompted instruct LLM)"}
    )
    llm: LLMConfig = llm_field(role="student", model="fineinstructions/query_templatizer")
    min_variables: int = field(default=1, metadata={"help": "templates with fewer <fi> variables get status no_variables"})
    max_field_chars: int = field(default=1500, metadata={"help": "maxLength of the template and description strings in the JSON schema"})
    # For small teacher models that do not write <fi> variables from the prompt alone. The model still chooses the
    # spans and writes every description; the grammar only keeps the template to the query's own words.
    constrain_format: bool = field(
        default=False,
        metadata={"help": "decode the template as the query's words with at least one run replaced by <fi>a few words</fi>"},
    )
    max_description_words: int = field(default=5, metadata={"help": "constrain_format: most words of a variable's description"})
    max_pattern_units: int = field(
        default=32,
        metadata={"help": "constrain_format: longer queries (words and punctuation) are decoded without the template "
                  "pattern (its grammar's compile time grows with the query)"},
    )


def messages_for(queries: list[str], mode: str) -> list[list[dict]]:
    if mode == "student":
        return [[{"role": "user", "content": q}] for q in queries]
    prompt = TEACHER_PROMPT.read_text()
    return [[{"role": "user", "content": prompt.format(query=q)}] for q in queries]


def genericize_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    from hf_pipeline.llm.json_output import parse_json_completion

    config: GenericizeConfig = ctx.config
    if config.constrain_format:  # one generate call, a grammar per query
        schemas = [template_schema(config.max_field_chars, template_pattern(q, config.max_description_words, config.max_pattern_units))
                   for q in batch["query"]]
    else:
        schemas = [template_schema(config.max_field_chars)] * len(batch["query"])
    per_row = schemas if config.constrain_format else (schemas[0] if schemas else None)
    completions = ctx.resources.generate(messages_for(batch["query"], config.mode), sampling(config.llm), per_row)
    out: dict[str, list] = {k: [] for k in GENERICIZE_COLUMNS}
    for query, qid, source, completion, schema in zip(batch["query"], batch["query_id"], batch["source"], completions, schemas):
        value, status, detail = parse_json_completion(completion, schema)
        template = description = None
        num_variables = 0
        if status == "ok":
            template, description = value["template"].strip(), value["compatible_document_description"].strip()
            try:
                num_variables = parse_template(template, min_variables=config.min_variables).num_variables
            except TemplateError as e:
                status, detail = e.reason, str(e)
            if status == "ok" and config.constrain_format:
                why = dropped_words(template, query)
                if why:
                    status, detail = "dropped_words", why
        add_row(
            out,
            template_id=template_id(template) if template else None,
            query_id=qid,
            source=source,
            template=template,
            compatible_document_description=description,
            num_variables=num_variables,
            status=status,
            status_detail=detail or None,
            raw_output=None if status == "ok" else completion.text,
        )
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
