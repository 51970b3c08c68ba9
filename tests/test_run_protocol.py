"""The run protocol under faults and concurrency, one test per hole found in it (issue "A run survives faults,
concurrency and a hostile Hub"). Each test names its hole and reproduces it against the real local Hub: a driver
that dies between two Hub calls (a BaseException raised where the call would be), another client pushing to the
repo meanwhile, a second driver. Faults of the transport itself (429/5xx/dropped connections) are in test_faults.py.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_scale import ROWS, machine_env, publish_rows, refs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "tests" / "slow_stage.py")


class DriverDied(BaseException):
    """The driver process dying at this point (no `except Exception` catches it)."""


def hub_error(status: int, url: str = "http://hub/api"):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    return HfHubHTTPError(f"{status} from the Hub", response=httpx2.Response(status, request=httpx2.Request("POST", url)))


def pull_requests(repo: str) -> list:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        return sorted(HfApi().get_repo_discussions(repo, repo_type="dataset", discussion_type="pull_request"),
                      key=lambda d: d.num)
    except RepositoryNotFoundError:  # not created yet
        return []


def record_commits(repo: str, num: int) -> list[str]:
    from huggingface_hub import HfApi

    commits = HfApi().list_repo_commits(repo, repo_type="dataset", revision=f"refs/pr/{num}")
    return [c.title for c in commits if "hf_pipeline shard record" in (c.message or "")]


def rows_of(repo: str, revision: str) -> list[dict]:
    from datasets import load_dataset

    return load_dataset(repo, revision=revision, split="train").to_list()


def data_files(repo: str, revision: str) -> list[str]:
    from huggingface_hub import HfApi

    return sorted(f for f in HfApi().list_repo_files(repo, repo_type="dataset", revision=revision) if f.startswith("data/"))


def expected_rows(rows: list[dict] = ROWS) -> list[dict]:
    return [{"id": r["id"], "loud": r["text"].upper()} for r in rows]


def options(source: str, out: str, **more):
    from hf_pipeline.run.runner import RunOptions

    return RunOptions(input=source, output=out, chunk_rows=10, batch_size=5, **more)


def fast():
    from slow_stage import SlowConfig

    return SlowConfig(seconds_per_batch=0.0)


def names(tmp_path: Path, *kinds: str) -> list[str]:
    return [f"local/{kind}-{tmp_path.name[-12:]}" for kind in kinds]


# ---------------------------------------------------------------- hole 1


def test_hole1_a_seal_that_dies_between_merge_and_tag_is_finished_by_the_rerun(local_hub, tmp_path, monkeypatch, capsys):
    """The tag failed after the merge: the rerun recognises the run's merged PR and tags its merge commit, without a
    new PR and without mapping a shard again."""
    from huggingface_hub import HfApi

    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h1-in", "h1")
    source = publish_rows(src, tmp_path)

    def dies(self, *args, **kwargs):
        raise DriverDied

    with monkeypatch.context() as patch:
        patch.setattr(HfApi, "create_tag", dies)
        with pytest.raises(DriverDied):
            run_stage(SLOW, options(source, out, num_shards=2), fast())
    (pr,) = pull_requests(out)
    assert pr.status == "merged" and refs(out)[0] == {}
    capsys.readouterr()

    result = run_stage(SLOW, options(source, out, num_shards=2), fast())
    assert "merged as" in capsys.readouterr().out
    assert [p.num for p in pull_requests(out)] == [pr.num]  # no second run
    assert len(record_commits(out, pr.num)) == 2  # no shard mapped again
    merge = HfApi().get_discussion_details(out, pr.num, repo_type="dataset").merge_commit_oid
    assert refs(out)[0] == {result.tag: merge} and result.commit == merge
    assert rows_of(out, result.tag) == expected_rows()


def test_hole1_a_tag_whose_answer_was_lost_is_retried_and_found_in_place(local_hub, tmp_path, monkeypatch):
    """create_tag is retried; a retry that finds the tag already at the merge commit (the first attempt went through
    but its answer was lost) counts as success."""
    from huggingface_hub import HfApi

    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h1b-in", "h1b")
    source = publish_rows(src, tmp_path, ROWS[:10])
    real, calls = HfApi.create_tag, []

    def applied_then_lost(self, *args, **kwargs):
        calls.append(kwargs.get("tag"))
        if len(calls) == 1:
            real(self, *args, **kwargs)
            raise hub_error(503)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(HfApi, "create_tag", applied_then_lost)
    result = run_stage(SLOW, options(source, out), fast())
    assert len(calls) == 2 and refs(out)[0] == {result.tag: result.commit}


# ---------------------------------------------------------------- hole 2


def test_hole2_a_driver_dying_right_after_opening_the_run_never_merges_an_older_runs_files(local_hub, tmp_path, monkeypatch):
    """The old data/ is cleared in the commit that opens the run: a driver that dies just after the PR exists leaves
    no PR in which an older run's files would survive (they did when clearing was a second commit)."""
    from huggingface_hub import HfApi

    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW, SlowConfig

    src, out = names(tmp_path, "h2-in", "h2")
    source = publish_rows(src, tmp_path)
    run_stage(SLOW, options(source, out, num_shards=3), fast())  # an older run: 3 files in data/
    real_commit = HfApi.create_commit

    def dies_once_a_pr_is_open(self, repo_id, operations, **kwargs):
        if repo_id == out and not kwargs.get("create_pr") and any(p.status in ("open", "draft") for p in pull_requests(out)):
            raise DriverDied
        return real_commit(self, repo_id, operations, **kwargs)

    new_config = SlowConfig(seconds_per_batch=0.001)  # another config: another run of 2 shards
    with monkeypatch.context() as patch:
        patch.setattr(HfApi, "create_commit", dies_once_a_pr_is_open)
        with pytest.raises(DriverDied):
            run_stage(SLOW, options(source, out, num_shards=2), new_config)
    result = run_stage(SLOW, options(source, out, num_shards=2), new_config)
    assert data_files(out, result.tag) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert rows_of(out, result.tag) == expected_rows()


