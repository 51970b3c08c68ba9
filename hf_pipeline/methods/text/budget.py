"""Token-for-token budgeting of instruction-answer pairs against their source documents (paper §4.2).

"For each pre-training document, we randomly keep instruction-answer pairs with a total token count that
does not exceed the token count of the source document. If there is remaining token budget because
instruction-answer pairs cannot exactly fill the token count of the source pre-training document, we
rollover the remaining token budget to instruction-answer pairs for future pre-training documents."
Pairs are formatted as "Instruction: {instruction}\\n\\nAnswer: {answer}", and the format is counted.

The rules, exactly (`iter_packing`):

1. Documents are visited once each, in the given order (the stage uses the row order of the documents
   dataset at its pinned revision). A document with no pair still has a budget, which rolls over.
2. budget_d = doc_tokens_d + carry_(d-1), with carry_(-1) = `initial_carry` (0 for a whole run).
3. The document's candidate pairs are sorted by their key (unique within a document, e.g. the template
   id), so the result does not depend on the input's row order, then shuffled with a generator seeded by
   (seed, doc_id) only: a document's draw does not depend on other documents or on the run's chunking.
4. Greedy skip-and-continue: in the shuffled order, a pair is kept when its tokens fit in what is left of
   the budget (tokens <= remaining), and the remaining budget shrinks by its tokens; a pair that does not
   fit is skipped and the next one is tried (a smaller pair later in the order may still fit).
5. carry_d = what is left (budget_d - tokens kept for d), never negative; it all rolls over, uncapped.
   What is left after the last document is the run's "rollover left".

So the kept tokens never exceed the documents' tokens, in total and for every prefix of the document order:
sum(kept tokens of docs 0..d) <= sum(doc tokens of docs 0..d) for every d.

`pack_stream` applies the same rules to documents that arrive with their own candidates (a shard streamed in
document order: one document's pairs in memory at a time); `assemble` packs each shard on its own, the carry
starting at 0 at the shard's first document.

The token-matched baseline (`baseline_take`, lazily `iter_baseline`) is the documents themselves, in the same order, whole, until
the next one would pass the total; that one is cut to the tokens still missing, so both arms hold exactly
the same number of tokens. Documents with zero tokens are skipped.

No I/O, no tokenizer: token counts come in as integers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAIR_FORMAT = "Instruction: {instruction}\n\nAnswer: {answer}"


def format_pair(instruction: str, answer: str) -> str:
    """A pair as a pre-training text, in the paper's format (§4.2)."""
    return PAIR_FORMAT.format(instruction=instruction, answer=answer)


def pair_drop_reason(
    status: str | None,
    judge_score: int | None = None,
    judge_status: str | None = None,
    min_judge_score: int | None = 4,
) -> str | None:
    """Why a judged pair is not a candidate for the final data, or None when it is.

    Instantiation must have succeeded (`status == "ok"`, else `instantiate_<status>`); a judge that reports a
    status other than "ok" drops the pair (`judge_<judge_status>`); with `min_judge_score` set, the pair needs
    a score (`judge_score_missing`) of at least that (`judge_score_below_min`). The paper keeps scores >= 4.
    """
    if status != "ok":
        return f"instantiate_{status or 'missing'}"
    if judge_status not in (None, "ok"):
        return f"judge_{judge_status}"
    if min_judge_score is not None:
        if judge_score is None:
            return "judge_score_missing"
        if judge_score < min_judge_score:
            return "judge_score_below_min"
    return None


