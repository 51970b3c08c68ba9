"""The run contract at scale, on the local Hub: a run whose machine is lost resumes from the Hub alone, recomputing
only the shards that were not in; until a run is sealed, `main` and the tags do not move for any other client;
one shard per machine (`--shard-index`) plus a sealing run; an empty input publishes a carded empty revision."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "tests" / "slow_stage.py")
ROWS = [{"id": i, "text": f"row number {i}"} for i in range(80)]


def publish_rows(repo: str, tmp_path: Path, rows: list[dict] = ROWS) -> str:
    from hf_pipeline.io.hub import push_local_dataset

    path = tmp_path / "in" / "rows.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    push_local_dataset(str(path), repo, tag="v1")
    return f"{repo}@v1"


def machine_env(home: Path) -> dict[str, str]:
    """A fresh machine: its own Hub cache, datasets cache and work dirs; the same Hub."""
    return dict(os.environ, PYTHONPATH=str(ROOT), HF_HOME=str(home / "hf_home"), HF_DATASETS_CACHE=str(home / "datasets"),
                HF_PIPELINE_CACHE=str(home / "hf_pipeline"))


def run_pr(repo: str):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        prs = list(HfApi().get_repo_discussions(repo, repo_type="dataset", discussion_type="pull_request"))
    except RepositoryNotFoundError:  # not created yet
        return None
    return prs[0] if prs else None


def shard_commits(repo: str, num: int) -> list[str]:
    from huggingface_hub import HfApi

    commits = HfApi().list_repo_commits(repo, repo_type="dataset", revision=f"refs/pr/{num}")
    return [c.title for c in commits if "hf_pipeline shard record" in (c.message or "")]


def refs(repo: str) -> tuple[dict[str, str], dict[str, str]]:
    from huggingface_hub import HfApi

    r = HfApi().list_repo_refs(repo, repo_type="dataset")
    return {t.name: t.target_commit for t in r.tags}, {b.name: b.target_commit for b in r.branches}


def test_losing_the_machine_resumes_from_the_hub_with_only_the_missing_shards(local_hub, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import HfApi

    source = publish_rows(f"local/lost-in-{tmp_path.name[-10:]}", tmp_path)
    reference, lost = f"local/lost-ref-{tmp_path.name[-10:]}", f"local/lost-{tmp_path.name[-10:]}"
    subprocess.run([sys.executable, SCRIPT, source, reference, str(tmp_path / "ref-work"), "4"],
                   env=machine_env(tmp_path / "ref-machine"), check=True, capture_output=True)

    # machine 1 starts the run and is lost (SIGKILL) once half of the shards are on the Hub
    machine1 = tmp_path / "machine1"
    proc = subprocess.Popen([sys.executable, SCRIPT, source, lost, str(machine1 / "work"), "4"], env=machine_env(machine1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, pr = time.time() + 180, None
    while time.time() < deadline:
        pr = pr or run_pr(lost)
        if pr is not None and len(shard_commits(lost, pr.num)) >= 2:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = len(shard_commits(lost, pr.num))
    assert 2 <= finished_before < 4, "the machine should be lost between shards"

    # while the run is unfinished, another client sees main and the tags as they were: no tag, main = the repo's
    # first commit; the run's files are only in its pull request
    tags, branches = refs(lost)
    assert tags == {} and list(branches) == ["main"]
    assert [c.title for c in HfApi().list_repo_commits(lost, repo_type="dataset")] == ["initial commit"]
    assert not [f for f in HfApi().list_repo_files(lost, repo_type="dataset") if f.startswith("data/")]
    assert HfApi().get_discussion_details(lost, pr.num, repo_type="dataset").status == "open"  # opened by its first commit

    # machine 1's disk is gone; machine 2 runs the same command with nothing local
    shutil.rmtree(machine1)
    machine2 = tmp_path / "machine2"
    rerun = subprocess.run([sys.executable, SCRIPT, source, lost, str(machine2 / "work"), "4"], env=machine_env(machine2),
                           check=True, capture_output=True, text=True)
    assert "run resumed: " in rerun.stdout and f"({finished_before} of 4 shard(s) already in)" in rerun.stdout
    # only the missing shards were computed: every shard was committed exactly once, and machine 2 mapped only those
    titles = shard_commits(lost, pr.num)
    assert len(titles) == 4 and len({t.split(" in (")[0] for t in titles}) == 4
    mapped = {p.parent.name for p in (machine2 / "work").rglob("chunk-*.arrow")}
    assert len(mapped) == 4 - finished_before

    (tag_name,) = refs(lost)[0]
    ref_tag = next(iter(refs(reference)[0]))
    assert tag_name == ref_tag  # same inputs, same config: the same fingerprint and tag
    resumed = load_dataset(lost, revision=tag_name, split="train").to_list()
    assert resumed == load_dataset(reference, revision=ref_tag, split="train").to_list()
    assert [r["id"] for r in resumed] == list(range(80))
    assert HfApi().get_discussion_details(lost, pr.num, repo_type="dataset").status == "merged"


def test_one_shard_per_machine_then_a_sealing_run(local_hub, tmp_path, capsys):
    """A job array: each element runs `--shard-index i` on its own machine; the same command without it seals."""
    from datasets import load_dataset

    from hf_pipeline.run.runner import RunOptions, run_stage
    from slow_stage import SLOW, SlowConfig

    source = publish_rows(f"local/array-in-{tmp_path.name[-10:]}", tmp_path, ROWS[:30])
    out = f"local/array-{tmp_path.name[-10:]}"
    config = SlowConfig(seconds_per_batch=0.0)
    for i in (2, 0, 1):
        partial = run_stage(SLOW, RunOptions(input=source, output=out, num_shards=3, shard_index=i, chunk_rows=4), config)
        assert partial.commit == "" and partial.pull_request
        assert refs(out)[0] == {}  # nothing sealed yet
    result = run_stage(SLOW, RunOptions(input=source, output=out, num_shards=3, chunk_rows=4), config)
    assert "(3 of 3 shard(s) already in)" in capsys.readouterr().out
    assert [r["id"] for r in load_dataset(out, revision=result.tag, split="train")] == list(range(30))


def test_empty_input_publishes_a_carded_empty_revision(local_hub, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.io.hub import load_card, load_dataset_ref, resolve_dataset
    from hf_pipeline.run.runner import RunOptions, run_stage
    from slow_stage import SLOW, SlowConfig

    src = f"local/empty-in-{tmp_path.name[-10:]}"
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), path)
    api = HfApi()
    api.create_repo(src, repo_type="dataset")
    api.create_commit(src, [CommitOperationAdd("data/train-00000-of-00001.parquet", str(path))], commit_message="empty",
                      repo_type="dataset")
    out = f"local/empty-{tmp_path.name[-10:]}"
    result = run_stage(SLOW, RunOptions(input=src, output=out, num_shards=2), SlowConfig())
    assert result.rows_in == 0 and result.rows_out == 0
    # `datasets` refuses a zero-row split ("corresponds to no data"); the pipeline's own loader reads it, with its schema
    ds = load_dataset_ref(resolve_dataset(f"{out}@{result.tag}"))
    assert len(ds) == 0 and ds.column_names == ["id", "loud"]
    assert load_card(out, result.tag).data.hf_pipeline["rows_out"] == 0