def test_hole2_the_seal_merges_only_files_the_records_name_with_their_content(local_hub, tmp_path):
    """At the seal the PR's data/ must be the files the records name, with their recorded content: a shard whose file
    was replaced (another attempt's) is redone, a file no record names is deleted; neither reaches main."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h2b-in", "h2b")
    source = publish_rows(src, tmp_path)
    for i in (0, 1):
        run_stage(SLOW, options(source, out, num_shards=2, shard_index=i), fast())
    (pr,) = pull_requests(out)
    forged = tmp_path / "forged.parquet"
    pq.write_table(pa.table({"id": [999], "loud": ["NOT THE RUN'S"]}), forged)
    HfApi().create_commit(out, [CommitOperationAdd("data/train-00000-of-00002.parquet", str(forged)),
                                CommitOperationAdd("data/train-00007-of-00009.parquet", str(forged))],
                          commit_message="a stale attempt", repo_type="dataset", revision=f"refs/pr/{pr.num}")
    result = run_stage(SLOW, options(source, out, num_shards=2), fast())
    assert data_files(out, result.tag) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert rows_of(out, result.tag) == expected_rows()


# ---------------------------------------------------------------- hole 3


def test_hole3_shard_jobs_and_the_seal_read_the_manifest_instead_of_planning(local_hub, tmp_path, monkeypatch):
    """A branch input that moves between queued shard jobs: every job and the seal use the manifest's pinned sha and
    resolved config; the config is resolved once; all shards land in one PR."""
    from hf_pipeline.io.hub import load_card
    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    resolved = []

    def resolve(config, plan):
        resolved.append(plan.inputs)
        return dataclasses.replace(config, seconds_per_batch=0.0)

    stage = dataclasses.replace(SLOW, inputs=dataclasses.replace(SLOW.inputs, resolve_config=resolve))
    src, out = names(tmp_path, "h3-in", "h3")
    first = publish_rows(src, tmp_path, ROWS[:40]).split("@")[0]  # the job array reads the branch `main`
    from huggingface_hub import HfApi

    pinned = HfApi().dataset_info(first, revision="main").sha
    run_stage(stage, options(first, out, num_shards=2, shard_index=0), fast())
    from hf_pipeline.io.hub import push_local_dataset

    later = tmp_path / "later" / "rows.jsonl"
    later.parent.mkdir()
    later.write_text("".join(json.dumps(r) + "\n" for r in ROWS[40:]))
    push_local_dataset(str(later), first, tag="v2")  # the input's main moves while shard 1 waits in the queue
    assert HfApi().dataset_info(first, revision="main").sha != pinned
    run_stage(stage, options(first, out, num_shards=2, shard_index=1), fast())
    result = run_stage(stage, options(first, out, num_shards=2), fast())
    assert len(resolved) == 1 and len(pull_requests(out)) == 1
    assert rows_of(out, result.tag) == expected_rows(ROWS[:40])
    assert load_card(out, result.tag).data.hf_pipeline["inputs"][0]["sha"] == pinned


# ---------------------------------------------------------------- hole 4


def test_hole4_main_moved_during_the_run_the_run_moves_onto_it(local_hub, tmp_path, capsys):
    """Someone edited the card and another run's file landed on main while the run's shards were out: the run's files
    are copied onto main's head and merged; main then holds exactly the run's files and card."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h4-in", "h4")
    source = publish_rows(src, tmp_path)
    for i in (0, 1):
        run_stage(SLOW, options(source, out, num_shards=2, shard_index=i), fast())
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"id": [1], "loud": ["another run"]}), other)
    HfApi().create_commit(out, [CommitOperationAdd("README.md", b"---\nlicense: mit\n---\nEdited by hand.\n"),
                                CommitOperationAdd("data/train-00000-of-00005.parquet", str(other))],
                          commit_message="meanwhile on main", repo_type="dataset")
    capsys.readouterr()
    result = run_stage(SLOW, options(source, out, num_shards=2), fast())
    assert "main of" in capsys.readouterr().out
    assert data_files(out, result.tag) == ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet"]
    assert rows_of(out, result.tag) == expected_rows()
    assert load_card(out, result.tag).data.hf_pipeline["stage"] == "slow_upper"
    first, second = pull_requests(out)
    assert (first.status, second.status) == ("closed", "merged")