def document_rng(seed: int, doc_id: str) -> np.random.Generator:
    """The generator that shuffles one document's pairs: a function of (seed, doc_id) only."""
    digest = hashlib.sha256(f"{seed}\x1f{doc_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class Candidate:
    """A pair that may be kept: `key` is sortable and unique within its document, `tokens` its formatted length."""

    key: Hashable
    tokens: int


@dataclass
class DocumentPacking:
    """What one document contributed: its own tokens, the budget it got, and the pairs kept for it."""

    doc_id: str
    doc_tokens: int
    carry_in: int
    kept: list[Any] = field(default_factory=list)  # keys, in the order they were drawn
    kept_tokens: int = 0
    skipped: list[Any] = field(default_factory=list)  # keys of candidates that did not fit

    @property
    def budget(self) -> int:
        return self.doc_tokens + self.carry_in

    @property
    def carry_out(self) -> int:
        return self.budget - self.kept_tokens


def pack_document(doc_id: str, doc_tokens: int, candidates: Iterable[Candidate], seed: int, carry_in: int = 0) -> DocumentPacking:
    """One document's packing (rules 2-5): its budget is its tokens plus `carry_in`; its candidates are sorted by
    key, shuffled with `document_rng(seed, doc_id)` and kept greedily (skip and continue)."""
    if doc_tokens < 0:
        raise ValueError(f"document {doc_id!r} has a negative token count {doc_tokens}")
    if carry_in < 0:
        raise ValueError(f"the carry into document {doc_id!r} is negative ({carry_in})")
    packing = DocumentPacking(doc_id, int(doc_tokens), int(carry_in))
    candidates = sorted(candidates, key=lambda c: c.key)
    if len({c.key for c in candidates}) != len(candidates):
        raise ValueError(f"document {doc_id!r} has candidates with the same key")
    remaining = packing.budget
    if candidates:
        for i in document_rng(seed, doc_id).permutation(len(candidates)):
            c = candidates[int(i)]
            if c.tokens < 0:
                raise ValueError(f"pair {c.key!r} of document {doc_id!r} has a negative token count")
            if c.tokens <= remaining:
                packing.kept.append(c.key)
                packing.kept_tokens += c.tokens
                remaining -= c.tokens
            else:
                packing.skipped.append(c.key)
    return packing


def pack_stream(
    documents: Iterable[tuple[str, int, Sequence[Candidate]]],
    seed: int,
    initial_carry: int = 0,
) -> Iterator[DocumentPacking]:
    """`iter_packing` over documents that arrive with their own candidates, (doc_id, doc_tokens, candidates), one
    at a time: what a stage streaming a shard's rows in document order uses, holding one document's pairs at once.

    Documents are told apart by position, not by id: nothing is kept per document once it is packed."""
    carry = int(initial_carry)
    if carry < 0:
        raise ValueError(f"initial_carry must be >= 0, got {carry}")
    for doc_id, doc_tokens, candidates in documents:
        packing = pack_document(doc_id, doc_tokens, candidates, seed, carry)
        carry = packing.carry_out
        yield packing


def iter_packing(
    documents: Iterable[tuple[str, int]],
    pairs: Mapping[str, Sequence[Candidate]],
    seed: int,
    initial_carry: int = 0,
) -> Iterator[DocumentPacking]:
    """Pack each document's candidates into its budget, in document order, rolling the rest over (rules above).

    `documents` yields (doc_id, doc_tokens); `pairs` maps a doc_id to its candidates (documents absent from it
    have none). Pairs of doc_ids that are not in `documents` are ignored: the caller counts them.
    Raises ValueError on a repeated doc_id, a negative token count or keys repeated within a document.
    """
    seen: set[str] = set()

    def with_candidates():
        for doc_id, doc_tokens in documents:
            if doc_id in seen:
                raise ValueError(f"document {doc_id!r} appears twice")
            seen.add(doc_id)
            yield doc_id, doc_tokens, pairs.get(doc_id, ())

    return pack_stream(with_candidates(), seed, initial_carry)


def pack_pairs(
    documents: Iterable[tuple[str, int]],
    pairs: Mapping[str, Sequence[Candidate]],
    seed: int,
    initial_carry: int = 0,
) -> list[DocumentPacking]:
    """`iter_packing` as a list; the last element's `carry_out` is the rollover left."""
    return list(iter_packing(documents, pairs, seed, initial_carry))


def iter_baseline(doc_tokens: Iterable[int], total: int) -> Iterator[tuple[int, int]]:
    """`baseline_take` lazily, reading token counts only until `total` is reached (a shard's documents streamed);
    yields fewer than `total` tokens, without an error, when the documents run out."""
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    missing = int(total)
    if missing == 0:
        return
    for i, n in enumerate(doc_tokens):
        if n <= 0:
            continue
        take = min(int(n), missing)
        yield i, take
        missing -= take
        if missing == 0:
            return


def baseline_take(doc_tokens: Sequence[int], total: int) -> list[tuple[int, int]]:
    """The baseline arm: [(document index, tokens taken)] in document order, summing to exactly `total`.

    Whole documents while they fit; the first that does not fit is cut to the tokens still missing (its
    `tokens taken` is then less than its own count) and ends the list. Zero-token documents are skipped.
    Raises ValueError when the documents hold fewer than `total` tokens.
    """
    taken = list(iter_baseline(doc_tokens, total))
    have = sum(n for _, n in taken)
    if have < total:
        raise ValueError(f"the documents hold {have} tokens, fewer than the {total} asked for")
    return taken
