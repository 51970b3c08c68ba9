"""The instruction template grammar (paper §3.1): a query with spans replaced by `<fi>short description</fi>`.

A variable is `<fi>`, a non-blank description, `</fi>`. Variables do not nest. Tags are matched
case-sensitively, exactly as the published templates write them (`<FI>` is plain text). Whitespace just
inside the tags is not part of the description: `<fi> entity A </fi>` describes "entity A".

Invalid templates raise `TemplateError`, whose `reason` is a short code that stages store as a row status:

    empty_template   the template is blank
    nested_tag       a `<fi>` opens while another variable is still open
    unbalanced_tag   a `</fi>` with no open variable, or a `<fi>` never closed
    empty_variable   a variable whose description is blank
    no_variables     fewer variables than `min_variables`
    values_mismatch  (render_template only) the values do not fill the variables one to one
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_TAG = re.compile(r"<fi>|</fi>")


class TemplateError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Template:
    text: str
    variables: tuple[str, ...]  # descriptions, in order of appearance
    spans: tuple[tuple[int, int], ...]  # (start, end) of each whole `<fi>…</fi>` in `text`

    @property
    def num_variables(self) -> int:
        """The template's complexity, used for sampling weights (§3.2).

        Counts variable occurrences, not unique descriptions: each `<fi>` is a slot the instantiator must
        fill, and a repeated description ("<fi>programming language</fi> vs <fi>programming language</fi>")
        still names two different values. It is also what counting `<fi>` tags in any template gives.
        """
        return len(self.variables)


def parse_template(template: str, *, min_variables: int = 1) -> Template:
    if not template.strip():
        raise TemplateError("empty_template", "the template is empty")
    variables: list[str] = []
    spans: list[tuple[int, int]] = []
    open_tag: re.Match[str] | None = None
    for tag in _TAG.finditer(template):
        if tag.group() == "<fi>":
            if open_tag is not None:
                raise TemplateError(
                    "nested_tag",
                    f"<fi> at offset {tag.start()} opens inside the variable opened at offset {open_tag.start()}",
                )
            open_tag = tag
            continue
        if open_tag is None:
            raise TemplateError("unbalanced_tag", f"</fi> at offset {tag.start()} closes no variable")
        description = template[open_tag.end() : tag.start()].strip()
        if not description:
            raise TemplateError("empty_variable", f"the variable at offset {open_tag.start()} has no description")
        variables.append(description)
        spans.append((open_tag.start(), tag.end()))
        open_tag = None
    if open_tag is not None:
        raise TemplateError("unbalanced_tag", f"<fi> at offset {open_tag.start()} is never closed")
    if len(variables) < min_variables:
        raise TemplateError(
            "no_variables", f"the template has {len(variables)} variable(s), at least {min_variables} required"
        )
    return Template(text=template, variables=tuple(variables), spans=tuple(spans))


def validate_template(template: str, min_variables: int = 1) -> str | None:
    """The reason the template is invalid, or None if it is valid."""
    try:
        parse_template(template, min_variables=min_variables)
    except TemplateError as error:
        return error.reason
    return None


def count_variables(template: str) -> int:
    """Number of variable occurrences; raises TemplateError if the template is malformed."""
    return parse_template(template, min_variables=0).num_variables


def render_template(template: str | Template, values: Sequence[str] | Mapping[int, str]) -> str:
    """Fill the variables in order: values[i] replaces the i-th `<fi>…</fi>`, tags included.

    `values` is one value per variable, or a mapping from every variable index 0..n-1 to its value.
    """
    parsed = template if isinstance(template, Template) else parse_template(template, min_variables=0)
    n = parsed.num_variables
    if isinstance(values, str):  # a str is a Sequence of characters: surely a mistake
        raise TypeError("values must be a sequence or mapping of strings, not a string")
    if isinstance(values, Mapping):
        if set(values) != set(range(n)):
            raise TemplateError(
                "values_mismatch", f"values are keyed {sorted(values)}, expected keys {list(range(n))}"
            )
        ordered = [values[i] for i in range(n)]
    else:
        ordered = list(values)
        if len(ordered) != n:
            raise TemplateError("values_mismatch", f"{len(ordered)} value(s) for {n} variable(s)")
    pieces: list[str] = []
    cursor = 0
    for (start, end), value in zip(parsed.spans, ordered):
        pieces += [parsed.text[cursor:start], value]
        cursor = end
    pieces.append(parsed.text[cursor:])
    return "".join(pieces)


def template_id(template: str) -> str:
    """A stable id: sha256 of the text with whitespace runs collapsed and ends stripped, first 16 hex chars.

    Defined for any text, valid template or not, so rows that fail validation still carry an id.
    """
    normalized = " ".join(template.split())
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()[:16]
