"""Pure text logic for collecting real user queries (paper §3.1).

A source dataset row becomes a query in three steps, each free of I/O so it is tested directly:
``extract_first_user_message`` picks the user's first message out of the row according to the
source's ``SourceMapping``; ``normalize_whitespace`` cleans it; ``check_query`` says whether it is
usable. ``dedup_key`` and ``query_id`` then drive exact and normalized de-duplication, and
``partition_key`` says which rows must meet in one partition of a distributed dedupe.

Every function that rejects something returns a short reason string instead of raising, so the
stage can keep the row with a status and count the reasons in the dataset card.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

# Drop reasons. The stage counts rows per reason, so these strings end up in dataset cards.
NOT_SELECTED = "not_selected"  # the row fails the source's `where` filter (e.g. not English)
MISSING = "missing"  # the column is absent or null
NOT_TEXT = "not_text"  # the value is not a string (e.g. multimodal content parts)
MALFORMED_CONVERSATION = "malformed_conversation"  # not a list of turn mappings
NO_USER_TURN = "no_user_turn"  # a conversation without any turn in the user role
EMPTY = "empty"  # nothing left after whitespace normalization
TOO_LONG = "too_long"  # longer than the stage's character limit

# Invisible format characters that copy-paste leaves in prompts; they are not whitespace to
# Python's regex engine, so they would otherwise survive normalization and split duplicates.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u2060\ufeff"))
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # any whitespace except newline, Unicode included
_BLANK_LINE_RUN = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    r"""Canonical whitespace for a user query, keeping its line structure.

    Real prompts often carry code, lists or pasted passages whose line breaks carry meaning, so
    lines are kept: line endings become ``\n``, every run of other whitespace (tabs, no-break
    spaces, ideographic spaces, ...) inside a line becomes one space, a line's leading
    indentation is kept (as spaces) but trailing whitespace is dropped, any run of blank lines
    becomes one paragraph break (``\n\n``), and the whole text is stripped.
    """
    text = text.translate(_INVISIBLE).replace("\r\n", "\n").replace("\r", "\n")
    # \v, \f and the Unicode line/paragraph separators end a line just like \n does.
    text = re.sub(r"[\v\f\x1c-\x1e\x85\u2028\u2029]", "\n", text)
    lines = []
    for line in text.split("\n"):
        body = line.lstrip()
        indent = " " * (len(line) - len(body))
        lines.append(indent + _HORIZONTAL_SPACE.sub(" ", body).rstrip())
    return _BLANK_LINE_RUN.sub("\n\n", "\n".join(lines)).strip()


@functools.cache
def _dedup_tables() -> tuple[re.Pattern[str], dict[int, None]]:
    """Punctuation-deleting pattern and format-character deletion table, built once (~0.4 s).

    Python's ``re`` has no Unicode property classes, so the classes are listed explicitly by
    scanning the Unicode database.
    """
    punctuation, format_chars = [], {}
    for codepoint in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(codepoint))
        if category.startswith("P"):
            punctuation.append(re.escape(chr(codepoint)))
        elif category == "Cf":
            format_chars[codepoint] = None
    punct = "[" + "".join(punctuation) + "]"
    # Punctuation is deleted unless it sits between two digits, so 3.5, 1,000 and 10:30 keep
    # theirs. Deleting (not spacing) merges "e-mail"/"email" and "don't"/"dont".
    return re.compile(rf"(?<!\d){punct}|{punct}(?!\d)"), format_chars


def dedup_key(text: str) -> str:
    """Key under which normalized duplicates collide.

    NFKC folds compatibility forms (full-width letters, ligatures), casefold removes case,
    format characters (zero-width spaces, ...) and punctuation are deleted (punctuation between
    two digits is kept) and all whitespace collapses to single spaces. "What is AI?" and
    "what is  ai" share a key; "What is ML?" does not. Symbols (+, =, $) and diacritics are
    kept: they change meaning.
    """
    punctuation, format_chars = _dedup_tables()
    text = unicodedata.normalize("NFKC", text).casefold().translate(format_chars)
    return " ".join(punctuation.sub("", text).split())


def partition_key(query: str, dedupe: str) -> str:
    """The key a dedupe partitions a stored (normalized) query by: rows that may be duplicates share it, so they
    meet in one partition. ``normalized``: ``dedup_key`` (exact duplicates share it too, so both checks run in
    the same partition); ``exact``: the query itself; ``none``: its ``query_id`` (nothing is deduplicated; the
    key only spreads the rows over the partitions)."""
    if dedupe == "normalized":
        return dedup_key(query)
    if dedupe == "exact":
        return query
    if dedupe == "none":
        return query_id(query)
    raise ValueError(f"unknown dedupe mode {dedupe!r} (exact, normalized, none)")


def query_id(text: str) -> str:
    """Stable id of a query: the first 16 hex digits of the SHA-256 of its normalized text.

    Hashing ``normalize_whitespace(text)`` (the text the stage stores) means the id of a stored
    query can be recomputed from its ``query`` column. 64 bits keep collisions negligible at the
    paper's ~18M queries (expected collisions ~1e-5).
    """
    return hashlib.sha256(normalize_whitespace(text).encode("utf-8")).hexdigest()[:16]


def check_query(text: Any, max_chars: int) -> str | None:
    """Drop reason for an extracted, normalized query (``not_text``, ``empty``, ``too_long``), or None."""
    if not isinstance(text, str):
        return NOT_TEXT
    if not text.strip():
        return EMPTY
    if len(text) > max_chars:
        return TOO_LONG
    return None


@dataclass(frozen=True)
class SourceMapping:
    """Where a source dataset keeps the user's first message.

    Exactly one of two shapes: ``column`` names a plain text column holding the query, or
    ``conversation_column`` names a column holding a list of turns, each a mapping whose
    ``role_key`` says who spoke and whose ``content_key`` holds the text; the first turn whose
    role equals ``user_role`` is the query (WildChat: role/content/"user"; ShareGPT-style data:
    from/value/"human"). ``where`` keeps only rows whose columns equal the given values (a list
    means "any of these"; null means the column must be null), e.g. ``{language: English}`` or,
    for OAsst1's flat message table, ``{parent_id: null, role: prompter}`` to take root prompts.
    """

    name: str
    dataset: str
    config: str | None = None
    revision: str | None = None
    splits: tuple[str, ...] = ("train",)
    column: str | None = None
    conversation_column: str | None = None
    role_key: str = "role"
    content_key: str = "content"
    user_role: str = "user"
    where: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.column is None) == (self.conversation_column is None):
            raise ValueError(f"source {self.name!r}: set exactly one of `column` and `conversation_column`")
        if not self.splits:
            raise ValueError(f"source {self.name!r}: `splits` is empty")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceMapping:
        """Build from a config mapping (one entry of ``configs/query_sources.yaml``); unknown keys fail."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"source {data.get('name')!r}: unknown keys {unknown}")
        values = dict(data)
        if isinstance(values.get("splits"), str):
            values["splits"] = (values["splits"],)
        elif "splits" in values:
            values["splits"] = tuple(values["splits"])
        values["where"] = dict(values.get("where") or {})
        return cls(**values)


