"""Excerpt expansion (paper §3.3): the instantiator copies document text by reference, not token by token.

An answer writes `<excerpt>START<...>END</excerpt>` for the document span that runs from the fragment
START through the fragment END, or `<excerpt>SPAN</excerpt>` for a span written out in full. Expansion
replaces each excerpt with that exact slice of the document; text outside excerpts is the model's own
words and is kept verbatim.

Matching rules:
- Whitespace: inside a fragment, any run of whitespace matches any run of whitespace in the document
  (a space for a newline, one space for several), and whitespace at a fragment's ends is ignored. Whether
  whitespace is there at all is significant ("mouth) this" does not match "mouth)this"), and so is every
  other character: case, punctuation, spelling.
- Span: START must occur in the document, and the span is the shortest one from an occurrence of START
  to the first occurrence of END that begins after that START ends. Every occurrence of START that has
  an END after it yields one candidate span; a `<excerpt>SPAN</excerpt>` has one candidate per occurrence.
- No candidate is `excerpt_not_found`; more than one is `excerpt_ambiguous`, even when the candidates
  hold the same text (a repeated sentence): the span's position matters downstream, and we do not guess.
- Malformed markup is `malformed_excerpt`: an unclosed `<excerpt>`, a stray `</excerpt>` or `<...>`, a
  nested `<excerpt>`, two `<...>` in one excerpt, or a blank START, END or SPAN (a blank fragment anchors
  nothing, so "to the end of the document" would be a guess). A one-character fragment such as "." is
  fine: it ends the span at the first following ".".

Failures raise `ExcerptError` with one of those three `reason`s; the instantiate stage turns it into the
row's status.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_EXCERPT = re.compile(r"<excerpt>(.*?)</excerpt>", re.DOTALL)
_ELLIPSIS = "<...>"
_STRAY_MARKUP = {
    "<excerpt>": "an <excerpt> is never closed",
    "</excerpt>": "a </excerpt> closes no excerpt",
    _ELLIPSIS: f"a {_ELLIPSIS} is outside any excerpt",
}


class ExcerptError(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ExcerptSpan:
    doc_start: int  # document[doc_start:doc_end] == answer[answer_start:answer_end]
    doc_end: int
    answer_start: int
    answer_end: int


@dataclass(frozen=True)
class ExpansionResult:
    answer: str
    excerpts: list[ExcerptSpan]
    # Share of the answer's non-whitespace characters that were copied from the document. Whitespace is
    # left out so that the document's newlines and indentation inside an excerpt, and the spaces the model
    # puts around one, do not move the ratio; only visible text counts. 0.0 for an answer with no text.
    excerpt_ratio: float


def expand_excerpts(text: str, document: str) -> ExpansionResult:
    """Replace every excerpt in an answer with its document span; raises ExcerptError (see module doc)."""
    pieces: list[str] = []
    spans: list[ExcerptSpan] = []
    answer_length = 0
    cursor = 0
    for excerpt in _EXCERPT.finditer(text):
        own_words = text[cursor : excerpt.start()]
        _reject_markup(own_words)
        doc_start, doc_end = _locate(excerpt.group(1), document)
        pieces += [own_words, document[doc_start:doc_end]]
        answer_start = answer_length + len(own_words)
        answer_length = answer_start + (doc_end - doc_start)
        spans.append(ExcerptSpan(doc_start, doc_end, answer_start, answer_length))
        cursor = excerpt.end()
    _reject_markup(text[cursor:])
    pieces.append(text[cursor:])
    answer = "".join(pieces)
    total = _count_visible(answer)
    copied = sum(_count_visible(document[span.doc_start : span.doc_end]) for span in spans)
    return ExpansionResult(answer=answer, excerpts=spans, excerpt_ratio=copied / total if total else 0.0)


def _locate(content: str, document: str) -> tuple[int, int]:
    """The one document span an excerpt's content designates, as (start, end) offsets."""
    if "<excerpt>" in content:
        raise ExcerptError("malformed_excerpt", f"<excerpt> opens inside excerpt {_quote(content)}")
    fragments = content.split(_ELLIPSIS)
    if len(fragments) > 2:
        raise ExcerptError("malformed_excerpt", f"excerpt {_quote(content)} has more than one {_ELLIPSIS}")
    if any(not fragment.strip() for fragment in fragments):
        raise ExcerptError("malformed_excerpt", f"excerpt {_quote(content)} has a blank fragment")

    if len(fragments) == 1:
        candidates = _spans_of_whole(fragments[0], document)
    else:
        candidates = _spans_from_start_to_end(fragments[0], fragments[1], document)
    if len(candidates) > 1:
        raise ExcerptError(
            "excerpt_ambiguous",
            f"excerpt {_quote(content)} matches more than one span "
            f"(starting at offsets {candidates[0][0]} and {candidates[1][0]})",
        )
    return candidates[0]


def _spans_of_whole(fragment: str, document: str) -> list[tuple[int, int]]:
    """Up to two occurrences of a fully written-out span: enough to tell unique from ambiguous."""
    candidates = []
    for match in _occurrences(_fragment_pattern(fragment), document):
        candidates.append(match.span())
        if len(candidates) > 1:
            break
    if not candidates:
        raise ExcerptError("excerpt_not_found", f"excerpt {_quote(fragment)} does not occur in the document")
    return candidates


def _spans_from_start_to_end(start_fragment: str, end_fragment: str, document: str) -> list[tuple[int, int]]:
    """Up to two candidate spans, one per START occurrence that has an END after it."""
    end_pattern = _fragment_pattern(end_fragment)
    candidates = []
    found_start = False
    for start in _occurrences(_fragment_pattern(start_fragment), document):
        found_start = True
        end = end_pattern.search(document, start.end())
        if end is None:  # a later START also ends later, so no END follows it either
            break
        candidates.append((start.start(), end.end()))
        if len(candidates) > 1:
            break
    if not found_start:
        raise ExcerptError(
            "excerpt_not_found", f"start fragment {_quote(start_fragment)} does not occur in the document"
        )
    if not candidates:
        raise ExcerptError(
            "excerpt_not_found",
            f"end fragment {_quote(end_fragment)} does not occur after start fragment {_quote(start_fragment)}",
        )
    return candidates


def _fragment_pattern(fragment: str) -> re.Pattern[str]:
    # Matching the fragment's words joined by \s+ against the original document is matching on the
    # whitespace-collapsed document, with match offsets that are already exact in the original.
    return re.compile(r"\s+".join(re.escape(word) for word in fragment.split()))


def _occurrences(pattern: re.Pattern[str], document: str) -> Iterator[re.Match[str]]:
    """Every match of pattern, overlapping ones included ("a a" occurs twice in "a a a")."""
    match = pattern.search(document)
    while match is not None:
        yield match
        match = pattern.search(document, match.start() + 1)


def _reject_markup(own_words: str) -> None:
    """Markup left in the text between excerpts means the excerpt tags do not pair up."""
    for tag, problem in _STRAY_MARKUP.items():
        if tag in own_words:
            raise ExcerptError("malformed_excerpt", f"{problem}: {_quote(own_words)}")


def _count_visible(text: str) -> int:
    return len("".join(text.split()))


def _quote(text: str, limit: int = 80) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")
