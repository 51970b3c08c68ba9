"""FAISS over normalised embeddings: inner product = cosine similarity.

The index is described by a `faiss.index_factory` string: "Flat" (exact, the default, fine up to a few
million templates), "IVF4096,Flat" / "IVF65536,PQ64" (inverted lists, optionally product-quantised, for
the ~18M FineTemplates), "HNSW32,Flat" (graph); `auto_factory` picks Flat, or IVF-PQ when the exact index would not fit a memory
budget. Strings that need training are trained on a seeded sample of the vectors. GPU FAISS is used when the installed faiss has GPU support and sees a GPU; the
index is always written in FAISS's own CPU format, so it loads anywhere with `faiss.read_index`.
Search-time knobs (nprobe for IVF, efSearch for HNSW) are `faiss.ParameterSpace` strings, e.g.
"nprobe=32" or "efSearch=128".
"""

from __future__ import annotations

import logging
from typing import Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def to_gpu(index, use_gpu: bool):
    """(index on all GPUs, True) when asked and possible, else (index, False). Set search parameters
    before moving: the GPU copy keeps them. Index types without a GPU version (HNSW) stay on CPU."""
    import faiss

    if not (use_gpu and gpu_available()):
        return index, False
    try:
        return faiss.index_cpu_to_all_gpus(index), True
    except (RuntimeError, AttributeError) as e:
        logger.warning("FAISS index stays on CPU (%s)", e)
        return index, False


def build_index(
    dim: int,
    factory: str,
    blocks: Callable[[], Iterator[np.ndarray]],
    num_vectors: int,
    train_size: int = 1_000_000,
    seed: int = 0,
    use_gpu: bool = True,
    sample: Callable[[np.ndarray], np.ndarray] | None = None,
):
    """A CPU index of `num_vectors` vectors yielded (in order, float32 (n, dim) blocks) by `blocks()`.

    FAISS ids are the row positions. An index that needs training is trained on `train_size` rows chosen
    with `seed`; `sample(rows)` returns those rows (default: gathered from one pass over `blocks()`).
    """
    import faiss

    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    work, on_gpu = to_gpu(index, use_gpu)
    if not work.is_trained:
        rows = np.sort(np.random.default_rng(seed).permutation(num_vectors)[: min(train_size, num_vectors)])
        train = sample(rows) if sample is not None else _gather(blocks, rows)
        logger.info("training FAISS %r on %d of %d vectors", factory, len(train), num_vectors)
        work.train(np.ascontiguousarray(train, dtype=np.float32))
    for block in blocks():
        work.add(np.ascontiguousarray(block, dtype=np.float32))
    if work.ntotal != num_vectors:
        raise RuntimeError(f"FAISS index holds {work.ntotal} vectors, expected {num_vectors}")
    return faiss.index_gpu_to_cpu(work) if on_gpu else work


def _gather(blocks: Callable[[], Iterator[np.ndarray]], rows: np.ndarray) -> np.ndarray:
    out, start = [], 0
    for block in blocks():
        end = start + len(block)
        lo, hi = np.searchsorted(rows, [start, end])
        if hi > lo:
            out.append(block[rows[lo:hi] - start])
        start = end
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def auto_factory(num_vectors: int, dim: int, max_bytes: float, train_size: int) -> tuple[str, dict]:
    """The index for `num_vectors` vectors of dimension `dim` within `max_bytes` of memory: exact "Flat" when its
    float32 vectors (n x dim x 4 bytes) fit, else inverted lists over product-quantised codes "IVF{nlist},PQ{m}x{nbits}":

    - nlist ~ 4·sqrt(n) lists (the usual rule of thumb), at most the number of training vectors;
    - m sub-quantisers, the largest divisor of dim up to 64 (and dim/2) whose codes (m bytes at 8 bits, plus an
      8-byte id per vector) fit in `max_bytes`;
    - nbits 8 (256 centroids per sub-quantiser), fewer when there are fewer training vectors than that.

    Returns (factory string, details for info.json, including a search_params suggestion: nprobe)."""
    import math

    flat = num_vectors * dim * 4
    details = {"flat_index_bytes": flat, "max_index_bytes": int(max_bytes)}
    if flat <= max_bytes:
        return "Flat", {**details, "reason": "the exact index's float32 vectors fit in max_index_memory_gb"}
    trained_on = max(1, min(train_size, num_vectors))
    nlist = max(1, min(int(round(4 * math.sqrt(num_vectors))), trained_on))
    nbits = max(1, min(8, int(math.log2(trained_on))))
    divisors = [m for m in range(1, min(64, max(1, dim // 2)) + 1) if dim % m == 0]
    fitting = [m for m in divisors if num_vectors * (m * nbits / 8 + 8) <= max_bytes]
    m = max(fitting) if fitting else min(divisors)
    nprobe = min(nlist, 64)
    reason = (f"the exact index would take {flat / 2**30:.3g} GiB (n x dim x 4 bytes), over max_index_memory_gb: "
              f"IVF-PQ, {nlist} lists (~4·sqrt(n)), {m} sub-quantisers of {nbits} bits")
    if not fitting:
        reason += " (even the smallest codes exceed max_index_memory_gb)"
    return f"IVF{nlist},PQ{m}x{nbits}", {**details, "reason": reason, "nlist": nlist, "pq_m": m, "pq_nbits": nbits,
                                          "search_params": f"nprobe={nprobe}"}


def set_search_params(index, params: str) -> None:
    """Apply "name=value,name=value" search parameters (nprobe, efSearch, ...) to a CPU index."""
    if params:
        import faiss

        faiss.ParameterSpace().set_index_parameters(index, params)