def source_mappings(config: Mapping[str, Any]) -> dict[str, SourceMapping]:
    """Parse a whole sources config, ``{"sources": {name: {...}}}``, keyed by source name."""
    return {name: SourceMapping.from_dict({"name": name, **entry}) for name, entry in config["sources"].items()}


class Extraction(NamedTuple):
    """The user's first message, or why there is none (exactly one of the two is set)."""

    text: str | None
    drop_reason: str | None


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, list):
        return value in wanted
    return value == wanted


def _text_or_reason(value: Any) -> Extraction:
    if value is None:
        return Extraction(None, MISSING)
    if not isinstance(value, str):
        return Extraction(None, NOT_TEXT)
    return Extraction(value, None)


def extract_first_user_message(row: Mapping[str, Any], mapping: SourceMapping) -> Extraction:
    """The user's first message in ``row`` according to ``mapping``, or the reason it has none."""
    for column, wanted in mapping.where.items():
        if not _matches(row.get(column), wanted):
            return Extraction(None, NOT_SELECTED)
    if mapping.column is not None:
        return _text_or_reason(row.get(mapping.column))

    turns = row.get(mapping.conversation_column)
    if turns is None:
        return Extraction(None, MISSING)
    if not isinstance(turns, list):
        return Extraction(None, MALFORMED_CONVERSATION)
    for turn in turns:
        if not isinstance(turn, Mapping):
            return Extraction(None, MALFORMED_CONVERSATION)
        if turn.get(mapping.role_key) == mapping.user_role:
            return _text_or_reason(turn.get(mapping.content_key))
    return Extraction(None, NO_USER_TURN)


def first_user_message(row: Mapping[str, Any], mapping: SourceMapping) -> str | None:
    """The user's first message in ``row``, or None; ``extract_first_user_message`` also says why."""
    return extract_first_user_message(row, mapping).text
