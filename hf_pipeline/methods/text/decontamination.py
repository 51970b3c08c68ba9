"""Benchmark decontamination of queries by n-gram overlap, the way Tulu 3 did it (paper §3.1).

Tulu 3 (Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model Post-Training",
§3.2 "Prompt Decontamination"; code: allenai/open-instruct ``decontamination/search.py`` and
``index.py``) matches on 8-grams: a token of a *test* instance matches a training instance when
the two share an 8-gram containing that token, and the test instance overlaps the training
instance when *more than 50%* of the test tokens match that same training instance. Here the
queries are the training side and the benchmark prompts the test side, so a query is
contaminated when some benchmark prompt has more than half of its tokens covered by 8-grams it
shares with the query. (Tulu 3 then judged whole training *sets* by the share of a benchmark
they overlap, >2%, and for some sets removed just the matching instances; we always remove just
the contaminated queries.)

Tokens: open-instruct's index lowercases text and splits it on ``[ ,.?!:;()"-]``, newlines and
backslashes (its ``tulu_analyzer``); ``tokenize`` does the same, and also splits on every other
whitespace character. (Their n-gram windows were spaCy tokens whose text was then matched
through that analyzer; counting windows in analyzer tokens directly avoids a spaCy dependency.)

Texts shorter than n tokens have no n-gram, so under Tulu 3's rule they could never match. We
treat the whole token sequence of such a text as its single "gram": a short benchmark prompt is
then matched by a query with exactly the same tokens (ratio 1.0), and a short query can only
match a short benchmark prompt exactly. A short benchmark prompt is deliberately not matched
as a substring of a longer query: a one- or two-token prompt would flag every query using those
words.

Scale: n-grams are hashed to Python ints (tuple hashes of stable per-token 64-bit ids, equal in
every process, so a pickled index stays valid on Ray workers) and looked up in a dict that maps
each gram to where it occurs; a query costs its own tokens plus the occurrences of the grams it
shares, so ~1M queries against a few benchmarks take minutes on one core.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

# Tulu 3 §3.2 and open-instruct decontamination/search.py (`--ngram_size 8`, and the score is
# thresholded with `score > match_threshold` at 0.5, i.e. "more than 50% of the test tokens").
DEFAULT_NGRAM_SIZE = 8
DEFAULT_OVERLAP_THRESHOLD = 0.5

# Runs of characters between open-instruct's tulu_analyzer separators `[ ,.?!:;()"-]|\n|\\`,
# the separators widened to all whitespace.
_TOKEN = re.compile(r'[^\s,.?!:;()"\-\\]+')

# An occurrence of a gram packs (benchmark item, token position) into one int.
_POSITION_BITS = 32
_POSITION_MASK = (1 << _POSITION_BITS) - 1


def tokenize(text: str) -> list[str]:
    """Lowercased tokens as open-instruct's decontamination index analyzes text."""
    return _TOKEN.findall(text.lower())


@functools.lru_cache(maxsize=1 << 20)
def _token_id(token: str) -> int:
    # Python's str hash is salted per process; a digest keeps ids (and so gram hashes) stable.
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _grams(tokens: list[str], n: int) -> list[int]:
    """Hashes of the n-grams of ``tokens`` in position order; a shorter non-empty text is one gram."""
    ids = tuple(map(_token_id, tokens))
    if len(ids) < n:
        return [hash(ids)] if ids else []
    return [hash(ids[i : i + n]) for i in range(len(ids) - n + 1)]


@dataclass(frozen=True)
class BenchmarkMatch:
    """The benchmark text a query overlaps most: its index in ``from_texts`` order and the ratio."""

    item: int
    ratio: float


class NgramIndex:
    """N-gram index of benchmark texts, queried one user query at a time."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"n-gram size must be positive, got {n}")
        self.n = n
        # gram hash -> its occurrences, each encoded as item << 32 | position. Most grams occur
        # once, so a lone occurrence is stored as a bare int and only repeats get a list.
        self._postings: dict[int, int | list[int]] = {}
        self._item_lengths: list[int] = []  # per benchmark text, its number of tokens

    @classmethod
    def from_texts(cls, texts: Iterable[str], n: int = DEFAULT_NGRAM_SIZE) -> NgramIndex:
        """Index benchmark prompts; a match reports the position of the text in ``texts``."""
        index = cls(n)
        for text in texts:
            index._add(text)
        return index

    def _add(self, text: str) -> None:
        item = len(self._item_lengths)
        tokens = tokenize(text)
        self._item_lengths.append(len(tokens))
        for position, gram in enumerate(_grams(tokens, self.n)):
            occurrence = item << _POSITION_BITS | position
            existing = self._postings.get(gram)
            if existing is None:
                self._postings[gram] = occurrence
            elif isinstance(existing, int):
                self._postings[gram] = [existing, occurrence]
            else:
                existing.append(occurrence)

    def __len__(self) -> int:
        return len(self._item_lengths)

    def _coverage(self, item: int, positions: list[int]) -> float:
        """Share of the item's tokens inside the shared grams starting at ``positions``."""
        length = self._item_lengths[item]
        if length < self.n:
            return 1.0  # its single whole-text gram is shared: an exact match
        covered = reach = 0
        for position in sorted(positions):
            end = position + self.n
            covered += end - max(position, reach)  # tokens of overlapping grams count once
            reach = end
        return covered / length

    def best_match(self, query: str) -> BenchmarkMatch | None:
        """The benchmark text with the highest overlap ratio, or None when no gram is shared."""
        # Work grows with the occurrences of the shared grams (usually none or a handful), not
        # with the length of the benchmark texts they occur in.
        shared_positions: dict[int, list[int]] = {}
        for gram in set(_grams(tokenize(query), self.n)):
            occurrences = self._postings.get(gram)
            if occurrences is None:
                continue
            for occurrence in (occurrences,) if isinstance(occurrences, int) else occurrences:
                shared_positions.setdefault(occurrence >> _POSITION_BITS, []).append(occurrence & _POSITION_MASK)
        best: BenchmarkMatch | None = None
        for item in sorted(shared_positions):
            ratio = self._coverage(item, shared_positions[item])
            if best is None or ratio > best.ratio:
                best = BenchmarkMatch(item, ratio)
        return best

    def overlap_ratio(self, query: str) -> float:
        """Largest share of a benchmark text's tokens covered by n-grams it shares with ``query``."""
        match = self.best_match(query)
        return match.ratio if match else 0.0

    def is_contaminated(self, query: str, threshold: float = DEFAULT_OVERLAP_THRESHOLD) -> bool:
        """True when some benchmark text overlaps the query by *more than* ``threshold`` (Tulu 3: 0.5)."""
        return self.overlap_ratio(query) > threshold
