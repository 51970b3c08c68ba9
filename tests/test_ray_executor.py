"""The Ray executor on a local Ray instance (2 CPUs): same rows as the local runner, workers that share nothing with
the driver, a killed worker's shard is retried and the output is complete and duplicate-free, a shard that fails
for good merges nothing and a rerun resumes from the run's pull request."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

try:
    import ray
except ImportError:  # pragma: no cover - the dev setup installs ray
    pytest.skip("ray is not installed: pip install 'fineinstructions-pipeline[ray]' to run the Ray executor tests",
                allow_module_level=True)

from hf_pipeline.cli import main
from hf_pipeline.run.executors.ray import RayOptions
from hf_pipeline.run.runner import RunOptions, run_stage

from ray_stages import RAY_UPPER, UpperConfig  # noqa: E402  (tests/ is on sys.path, as for slow_stage)

ROWS = [{"id": i, "text": f"row number {i}"} for i in range(80)]


@pytest.fixture(scope="module")
def ray_local(local_hub):
    """One small local Ray instance for the module: 2 CPUs, no dashboard. The executor joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield
    ray.shutdown()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def rows_repo(local_hub, tmp_path):
    from hf_pipeline.io.hub import push_local_dataset

    repo = f"local/rows-{tmp_path.name[-12:]}"
    push_local_dataset(str(write_jsonl(tmp_path / "in" / "rows.jsonl", ROWS)), repo, tag="v1")
    return f"{repo}@v1"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def load_rows(repo: str, tag: str) -> list[dict]:
    from datasets import load_dataset

    return load_dataset(repo, revision=tag, split="train").to_list()


def refs(repo: str) -> tuple[dict[str, str], dict[str, str]]:
    from huggingface_hub import HfApi

    r = HfApi().list_repo_refs(repo, repo_type="dataset")
    return {t.name: t.target_commit for t in r.tags}, {b.name: b.target_commit for b in r.branches}


def test_ray_gives_exactly_the_local_rows(ray_local, local_hub, capsys, tmp_path):
    """collect_queries (a real stage, whose global dedupe spans shard boundaries) locally and on 3 Ray shards."""
    queries = [{"text": t} for t in [
        "What is the capital of France?", "How do I bake bread?", "what is the capital of france",
        "Tell me   a joke\tabout cats.", "   ", "How do I bake bread?", "Which planet is closest to the sun?",
        "Explain photosynthesis simply.", "x" * 500, "Explain photosynthesis simply.", "Who wrote Hamlet?",
    ]]
    from hf_pipeline.io.hub import push_local_dataset

    src = f"local/rayq-{tmp_path.name[-12:]}"
    push_local_dataset(str(write_jsonl(tmp_path / "q" / "q.jsonl", queries)), src, tag="v1")
    source = json.dumps([{"name": "test", "dataset": f"{src}@v1", "column": "text"}])
    common = ["collect_queries", "--set", f"sources={source}", "--set", "max_chars=100", "--set", "dedupe_partitions=2",
              "--tag", "t", "--chunk-rows", "2"]
    out_local, out_ray = f"local/q-local-{tmp_path.name[-12:]}", f"local/q-ray-{tmp_path.name[-12:]}"
    code, _, err = run_cli(capsys, *common, "--output", out_local)
    assert code == 0, err
    code, out, err = run_cli(capsys, *common, "--output", out_ray, "--executor", "ray", "--num-shards", "3", "--num-workers", "2")
    assert code == 0, err
    assert "[ray] 3 task(s) on 2 worker(s)" in out
    local_rows, ray_rows = load_rows(out_local, "t"), load_rows(out_ray, "t")
    assert len(local_rows) == 6 and ray_rows == local_rows
    from hf_pipeline.io.hub import load_card

    local_meta, ray_meta = load_card(out_local, "t").data.hf_pipeline, load_card(out_ray, "t").data.hf_pipeline
    assert ray_meta["fingerprint"] == local_meta["fingerprint"]  # the executor is not part of what was computed
    assert ray_meta["counts"] == local_meta["counts"] and ray_meta["rows_in"] == local_meta["rows_in"] == 11


