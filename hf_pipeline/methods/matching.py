"""Retrieval logic of §3.2 with no I/O: complexity sampling weights, candidate selection, seeded sampling.

Paper: "we consider a template to be a match candidate for a given document if the cosine similarity
between their embeddings is above a manually selected threshold (0.865). Among possible matches, we
perform a weighted random sample to encourage diversity in the templates [...] we compute sampling
weights to match the distribution of the complexity of templates derived from real-world LLM queries in
the WildChat, LMSys*, OAsst1, and ShareLM datasets."

Complexity weights
    A template's complexity is its number of `<fi>` variables n, bucketed as min(n, cap) so that the
    sparse tail ("10+ tags") shares one weight. For each bucket b:
        target(b) = share of b among templates whose `source` is a real-chat source
        pool(b)   = share of b among all indexed templates
        weight(b) = target(b) / pool(b)          (0 when no real-chat template has b)
    Sampling candidates in proportion to weight(b) makes the sampled complexities follow the target
    distribution when candidates are drawn like the pool. When none of the real-chat sources is in the
    pool the target falls back to the pool itself: every weight is 1 (uniform sampling).

Candidates
    Each document has K+1 vectors (global + K Gaussian chunks); each was searched in the index. A
    template found by several of them counts once, with its best score and the index of the vector
    that gave it (0 = global, 1..K = chunk; ties go to the lower index). Candidates have score >= threshold.

Seeded sampling (Efraimidis & Spirakis 2006, weighted sampling without replacement)
    Each candidate gets a uniform u in (0, 1) from a hash of (seed, doc_id, template_id) and the key
    log(u) / weight; the `n` largest keys are the sample. The draw for a pair depends on nothing but
    the pair and the seed: not on batch or chunk boundaries, the order FAISS returns candidates in, or
    the other candidates, so a resumed or re-sharded run gives the same pairs.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

# Real-chat sources of the paper's target complexity distribution, by collect_queries source name.
# "LMSys*" is read as both LMSys datasets: LMSys-Chat-1M and Chatbot Arena conversations.
REAL_CHAT_SOURCES = ["wildchat", "lmsys_chat", "chatbot_arena", "oasst1", "sharelm"]


# ---------------------------------------------------------------- complexity weights


def complexity_bucket(num_variables: int, cap: int) -> int:
    return min(int(num_variables), cap)


def complexity_distribution(num_variables: Iterable[int], cap: int) -> dict[int, float]:
    """Share of each complexity bucket min(n, cap), sorted by bucket."""
    counts = Counter(complexity_bucket(n, cap) for n in num_variables)
    total = sum(counts.values())
    return {b: counts[b] / total for b in sorted(counts)} if total else {}


@dataclass
class ComplexityWeights:
    """Sampling weight per complexity bucket, with the distributions it came from (published as JSON)."""

    weights: dict[int, float]  # bucket -> target share / pool share
    target_distribution: dict[int, float]
    pool_distribution: dict[int, float]
    cap: int
    target_sources: list[str]
    target_sources_found: dict[str, int] = field(default_factory=dict)  # source -> templates in the pool
    target_templates: int = 0
    pool_templates: int = 0
    fallback: bool = False  # True: no real-chat source in the pool, target = pool, all weights 1

    def weight_of(self, num_variables: int) -> float:
        return self.weights.get(complexity_bucket(num_variables, self.cap), 0.0)

    def weights_for(self, num_variables: np.ndarray) -> np.ndarray:
        """Vectorised `weight_of` (e.g. one weight per FAISS id)."""
        table = np.zeros(self.cap + 1, dtype=np.float64)
        for b, w in self.weights.items():
            table[b] = w
        return table[np.clip(np.asarray(num_variables, dtype=np.int64), 0, self.cap)]

    def to_json(self) -> str:
        d = asdict(self)
        for key in ("weights", "target_distribution", "pool_distribution"):
            d[key] = {str(b): v for b, v in d[key].items()}
        d["note"] = (
            f"weights[n] = target_distribution[n] / pool_distribution[n] for n = number of <fi> variables, "
            f"templates with n >= {self.cap} under key '{self.cap}'"
        )
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ComplexityWeights":
        d = json.loads(text)
        d.pop("note", None)
        for key in ("weights", "target_distribution", "pool_distribution"):
            d[key] = {int(b): float(v) for b, v in d[key].items()}
        return cls(**d)


def source_complexity_counts(num_variables: Iterable[int], sources: Iterable[str], cap: int) -> dict[str, dict[str, int]]:
    """{source: {bucket min(n, cap) as a string: templates}}: additive across shards (see `weights_from_counts`)."""
    counts: dict[str, Counter] = {}
    for n, s in zip(num_variables, sources):
        counts.setdefault(str(s), Counter())[str(complexity_bucket(n, cap))] += 1
    return {s: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for s, c in sorted(counts.items())}


def weights_from_counts(
    counts: Mapping[str, Mapping], target_sources: Sequence[str] = REAL_CHAT_SOURCES, cap: int = 10
) -> ComplexityWeights:
    """The weights from template counts per source and bucket (`source_complexity_counts`, summed over shards)."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    wanted = set(target_sources)
    pool: Counter = Counter()
    target: Counter = Counter()
    found: Counter = Counter()
    for source, by_bucket in counts.items():
        for bucket, n in by_bucket.items():
            b = complexity_bucket(int(bucket), cap)
            pool[b] += int(n)
            if source in wanted:
                target[b] += int(n)
                found[source] += int(n)
    pool_total, target_total = sum(pool.values()), sum(target.values())
    pool_dist = {b: pool[b] / pool_total for b in sorted(pool) if pool[b]} if pool_total else {}
    fallback = not target_total
    target_dist = pool_dist if fallback else {b: target[b] / target_total for b in sorted(target) if target[b]}
    weights = {b: (target_dist.get(b, 0.0) / share) for b, share in pool_dist.items()}
    return ComplexityWeights(
        weights=weights,
        target_distribution=dict(target_dist),
        pool_distribution=pool_dist,
        cap=cap,
        target_sources=list(target_sources),
        target_sources_found={s: n for s, n in sorted(found.items()) if n},
        target_templates=target_total,
        pool_templates=pool_total,
        fallback=fallback,
    )


