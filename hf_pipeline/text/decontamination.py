"""Benchmark decontamination of queries by n-gram overlap, the way Tulu 3 did it (paper §3.1).

Tulu 3 (Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model Post-Training",
§3.2 "Prompt Decontamination"; code: allenai/open-instruct ``decontamination/search.py`` and
``index.py``) matches on 8-grams: a token of a *test* instance matches a training instance when
the two share an 8-gram containing that token, and the test instance overlaps the training
instance when *more than 50%* of the test tokens match that same training instance. Here the
queries are the training side and the benchmark prompts the test side, so a query is
contaminated when some benchmark prompt has more than half of its tokens covered by 8-grams it
shares with the query. (Tulu 3 then judged whole training *sets* by the share of each benchmark
they overlap, >2%; we drop the individual queries instead, as their search did per instance.)

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
every process, so a pickled index stays valid on Ray workers) and looked up in a dict; only the
few benchmark prompts that share a gram with a query are scanned, so ~1M queries against a few
benchmarks runs in tens of seconds on one core.
"""

from __future__ import annotations

import functools
import hashlib
import re
from array import array
from collections.abc import Iterable
from dataclasses import dataclass

# Tulu 3 §3.2 and open-instruct decontamination/search.py (`--ngram_size 8`, and the score is
# thresholded with `score > match_threshold` at 0.5, i.e. "more than 50% of the test tokens").
DEFAULT_NGRAM_SIZE = 8
DEFAULT_OVERLAP_THRESHOLD = 0.5

# open-instruct's tulu_analyzer pattern `[ ,.?!:;()"-]|\n|\\`, widened to all whitespace.
_TOKEN_SEPARATORS = re.compile(r'[\s,.?!:;()"\-\\]+')


def tokenize(text: str) -> list[str]:
    """Lowercased tokens as open-instruct's decontamination index analyzes text."""
    return [token for token in _TOKEN_SEPARATORS.split(text.lower()) if token]


@functools.lru_cache(maxsize=1 << 20)
def _token_id(token: str) -> int:
    # Python's str hash is salted per process; a digest keeps ids (and so gram hashes) stable.
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


def _grams(tokens: list[str], n: int) -> list[int]:
    """Hashes of the n-grams of ``tokens`` in position order; a shorter non-empty text is one gram."""
    ids = [_token_id(token) for token in tokens]
    if len(ids) < n:
        return [hash(tuple(ids))] if ids else []
    return [hash(tuple(ids[i : i + n])) for i in range(len(ids) - n + 1)]


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
        self._postings: dict[int, list[int]] = {}  # gram hash -> benchmark items containing it
        self._item_grams: list[array] = []  # per item, its gram hashes in position order
        self._item_lengths: list[int] = []  # per item, its number of tokens

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
        grams = _grams(tokens, self.n)
        self._item_grams.append(array("q", grams))
        self._item_lengths.append(len(tokens))
        for gram in set(grams):
            self._postings.setdefault(gram, []).append(item)

    def __len__(self) -> int:
        return len(self._item_lengths)

    def _coverage(self, item: int, query_grams: set[int]) -> float:
        """Share of the item's tokens that lie in some gram it shares with the query."""
        length = self._item_lengths[item]
        if length < self.n:
            return 1.0  # its single whole-text gram is shared: an exact match
        covered = reach = 0
        for position, gram in enumerate(self._item_grams[item]):
            if gram in query_grams:
                end = position + self.n
                covered += end - max(position, reach)  # do not count tokens of overlapping grams twice
                reach = end
        return covered / length

    def best_match(self, query: str) -> BenchmarkMatch | None:
        """The benchmark text with the highest overlap ratio, or None when no gram is shared."""
        query_grams = set(_grams(tokenize(query), self.n))
        candidates = {item for gram in query_grams for item in self._postings.get(gram, ())}
        best: BenchmarkMatch | None = None
        for item in sorted(candidates):
            ratio = self._coverage(item, query_grams)
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