def test_ray_workers_share_nothing_with_the_driver_and_publish_the_local_rows(ray_local, rows_repo, tmp_path):
    """Each worker gets a private work dir and private caches that the driver never reads: the rows still reach the
    Hub (the workers commit them to the run's pull request) and equal the local runner's, under the same tag."""
    from hf_pipeline.io.hub import cache_root

    local = run_stage(RAY_UPPER, RunOptions(input=rows_repo, output="local/upper-local", chunk_rows=7), UpperConfig())
    private = tmp_path / "workers"
    options = RunOptions(input=rows_repo, output="local/upper-ray", executor="ray", num_shards=4, chunk_rows=7,
                         batch_size=5, keep_work_dir=True, executor_options=RayOptions(worker_cache_dir=str(private)))
    result = run_stage(RAY_UPPER, options, UpperConfig())
    assert result.tag == local.tag and result.rows_in == 80 and result.rows_out == 80
    assert load_rows("local/upper-ray", result.tag) == load_rows("local/upper-local", local.tag)
    # the shards were mapped in the workers' own dirs (kept here), never in the driver's
    worker_chunks = sorted(p.parent.name for p in private.rglob("chunk-*.arrow"))
    assert sorted(set(worker_chunks)) == [f"shard-{i:05d}-of-00004" for i in range(4)]
    assert not list((cache_root() / "runs").glob("ray_upper-*/shard-*"))
    from huggingface_hub import HfApi

    files = HfApi().list_repo_files("local/upper-ray", repo_type="dataset", revision=result.tag)
    assert sorted(f for f in files if f.startswith("data/")) == [f"data/train-{i:05d}-of-00004.parquet" for i in range(4)]
    assert not [f for f in files if f.startswith(".hf_pipeline")]
    # a rerun of a published run is a no-op, like the local runner's
    assert run_stage(RAY_UPPER, options, UpperConfig()).skipped


def test_killed_worker_shard_is_retried_and_output_complete(ray_local, rows_repo, tmp_path, capfd):
    markers = tmp_path / "markers"
    markers.mkdir()
    config = UpperConfig(kill_on_id=27, marker_dir=str(markers), seconds_per_batch=0.05)
    options = RunOptions(input=rows_repo, output="local/upper-killed", executor="ray", num_shards=4, chunk_rows=5,
                         batch_size=5, work_dir=str(tmp_path / "work"), executor_options=RayOptions(num_workers=2))
    killed: list[int] = []

    def killer():
        deadline = time.time() + 180
        while time.time() < deadline and not (markers / "victim.pid").exists():
            time.sleep(0.05)
        if (markers / "victim.pid").exists():
            pid = int((markers / "victim.pid").read_text())
            (markers / "killed").touch()  # the retry must not wait to be killed again
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_stage(RAY_UPPER, options, config)
    thread.join(timeout=5)
    assert killed, "the worker never reached the row it should be killed on"
    err = capfd.readouterr().err
    assert "shard-00001-of-00004 attempt 1 failed" in err and "died" in err
    rows = load_rows("local/upper-killed", result.tag)
    ids = [r["id"] for r in rows]
    assert ids == list(range(80)), "complete, in order, no duplicates"
    assert rows == [{"id": i, "loud": f"ROW NUMBER {i}"} for i in range(80)]
    assert result.rows_in == 80