def complexity_weights(
    num_variables: Sequence[int], sources: Sequence[str], target_sources: Sequence[str] = REAL_CHAT_SOURCES, cap: int = 10
) -> ComplexityWeights:
    """Weights that make sampled template complexity follow that of the `target_sources` templates."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    return weights_from_counts(source_complexity_counts(num_variables, sources, cap), target_sources, cap)


# ---------------------------------------------------------------- hashing for seeded draws

_M1, _M2, _GOLDEN = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), np.uint64(0x9E3779B97F4A7C15)


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def document_seed(seed: int, doc_id: str) -> np.uint64:
    """A 64-bit seed for one document, from the run's seed and the document's id."""
    return np.uint64(_hash64(f"{seed}\x1f{doc_id}"))


def template_keys(template_ids: Iterable[str]) -> np.ndarray:
    """A 64-bit hash per template id (computed once per index, looked up by FAISS id)."""
    return np.fromiter((_hash64(t) for t in template_ids), dtype=np.uint64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def pair_uniforms(doc_seed: np.uint64, keys: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), one per (document, template) pair; a pure function of the two hashes."""
    mixed = _splitmix64(np.asarray(keys, dtype=np.uint64) ^ np.uint64(doc_seed))
    return ((mixed >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


# ---------------------------------------------------------------- candidates and sampling


@dataclass
class Candidates:
    """One document's distinct candidate templates (FAISS ids), best score and the vector that gave it."""

    ids: np.ndarray  # int64
    scores: np.ndarray  # float32
    chunks: np.ndarray  # int64, 0 = global vector, 1..K = chunk vectors

    def __len__(self) -> int:
        return len(self.ids)


def best_candidates(scores: np.ndarray, ids: np.ndarray, threshold: float) -> Candidates:
    """(V, k) FAISS scores and ids for one document's V = K+1 vectors -> distinct candidates >= threshold.

    A template retrieved by several vectors counts once: its best score, and the lowest vector index
    among those that reach that score. Sorted by FAISS id.
    """
    V, k = scores.shape
    chunk = np.repeat(np.arange(V, dtype=np.int64), k)
    s, i = scores.reshape(-1), ids.reshape(-1).astype(np.int64)
    keep = (i >= 0) & (s >= threshold)
    s, i, chunk = s[keep], i[keep], chunk[keep]
    if not len(i):
        return Candidates(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
    order = np.lexsort((chunk, -s, i))  # by id, then best score first, then lowest chunk
    s, i, chunk = s[order], i[order], chunk[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = i[1:] != i[:-1]
    return Candidates(i[first], s[first].astype(np.float32), chunk[first])


def weighted_sample(weights: np.ndarray, uniforms: np.ndarray, n: int) -> np.ndarray:
    """Indices of up to `n` items drawn without replacement with probability proportional to `weights`.

    Efraimidis-Spirakis: key = log(u) / w, take the `n` largest keys (in decreasing key order, which is
    the order a sequential weighted draw would pick them in). Items of weight 0 are never drawn.
    """
    weights = np.asarray(weights, dtype=np.float64)
    eligible = np.flatnonzero(weights > 0)
    if not len(eligible) or n <= 0:
        return np.zeros(0, dtype=np.int64)
    keys = np.log(uniforms[eligible]) / weights[eligible]
    top = eligible[np.argsort(-keys, kind="stable")[:n]]
    return top.astype(np.int64)


@dataclass
class DocumentMatch:
    status: str  # "ok", "no_candidates" or "zero_weight_candidates"
    ids: np.ndarray  # FAISS ids of the sampled templates, in draw order
    scores: np.ndarray
    chunks: np.ndarray
    num_candidates: int


def match_document(
    scores: np.ndarray,
    ids: np.ndarray,
    threshold: float,
    n: int,
    weight_by_id: np.ndarray,
    key_by_id: np.ndarray,
    doc_seed: np.uint64,
) -> DocumentMatch:
    """One document: candidates over its K+1 searched vectors, then a seeded weighted draw of up to `n`."""
    cands = best_candidates(scores, ids, threshold)
    if not len(cands):
        return DocumentMatch("no_candidates", cands.ids, cands.scores, cands.chunks, 0)
    picked = weighted_sample(weight_by_id[cands.ids], pair_uniforms(doc_seed, key_by_id[cands.ids]), n)
    status = "ok" if len(picked) else "zero_weight_candidates"
    return DocumentMatch(status, cands.ids[picked], cands.scores[picked], cands.chunks[picked], len(cands))


# ---------------------------------------------------------------- the chance baseline of a threshold


def pair_scores(doc_vectors: np.ndarray, template_vectors: np.ndarray) -> np.ndarray:
    """(documents, templates) scores of every pairing of documents' vectors (B, V, d) with templates' (T, d), each as a
    candidate is scored: the best cosine of any of the document's V vectors with the template."""
    return np.einsum("bvd,td->btv", doc_vectors, template_vectors).max(axis=2)


@dataclass(frozen=True)
class ChanceBaseline:
    """Where random document–template pairs score, and the threshold that chance alone would need.

    `median` and `spread` locate the random pairs' cosines (spread: 1.4826·MAD, a standard deviation that the few
    truly related pairs of a small template set cannot inflate). `cosine` is the threshold at which a share `share`
    of documents would have a candidate if the index's `templates` templates were unrelated to them: a document's
    candidates then come by chance, each template passing t as a random pair does (P = 1 - F(t)), so
    P(at least one) = 1 - F(t)^N = share, t = F^-1((1 - share)^(1/N)), with F the normal of that median and spread
    (a fit, since N of millions asks for a tail, 1 - 4e-8 at 18M templates, that no sample of pairs reaches)."""

    pairs: int
    median: float
    spread: float
    templates: int
    share: float
    cosine: float

    def margin_in_spreads(self, threshold: float) -> float:
        """How far `threshold` clears the baseline, in spreads of the random pairs (scale-free: MiniLM's cosines and
        BGE-M3's sit on different scales; their random pairs' spreads come with them)."""
        return (threshold - self.cosine) / self.spread


def chance_baseline(random_scores: np.ndarray, templates: int, share: float) -> ChanceBaseline:
    """The ChanceBaseline of random pairs' scores (any shape), for an index of `templates` templates and the share of
    documents the threshold gives a candidate."""
    from statistics import NormalDist

    scores = np.asarray(random_scores, dtype=np.float64).reshape(-1)
    median = float(np.median(scores))
    # a floor keeps the margin finite for a degenerate sample (one pair, or pairs that all score alike)
    spread = max(float(1.4826 * np.median(np.abs(scores - median))), 1e-4)
    quantile = min(max((1.0 - share) ** (1.0 / max(templates, 1)), 1e-12), 1.0 - 1e-12)  # inv_cdf takes (0, 1)
    cosine = median + spread * NormalDist().inv_cdf(quantile)
    return ChanceBaseline(len(scores), round(median, 4), round(spread, 4), templates, share, round(cosine, 4))