# ---------------------------------------------------------------- hole 6


@dataclasses.dataclass
class ModelConfig:
    model: str = ""
    model_revision: str | None = None


def _model_revision(batch, ctx):
    return {"id": batch["id"], "model_revision": [ctx.config.model_revision] * len(batch["id"])}


def test_hole6_every_shard_loads_the_model_sha_pinned_at_plan_time(local_hub, tmp_path):
    """A model named without a revision is pinned to main's sha when the run is planned: a shard job queued after
    the model's main moved still loads the pinned commit, and the card names it."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.run.runner import run_stage
    from hf_pipeline.stage import Card, Inputs, Map, Stage

    stage = Stage(
        name="model_probe",
        description="which model revision each shard was given",
        config_class=ModelConfig,
        output_columns={"id": "int64", "model_revision": "string"},
        inputs=Inputs(
            columns=("id",),
            models=lambda config: {"model": f"{config.model}@{config.model_revision}"},
        ),
        map=Map(batch=_model_revision),
        card=Card(template=str(ROOT / "tests" / "cards" / "slow_upper.md")),
    )
    src, out, model = names(tmp_path, "h6-in", "h6", "h6-model")
    source = publish_rows(src, tmp_path)
    api = HfApi()
    api.create_repo(model)
    first = api.create_commit(model, [CommitOperationAdd("config.json", b'{"v": 1}')], commit_message="v1").oid
    config = ModelConfig(model=model)
    run_stage(stage, options(source, out, num_shards=2, shard_index=0), config)
    api.create_commit(model, [CommitOperationAdd("config.json", b'{"v": 2}')], commit_message="v2")
    result = run_stage(stage, options(source, out, num_shards=2), config)
    assert {r["model_revision"] for r in rows_of(out, result.tag)} == {first}
    meta = load_card(out, result.tag).data.hf_pipeline
    assert meta["config"]["model_revision"] == first and meta["models"]["model"] == f"{model}@{first}"


def test_hole6_a_run_opened_by_another_package_version_is_not_resumed_silently(local_hub, tmp_path, monkeypatch):
    import hf_pipeline
    from hf_pipeline.errors import PipelineError
    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h6b-in", "h6b")
    source = publish_rows(src, tmp_path, ROWS[:20])
    with monkeypatch.context() as patch:
        patch.setattr(hf_pipeline, "__version__", "0.0.1")
        run_stage(SLOW, options(source, out, num_shards=2, shard_index=0), fast())
    with pytest.raises(PipelineError, match="opened by hf_pipeline 0.0.1.*--allow-version-change"):
        run_stage(SLOW, options(source, out, num_shards=2), fast())
    result = run_stage(SLOW, options(source, out, num_shards=2, allow_version_change=True), fast())
    assert rows_of(out, result.tag) == expected_rows(ROWS[:20])


# ---------------------------------------------------------------- hole 7


def test_hole7_a_pr_with_the_runs_title_opened_by_someone_else_is_never_adopted(local_hub, local_hub_root, tmp_path):
    """On a public repo anyone can open a PR titled like the run, commit forged data and a forged record to it: the
    driver adopts only PRs its own account opened and reads records only from its own commits, so the forgery is
    neither merged nor counted."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.hub.local import add_user
    from hf_pipeline.run.hub_run import RECORD_MARK, run_title
    from hf_pipeline.run.runner import command_key, plan_run, run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h7-in", "h7")
    source = publish_rows(src, tmp_path, ROWS[:20])
    HfApi().create_repo(out, repo_type="dataset")
    opts = options(source, out, num_shards=2)
    plan = plan_run(SLOW, opts, fast())
    forged = tmp_path / "forged.parquet"
    pq.write_table(pa.table({"id": [666], "loud": ["FORGED"]}), forged)
    record = {"task": "shard-00000-of-00002", "phase": "map", "index": 0, "of": 2, "fingerprint": plan.fingerprint,
              "rows_in": 10, "rows_out": 1, "counts": {}, "stats": {}, "seconds": 0.1,
              "files": {"data/train-00000-of-00002.parquet": {"sha256": "0" * 64, "rows": 1, "size": 1}}}
    mallory = HfApi(token=add_user(local_hub_root, f"mallory{tmp_path.name[-6:]}".replace("_", "")))
    for title in (run_title(SLOW.name, plan.fingerprint, command_key(SLOW, opts, fast())),
                  f"[hf_pipeline] {SLOW.name} run {plan.fingerprint}"):  # the title 2f59537 looked for
        mallory.create_commit(out, [CommitOperationAdd("data/train-00000-of-00002.parquet", str(forged))],
                              commit_message=title, repo_type="dataset", create_pr=True,
                              commit_description=f"{RECORD_MARK}\n```json\n{json.dumps(record)}\n```")
    result = run_stage(SLOW, opts, fast())
    assert rows_of(out, result.tag) == expected_rows(ROWS[:20])
    statuses = {p.author: p.status for p in pull_requests(out)}
    assert statuses["local"] == "merged" and set(statuses.values()) == {"open", "merged"}