def test_failed_shard_publishes_nothing_and_rerun_resumes(ray_local, rows_repo, tmp_path, capsys, monkeypatch):
    import hf_pipeline.stages as stages

    registry = stages.all_stages()
    monkeypatch.setattr(stages, "all_stages", lambda: {**registry, RAY_UPPER.name: RAY_UPPER})
    out_repo = f"local/upper-fail-{tmp_path.name[-12:]}"
    # an earlier good revision, which the failed run must leave as it is
    assert run_cli(capsys, "ray_upper", "--input", rows_repo, "--output", out_repo, "--tag", "good")[0] == 0
    tags_before, branches_before = refs(out_repo)

    flag = tmp_path / "fail-while-this-exists"
    flag.touch()
    argv = ["ray_upper", "--input", rows_repo, "--output", out_repo, "--executor", "ray", "--num-shards", "4",
            "--num-workers", "2", "--max-task-retries", "1", "--chunk-rows", "5", "--work-dir", str(tmp_path / "work"),
            "--set", "fail_on_id=33", "--set", f"fail_flag={flag}"]
    code, out, err = run_cli(capsys, *argv)
    assert code != 0
    assert "shard-00001-of-00004 of stage ray_upper failed after 2 attempt(s): ValueError: bad row 33" in err
    assert "Nothing was merged" in err
    assert refs(out_repo) == (tags_before, branches_before)  # no new tag, main did not move

    # the cause is fixed: the same command resumes, skipping the shards that had finished
    flag.unlink()
    code, out, err = run_cli(capsys, *argv)
    assert code == 0, err
    assert "run resumed" in out and "of 4 shard(s) already in" in out and "(0 of 4" not in out
    tags_after, _ = refs(out_repo)
    new = set(tags_after) - set(tags_before)
    assert len(new) == 1
    assert [r["id"] for r in load_rows(out_repo, new.pop())] == list(range(80))


def test_each_input_file_is_downloaded_once_by_the_shard_that_owns_it(ray_local, local_hub, tmp_path):
    """8 parquet files, 4 shards on Ray workers with private caches: the local Hub's access log shows each file
    transferred whole exactly once in total (the driver reads only footers, by range), not once per worker."""
    import io
    import random

    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import HUB_ROOT
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.hub.local import read_access_log

    src = f"local/eight-{tmp_path.name[-10:]}"
    api = HfApi()
    api.create_repo(src, repo_type="dataset")
    rng, ops, sizes = random.Random(0), [], {}
    for i in range(8):  # ~250 KB each (incompressible text), so a footer read is a small part of a file
        ids = list(range(i * 200, (i + 1) * 200))
        buf = io.BytesIO()
        pq.write_table(pa.table({"id": ids, "text": ["".join(rng.choices("abcdefghij", k=1200)) for _ in ids]}), buf)
        name = f"train-{i:05d}-of-00008.parquet"
        ops.append(CommitOperationAdd(f"data/{name}", buf.getvalue()))
        sizes[name] = len(buf.getvalue())
    api.create_commit(src, ops, commit_message="eight files", repo_type="dataset")
    before = len(read_access_log(HUB_ROOT))
    options = RunOptions(input=src, output=f"local/eight-out-{tmp_path.name[-10:]}", executor="ray", num_shards=4,
                         chunk_rows=70, batch_size=70, executor_options=RayOptions(num_workers=2, worker_cache_dir=str(tmp_path / "workers")))
    result = run_stage(RAY_UPPER, options, UpperConfig())
    assert [r["id"] for r in load_rows(options.output, result.tag)] == list(range(1600))
    whole: dict[str, int] = {}
    served: dict[str, int] = {}
    for entry in read_access_log(HUB_ROOT)[before:]:
        path = entry["path"].split("?")[0]
        if f"/datasets/{src}/resolve/" not in path or entry["method"] != "GET":
            continue
        name = path.rsplit("/", 1)[-1]
        served[name] = served.get(name, 0) + entry["bytes"]
        whole[name] = whole.get(name, 0) + (entry["bytes"] == sizes[name])
    assert whole == {name: 1 for name in sizes}
    # besides its one download, a file was read only for its footer at plan time
    assert all(served[name] < 1.5 * sizes[name] for name in sizes), served
