"""Seeded, order-independent stratified sampling, used to draw the silver distillation data (paper §3.1, §3.3).

The paper's silver sets are "a subset of ~50K queries spanning the selected datasets" and instantiations
"well stratified in length, complexity (number of template variables), and in topic". Both are the same draw:
round-robin over the strata, one row per stratum per round, each stratum in a seeded order. Round-robin *is*
equal-share allocation with the leftover redistributed: a stratum that runs out simply stops taking turns, so
the others fill the sample, and every stratum is represented before any stratum gets a second row.

A row's place in its stratum comes from a hash of (seed, row key), never from a shared random generator or the
input order, so the same rows and seed give the same sample however the input is ordered or sharded.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Hashable, Sequence


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
