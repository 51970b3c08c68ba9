"""Regex helpers for `constrain_format` patterns (genericize's template, instantiate's instruction and answer).

xgrammar matches a pattern against a JSON string's decoded text. A pattern spells no quote, backslash, angle bracket
or control character (`UNSPELLABLE`): text holding one is left out of it or replaced, and the rest is escaped
(`escape_regex`).
"""

from __future__ import annotations

import re

UNSPELLABLE = re.compile(r'["\\<>\x00-\x1f]')
_REGEX_SPECIAL = re.compile(r"([.^$*+?()\[\]{}|\\/])")


def escape_regex(text: str) -> str:
    """`text` as a pattern that matches it literally."""
    return _REGEX_SPECIAL.sub(r"\\\1", text)
