"""A run of a dataset stage is a pull request of its output repo: the only state the run's machines share.

Why a pull request (and not a run branch merged by a final commit of server-side copies): workers commit their
own shards to `refs/pr/N` in small commits (< 100 files each, as the Hub recommends for commits over HTTP), and
the run ends with one merge, which moves `main` in one step without a commit listing every file of the run.
Collaborators watch and review the run where they already work: the PR's title names the stage and the
fingerprint, its commits are the shards as they arrive (each title says shards done / total, rows, elapsed and
ETA), and `main` and the tags do not move until the driver merges.

    open_run        create the output repo if needed; find the open PR of this fingerprint or open one (draft),
                    whose first commit clears the previous run's data/ so the PR holds exactly this run's files
    shard_records   the finished shards and partitions: the JSON record in each shard commit's description
    commit_shard    one worker's output files + its record, in commits of < 100 files (the record in the last)
    seal            the card and artifacts, the scratch folder deleted, the PR set open and merged, the merge
                    commit tagged

Resuming is reading the PR: a rerun of the same command, on any machine, finds the PR by its title and skips every
shard whose record is there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.hub_io import hf_api

RECORD_MARK = "hf_pipeline shard record:"
SCRATCH = ".hf_pipeline"  # per-run intermediate files inside the PR (hidden: never read as data); gone at the seal
MAX_FILES_PER_COMMIT = 50  # the Hub recommends < 100 files per commit over HTTP


@dataclass(frozen=True)
class RunPR:
    repo_id: str
    num: int
    created_at: float  # epoch seconds

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"

    @property
    def url(self) -> str:
        from hf_pipeline.hub_io import endpoint

        return f"{endpoint()}/datasets/{self.repo_id}/discussions/{self.num}"


def run_title(stage: str, fp: str) -> str:
    return f"[hf_pipeline] {stage} run {fp}"


def scratch_dir(fp: str) -> str:
    return f"{SCRATCH}/{fp}"


def _retrying(call, what: str, attempts: int = 8):
    """Hub calls that many workers make at once: retried on conflicts and server errors with a short backoff, and on
    429 (the Hub's commit rate limit) after the time it asks for in `Retry-After` (at most 15 minutes at a time)."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(attempts):
        try:
            return call()
        except HfHubHTTPError as e:
            status = getattr(e.response, "status_code", None)
            if status not in (409, 412, 429, 500, 502, 503, 504) or attempt == attempts - 1:
                raise PipelineError(f"{what} failed: {e}") from e
            wait = min(30.0, 0.5 * 2**attempt)
            if status == 429:
                retry_after = (e.response.headers or {}).get("Retry-After", "")
                wait = min(900.0, float(retry_after)) if retry_after.isdigit() else min(900.0, 30.0 * 2**attempt)
                print(f"{what}: the Hub's rate limit (429); retrying in {wait:.0f}s", flush=True)
            time.sleep(wait)


def find_run(repo_id: str, stage: str, fp: str) -> RunPR | None:
    """The open (or draft) PR of this run, if any (the lowest number when two machines opened one at once)."""
    from huggingface_hub.errors import RepositoryNotFoundError

    title = run_title(stage, fp)
    try:
        prs = [d for d in hf_api().get_repo_discussions(repo_id, repo_type="dataset", discussion_type="pull_request")
               if d.title == title and d.status in ("open", "draft")]
    except RepositoryNotFoundError:
        return None
    if not prs:
        return None
    first = min(prs, key=lambda d: d.num)
    return RunPR(repo_id, first.num, first.created_at.timestamp())


def open_run(repo_id: str, stage: str, fp: str, description: str, private: bool = False) -> tuple[RunPR, bool]:
    """(the run's PR, whether it was opened now). A new PR's first commit deletes the previous run's data/."""
    api = hf_api()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    found = find_run(repo_id, stage, fp)
    if found is not None:
        return found, False
    pr = api.create_pull_request(repo_id, title=run_title(stage, fp), description=description, repo_type="dataset")
    run = find_run(repo_id, stage, fp) or RunPR(repo_id, pr.num, pr.created_at.timestamp())
    if run.num != pr.num:  # another machine opened one at the same moment: keep the first, close ours
        api.change_discussion_status(repo_id, pr.num, "closed", comment=f"duplicate of #{run.num}", repo_type="dataset")
        return run, False
    from huggingface_hub import CommitOperationDelete

    if any(f.startswith("data/") for f in api.list_repo_files(repo_id, repo_type="dataset", revision=run.ref)):
        _retrying(lambda: api.create_commit(
            repo_id, [CommitOperationDelete("data/", is_folder=True)], commit_message=f"{stage}: clear the previous data",
            repo_type="dataset", revision=run.ref), "clearing data/ in the run's pull request")
    return run, True


def shard_records(run: RunPR) -> list[dict[str, Any]]:
    """Every record committed to the run's PR, oldest first."""
    commits = hf_api().list_repo_commits(run.repo_id, repo_type="dataset", revision=run.ref)
    records = []
    for commit in reversed(commits):
        text = commit.message or ""
        if RECORD_MARK in text:
            body = text.split(RECORD_MARK, 1)[1]
            try:
                records.append(json.loads(body[body.index("{"):body.rindex("}") + 1]))
            except ValueError:
                continue  # not ours to read
    return records


def read_row_groups(run: RunPR, wanted: list[tuple[str, list[int] | None]], columns: list[str] | None = None):
    """Row groups of files in the run's PR, in the order asked (None: every row group of that file), read by range
    at the PR's head commit, resolved once (files never change once committed)."""
    import pyarrow.parquet as pq
    from huggingface_hub import HfFileSystem

    head = hf_api().dataset_info(run.repo_id, revision=run.ref).sha
    fs = HfFileSystem()
    for path, groups in wanted:
        with fs.open(f"hf://datasets/{run.repo_id}@{head}/{path}", "rb", block_size=8 << 20) as fh:
            pf = pq.ParquetFile(fh)
            for g in range(pf.num_row_groups) if groups is None else groups:
                yield pf.read_row_group(g, columns=columns)


def progress_title(stage: str, what: str, done: int, total: int, rows_in: int, started: float) -> str:
    """A shard commit's title: what arrived, and how far the run is (done / total, rows, elapsed, ETA)."""
    elapsed = max(0.0, time.time() - started)
    eta = elapsed / done * (total - done) if done else 0.0
    return (f"{stage}: {what} in ({done}/{total} done; {rows_in:,} rows in; "
            f"{_duration(elapsed)} elapsed, ETA {_duration(eta)})")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def commit_shard(run: RunPR, files: dict[str, Path], record: dict[str, Any], title: str) -> None:
    """Upload a shard's files to the run's PR (commits of < 100 files); the record rides in the last commit, so a
    shard counts as finished only once all its files are in."""
    from huggingface_hub import CommitOperationAdd

    api = hf_api()
    items = sorted(files.items())
    batches = [items[i:i + MAX_FILES_PER_COMMIT] for i in range(0, len(items), MAX_FILES_PER_COMMIT)] or [[]]
    for k, batch in enumerate(batches):
        ops = [CommitOperationAdd(path, str(local)) for path, local in batch]
        last = k == len(batches) - 1
        description = f"{RECORD_MARK}\n```json\n{json.dumps(record)}\n```" if last else None
        _retrying(lambda: api.create_commit(
            run.repo_id, ops, commit_message=title if last else f"{title} (files {k + 1}/{len(batches)})",
            commit_description=description, repo_type="dataset", revision=run.ref,
        ), f"uploading {record.get('task')} to {run.url}")


def seal(run: RunPR, card: str, artifacts: dict[str, Path], fp: str, tag: str, message: str) -> str:
    """Card, artifacts and the scratch folder's removal in one commit to the PR; then the PR is merged (main moves
    in one step) and the merge commit tagged. Returns the merge commit's sha."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = hf_api()
    ops: list[Any] = [CommitOperationAdd(p, str(f)) for p, f in sorted(artifacts.items())]
    ops.append(CommitOperationAdd("README.md", card.encode()))
    if any(f.startswith(f"{scratch_dir(fp)}/") for f in api.list_repo_files(run.repo_id, repo_type="dataset", revision=run.ref)):
        ops.append(CommitOperationDelete(f"{scratch_dir(fp)}/", is_folder=True))
    _retrying(lambda: api.create_commit(run.repo_id, ops, commit_message=f"{message}: card", repo_type="dataset",
                                        revision=run.ref), f"committing the card to {run.url}")
    details = api.get_discussion_details(run.repo_id, run.num, repo_type="dataset")
    if details.status == "draft":
        api.change_discussion_status(run.repo_id, run.num, "open", repo_type="dataset")
    if details.status != "merged":
        try:
            api.merge_pull_request(run.repo_id, run.num, comment=message, repo_type="dataset")
        except Exception as e:
            raise PipelineError(f"could not merge the run's pull request {run.url}: {e}") from e
        details = api.get_discussion_details(run.repo_id, run.num, repo_type="dataset")
    sha = details.merge_commit_oid
    if not sha:
        raise PipelineError(f"the run's pull request {run.url} was merged but the Hub names no merge commit.")
    api.create_tag(run.repo_id, tag=tag, revision=sha, repo_type="dataset", tag_message=message)
    return sha
