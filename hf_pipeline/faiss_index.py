"""FAISS over normalised embeddings: inner product = cosine similarity.

The index is described by a `faiss.index_factory` string: "Flat" (exact, the default, fine up to a few
million templates), "IVF4096,Flat" / "IVF65536,PQ64" (inverted lists, optionally product-quantised, for
the ~18M FineTemplates), "HNSW32,Flat" (graph). Strings that need training are trained on a seeded
sample of the vectors. GPU FAISS is used when the installed faiss has GPU support and sees a GPU; the
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


def set_search_params(index, params: str) -> None:
    """Apply "name=value,name=value" search parameters (nprobe, efSearch, ...) to a CPU index."""
    if params:
        import faiss

        faiss.ParameterSpace().set_index_parameters(index, params)