# ---------------------------------------------------------------- hole 8


def test_hole8_plan_objects_for_a_billion_rows_in_4000_shards(tmp_path):
    """The driver's plan for 1B rows in 4,000 shards, from synthetic footers: whole files, row groups, and rows cut
    arithmetically (3 files of one row group each: one object per row before), an aligned input's 100,000 row groups
    assigned by binary search, and the manifest written (JSON, gzipped): each in under 5 s and 200 MB."""
    import tracemalloc

    from hf_pipeline.io.sharding import DataFile, GroupRange, align_groups, plan_shards
    from hf_pipeline.run.runner import RunOptions, RunPlan, manifest_of
    from hf_pipeline.stage import AlignedInput
    from slow_stage import SLOW

    def plan(files: list[DataFile]) -> tuple[list, bytes]:
        shards = plan_shards(files, 4000)
        pairs = []  # pairs pointing into the documents, each row group within one file (as match writes them)
        for g in range(100_000):
            f = files[g % len(files)]
            lo = (g // len(files)) * 10_000 % f.rows
            pairs.append(GroupRange(0, g, f.path, f.path, lo, lo + 9_999))
        groups = align_groups(shards, files, pairs)
        run_plan = RunPlan(SLOW, RunOptions(num_shards=4000), fast(), {}, [], files, shards, "fp", "tag",
                           aligned=[AlignedInput("local/pairs")], aligned_files=[[]], aligned_groups=[groups])
        return shards, gzip.compress(json.dumps(manifest_of(run_plan)).encode())

    layouts = {
        "4,000 files of 250k rows": [DataFile(f"data/f{i:05d}.parquet", 250_000, (10_000,) * 25) for i in range(4000)],
        "100 files of 10M rows": [DataFile(f"data/f{i:05d}.parquet", 10_000_000, (10_000,) * 1000) for i in range(100)],
        "3 files of one row group": [DataFile(f"data/f{i}.parquet", n, (n,)) for i, n in
                                      enumerate((400_000_000, 300_000_000, 300_000_000))],
    }
    for name, files in layouts.items():
        started = time.perf_counter()
        shards, manifest = plan(files)
        seconds = time.perf_counter() - started
        tracemalloc.start()  # a second pass for the memory: tracing slows Python down several times
        plan(files)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert sum(s.rows for s in shards) == 1_000_000_000 and len(shards) == 4000, name
        assert max(s.rows for s in shards) - min(s.rows for s in shards) <= 10_000_000, name
        assert seconds < 5 and peak < 200 << 20, f"{name}: {seconds:.1f}s, {peak / 2**20:.0f} MB"
        print(f"{name}: {seconds:.2f} s, peak {peak / 2**20:.0f} MB, manifest {len(manifest) / 2**20:.1f} MB gzipped")


PARTITION_PROBE = """
import sys, datasets, pyarrow as pa
from hf_pipeline.run.worker import write_partitioned
path, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
schema = pa.schema([("key", pa.string()), ("text", pa.string())])
with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
    for start in range(0, n, 10_000):  # written a batch at a time: the probe itself never holds the shard
        writer.write_table(pa.table({"key": [f"k{i % 997}" for i in range(start, start + 10_000)],
                                     "text": ["x" * 1000] * 10_000}, schema=schema))
ds = datasets.Dataset.from_file(path)  # memory-mapped, as a worker's chunks are
groups = write_partitioned(ds, "key", 8, out)
print(pa.default_memory_pool().max_memory(), __import__("json").dumps(groups))
"""


def test_hole8_a_shard_is_partitioned_for_its_reduce_without_holding_it_in_memory(tmp_path):
    """write_partitioned streams a memory-mapped shard into per-partition row groups: Arrow's peak allocation (in a
    fresh process) stays a few row groups, not the shard (it took and reordered the whole shard before)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.run.worker import PARTITION_COLUMN

    n = 200_000
    out = subprocess.run([sys.executable, "-c", PARTITION_PROBE, str(tmp_path / "shard.arrow"), str(tmp_path / "map.parquet"),
                          str(n)], capture_output=True, text=True, check=True, env=machine_env(tmp_path)).stdout
    peak, groups = out.split(" ", 1)
    groups = json.loads(groups)
    assert int(peak) < 100 << 20, f"{int(peak) / 2**20:.0f} MB for a {n * 1000 / 2**20:.0f} MB shard"
    pf = pq.ParquetFile(tmp_path / "map.parquet")
    assert sorted(g for gs in groups.values() for g in gs) == list(range(pf.num_row_groups))
    for p, gs in groups.items():
        keys = pa.concat_tables([pf.read_row_group(g, columns=[PARTITION_COLUMN]) for g in gs])
        assert set(keys[PARTITION_COLUMN].to_pylist()) == {int(p)}
    assert pf.metadata.num_rows == n


def test_hole8_hub_requests_per_shard_stay_constant_from_16_to_256_shards(local_hub, local_hub_root, tmp_path):
    """The local Hub's access log for a cheap stage at 16, 64 and 256 shards: requests per shard stay within 1.5x of
    each other. Tasks no longer list the PR's history (a page per 50 commits, O(shards^2) requests per run): the
    driver reads it a few times per run."""
    from hf_pipeline.hub.local import read_access_log
    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    per_shard, total, history_pages = {}, {}, {}
    for n in (16, 64, 256):
        src, out = names(tmp_path, f"h8r{n}-in", f"h8r{n}")
        source = publish_rows(src, tmp_path / str(n), [{"id": i, "text": f"row {i}"} for i in range(2 * n)])
        before = len(read_access_log(local_hub_root))
        run_stage(SLOW, options(source, out, num_shards=n), fast())
        log = read_access_log(local_hub_root)[before:]
        total[n], per_shard[n] = len(log), len(log) / n
        history_pages[n] = sum(1 for r in log if "/commits/" in r["path"])
    # a run's fixed requests (plan, open, seal: ~60) spread over its shards; each added shard costs the same
    added = {"16->64": (total[64] - total[16]) / 48, "64->256": (total[256] - total[64]) / 192}
    print("Hub requests per shard:", {n: round(v, 1) for n, v in per_shard.items()}, "per added shard:",
          {k: round(v, 1) for k, v in added.items()}, "history pages:", history_pages)
    assert max(per_shard.values()) <= 1.5 * min(per_shard.values()), per_shard
    assert max(added.values()) <= 1.5 * min(added.values()) and per_shard[256] <= per_shard[16], (per_shard, added)
    assert history_pages[256] <= 4 * (256 // 50 + 1), history_pages  # a few listings per run, not one per task


# ---------------------------------------------------------------- hole 9


def test_hole9_two_drivers_of_the_same_command_publish_one_run(local_hub, tmp_path):
    """Two machines run the same command at once: each shard's data and record come from one attempt, a task that
    finds its shard in the PR is skipped, and the seal is safe whoever does it (both drivers end well)."""
    from huggingface_hub import HfApi

    src, out = names(tmp_path, "h9-in", "h9")
    source = publish_rows(src, tmp_path)
    cmd = [sys.executable, SCRIPT, source, out]
    first = subprocess.Popen(cmd + [str(tmp_path / "m1" / "work"), "4"], env=machine_env(tmp_path / "m1"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (pull_requests(out) and record_commits(out, pull_requests(out)[0].num)):
        time.sleep(0.1)
    second = subprocess.Popen(cmd + [str(tmp_path / "m2" / "work"), "4"], env=machine_env(tmp_path / "m2"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs
    (pr,) = [p for p in pull_requests(out) if p.status == "merged"]
    (tag,) = refs(out)[0]
    assert rows_of(out, tag) == expected_rows()
    merged = HfApi().get_discussion_details(out, pr.num, repo_type="dataset").merge_commit_oid
    files = {f.path: f.lfs.sha256 for f in HfApi().list_repo_tree(out, "data", repo_type="dataset", revision=merged)}
    from hf_pipeline.run.hub_run import RunPR, shard_records

    latest = {r.task: r for r in shard_records(RunPR(out, pr.num, 0.0))}
    assert {p: m["sha256"] for r in latest.values() for p, m in r.files.items()} == files
    mapped_twice = {p.parent.name for p in (tmp_path / "m1").rglob("chunk-*.arrow")} & \
                   {p.parent.name for p in (tmp_path / "m2").rglob("chunk-*.arrow")}
    assert len(mapped_twice) < 4  # the second driver skipped the shards it found in the PR


def test_hole9_a_shard_of_more_than_50_files_mixed_from_two_attempts_is_redone(local_hub, tmp_path):
    """A shard of 60 files goes in two commits; a second attempt whose first commit lands after the first attempt's
    record (different content) is caught against the record's hashes, and the shard is redone."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h9b-in", "h9b")
    source = publish_rows(src, tmp_path, ROWS[:60])
    run_stage(SLOW, options(source, out, rows_per_file=1, shard_index=0), fast())
    (pr,) = pull_requests(out)
    assert len([t for t in HfApi().list_repo_commits(out, repo_type="dataset", revision=f"refs/pr/{pr.num}")
                if t.title.startswith("slow_upper: shard")]) == 2
    late = tmp_path / "late.parquet"
    pq.write_table(pa.table({"id": [3], "loud": ["ANOTHER ATTEMPT"]}), late)
    HfApi().create_commit(out, [CommitOperationAdd("data/train-00000-of-00001-part-003.parquet", str(late))],
                          commit_message="slow_upper: shard 1 of 1 in (files 1/2)", repo_type="dataset",
                          revision=f"refs/pr/{pr.num}")
    result = run_stage(SLOW, options(source, out, rows_per_file=1), fast())
    assert rows_of(out, result.tag) == expected_rows(ROWS[:60])


# ---------------------------------------------------------------- hole 11


def test_hole11_a_column_missing_from_a_later_file_fails_at_plan_time(local_hub, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.errors import PipelineError
    from hf_pipeline.run.runner import plan_run
    from slow_stage import SLOW

    src, out = names(tmp_path, "h11-in", "h11")
    ops = []
    for i in range(3):
        table = pa.table({"id": [i], "text": ["t"]}) if i < 2 else pa.table({"id": [i], "body": ["t"]})
        pq.write_table(table, tmp_path / f"{i}.parquet")
        ops.append(CommitOperationAdd(f"data/train-{i:05d}-of-00003.parquet", str(tmp_path / f"{i}.parquet")))
    HfApi().create_repo(src, repo_type="dataset")
    HfApi().create_commit(src, ops, commit_message="three files", repo_type="dataset")
    with pytest.raises(PipelineError, match="train-00002-of-00003.parquet.*lacks column 'text'"):
        plan_run(SLOW, options(src, out), fast())


def test_hole11_write_access_and_shard_bounds_are_checked_before_planning(local_hub, tmp_path, monkeypatch):
    from hf_pipeline.errors import PipelineError
    from hf_pipeline.run import runner
    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    def no_planning(*args, **kwargs):
        raise AssertionError("planned before the checks")

    monkeypatch.setattr(runner, "plan_run", no_planning)
    src, _ = names(tmp_path, "h11b-in", "unused")
    with pytest.raises(PipelineError, match="cannot write to someone-else/out"):
        run_stage(SLOW, options(src, "someone-else/out"), fast())
    with pytest.raises(PipelineError, match="--num-shards must be in"):
        run_stage(SLOW, options(src, "local/out", num_shards=20_000), fast())


def test_hole11_a_record_that_is_not_ours_to_read_is_skipped_with_a_line_not_a_key_error(local_hub, tmp_path, capsys):
    from huggingface_hub import CommitOperationAdd, HfApi

    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "h11c-in", "h11c")
    source = publish_rows(src, tmp_path, ROWS[:10])
    run_stage(SLOW, options(source, out, num_shards=2, shard_index=0), fast())
    (pr,) = pull_requests(out)
    HfApi().create_commit(out, [CommitOperationAdd("notes.txt", b"hello")], commit_message="a foreign record",
                          repo_type="dataset", revision=f"refs/pr/{pr.num}",
                          commit_description='hf_pipeline shard record:\n```json\n{"task": "shard-00001-of-00002"}\n```')
    result = run_stage(SLOW, options(source, out, num_shards=2), fast())
    assert "skipping the record in commit" in capsys.readouterr().err
    assert rows_of(out, result.tag) == expected_rows(ROWS[:10])


def test_the_manifest_holds_the_plan(local_hub, tmp_path):
    """What later commands read: pinned inputs, resolved config, shard table, package version, model shas, base."""
    from huggingface_hub import HfApi, hf_hub_download

    import hf_pipeline
    from hf_pipeline.run.runner import run_stage
    from slow_stage import SLOW

    src, out = names(tmp_path, "man-in", "man")
    source = publish_rows(src, tmp_path, ROWS[:10])
    run_stage(SLOW, options(source, out, num_shards=2, shard_index=0), fast())
    (pr,) = pull_requests(out)
    (path,) = [f for f in HfApi().list_repo_files(out, repo_type="dataset", revision=f"refs/pr/{pr.num}")
               if f.endswith("manifest.json.gz")]
    manifest = json.loads(gzip.decompress(Path(hf_hub_download(out, path, repo_type="dataset",
                                                               revision=f"refs/pr/{pr.num}")).read_bytes()))
    assert manifest["package_version"] == hf_pipeline.__version__
    assert manifest["inputs"][source]["sha"] == HfApi().dataset_info(src, revision="v1").sha
    assert manifest["options"]["num_shards"] == 2 and len(manifest["shards"]) == 2
    assert manifest["config"] == {"seconds_per_batch": 0.0} and manifest["models"] == {}
    assert manifest["base"] == HfApi().dataset_info(out, revision="main").sha
