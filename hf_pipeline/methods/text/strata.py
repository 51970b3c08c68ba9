"""Seeded, order-independent stratified sampling, used to draw the silver distillation data (paper §3.1, §3.3).

The paper's silver sets are "a subset of ~50K queries spanning the selected datasets" and instantiations
"well stratified in length, complexity (number of template variables), and in topic". Both are the same draw:
round-robin over the strata, one row per stratum per round, each stratum in a seeded order. Round-robin *is*
equal-share allocation with the leftover redistributed: a stratum that runs out simply stops taking turns, so
the others fill the sample, and every stratum is represented before any stratum gets a second row.

A row's place in its stratum comes from a hash of (seed, row key), never from a shared random generator or the
input order, so the same rows and seed give the same sample however the input is ordered or sharded.

`round_robin_sample` needs all rows of the strata in one process. Where the rows are too many for that (the query
genericizer's ~50K of ~18M queries) the same allocation is drawn row by row instead: `equal_shares` says how many
rows each stratum should give, given only the strata's sizes, `draw_rates` turns that into a keep probability per
stratum, and `drawn` keeps a row when its seeded hash falls under its stratum's rate. Each worker decides for its
own rows; the sample's size is then `n` in expectation, within `draw_tolerance` (about ±3·√n).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Hashable, Mapping, Sequence


def seeded_key(seed: int, key: str) -> str:
    """A row's seeded position: sha256 of seed and key. Sorting by it is a seeded shuffle that does not depend
    on the input order (a row keeps its position when other rows are added or removed)."""
    return hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).hexdigest()


def round_robin_sample(strata: Sequence[Hashable], keys: Sequence[str], n: int | None, seed: int) -> list[int]:
    """Indices of up to `n` rows (all rows when n is None or ≥ len), drawn one per stratum per round.

    `strata[i]` is row i's stratum, `keys[i]` a key unique to the row (e.g. its id). Strata take turns in a
    seeded order (so no stratum is favoured by its name when the last round is partial); inside a stratum rows
    come in seeded-key order. The result is in draw order, so any prefix of it is itself balanced.
    """
    if len(strata) != len(keys):
        raise ValueError(f"{len(strata)} strata for {len(keys)} keys")
    groups: dict[Hashable, list[int]] = {}
    for i, stratum in enumerate(strata):
        groups.setdefault(stratum, []).append(i)
    queues = [
        sorted(rows, key=lambda i: (seeded_key(seed, keys[i]), i))
        for _, rows in sorted(groups.items(), key=lambda item: seeded_key(seed, repr(item[0])))
    ]
    limit = len(keys) if n is None else min(n, len(keys))
    drawn: list[int] = []
    depth = 0
    while len(drawn) < limit:
        for queue in queues:
            if depth < len(queue):
                drawn.append(queue[depth])
                if len(drawn) == limit:
                    break
        depth += 1
    return drawn


def equal_shares(counts: Mapping[Hashable, int], n: int) -> dict[Hashable, float]:
    """How many rows each stratum should give to a sample of `n` (all rows when n ≥ their total): equal shares, a
    stratum smaller than its share giving all it has and the rest shared among the others (water-filling). Shares
    are fractional: they are expectations of a per-row draw (`draw_rates`), not counts.

    The allocation is round-robin's (`round_robin_sample`) without its last partial round: round-robin gives each
    stratum ⌊share⌋ or ⌈share⌉ rows, this gives every stratum exactly its share in expectation."""
    left = float(min(n, sum(counts.values())))
    shares: dict[Hashable, float] = {}
    ordered = sorted(counts.items(), key=lambda item: (item[1], repr(item[0])))
    for i, (stratum, count) in enumerate(ordered):
        take = min(float(count), left / (len(ordered) - i))
        shares[stratum] = take
        left -= take
    return {s: shares[s] for s in counts}


def draw_rates(counts: Mapping[Hashable, int], n: int) -> dict[Hashable, float]:
    """Per-row keep probability of each stratum so that a per-row draw gives about `n` rows in equal shares:
    share / count (1.0 for a stratum that gives everything, 0.0 for an empty one)."""
    shares = equal_shares(counts, n)
    return {s: (min(1.0, shares[s] / c) if c else 0.0) for s, c in counts.items()}


def drawn(seed: int, key: str, rate: float) -> bool:
    """Whether the row with `key` is in a per-row draw at `rate`: its seeded hash, read as a number in [0, 1), is
    below the rate. Deterministic, independent of the order and of which worker sees the row, and nested (a row
    drawn at a rate is drawn at every higher rate)."""
    if rate >= 1.0:
        return True
    return int(seeded_key(seed, key)[:16], 16) < rate * 2**64


def draw_tolerance(counts: Mapping[Hashable, int], n: int, sigmas: float = 3.0) -> float:
    """± this many rows around `n` holds the size of a per-row draw with `draw_rates(counts, n)` with the given
    confidence (3 sigmas: 99.7%): the size is a sum of independent Bernoulli draws, of variance Σ share·(1 − rate),
    which is at most n."""
    shares, rates = equal_shares(counts, n), draw_rates(counts, n)
    return sigmas * sum(shares[s] * (1.0 - rates[s]) for s in counts) ** 0.5


def quantile_edges(values: Sequence[float], buckets: int) -> list[float]:
    """Upper-exclusive edges splitting `values` into `buckets` groups of about equal size (buckets - 1 edges).

    Repeated values can make edges coincide; then some buckets are empty, which is honest about the data.
    """
    if buckets < 1:
        raise ValueError("buckets must be at least 1")
    ordered = sorted(values)
    if not ordered:
        return []
    return [ordered[min(len(ordered) - 1, (len(ordered) * b) // buckets)] for b in range(1, buckets)]


def bucket_of(value: float, edges: Sequence[float]) -> int:
    """0 for values below the first edge, len(edges) for values at or above the last."""
    return bisect.bisect_right(edges, value)
