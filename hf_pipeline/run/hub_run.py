"""A run of a dataset stage is a pull request of its output repo: the only state the run's machines share.

Why a pull request (and not a run branch merged by a final commit of server-side copies): workers commit their
own shards to `refs/pr/N` in small commits (< 100 files each, as the Hub recommends for commits over HTTP), and
the run ends with one merge, which moves `main` in one step without a commit listing every file of the run.
Collaborators watch and review the run where they already work: the PR's title names the stage, the fingerprint
and the command, its commits are the shards as they arrive (each title says shards done / total, rows, elapsed
and ETA), and `main` and the tags do not move until the driver merges.

    open_run        one commit opens the PR (`create_commit(create_pr=True)` on main's head): it deletes the previous
                    run's data/ and run folder and adds this run's manifest (the plan: pinned inputs, resolved
                    config, shard table, package version, model shas, main's commit it starts from). Shard jobs and
                    the seal read the manifest; they never plan again.
    shard_records   the finished tasks: the JSON record in the description of each shard commit made by this
                    account, with each file's sha256, size and rows
    commit_shard    one worker's output files + its record, in commits of <= 50 files (the record in the last)
    verify_files    the PR's files against the records: a task whose files differ is redone; files no record
                    names are deleted by the seal
    rebase_run      main moved since the run opened (another run merged, the card was edited): the run's files are
                    copied server-side (LFS pointers, no upload) into a PR opened on the current main
    seal            the card and artifacts, the run's folder deleted, the PR merged (main moves once), the merge
                    commit checked and tagged; every step can be repeated by a rerun or another driver

Trust: a run is adopted only from a PR this account opened, and records are read only from commits this account
made (`whoami`), so a forged PR or forged records on a public repo are never merged with the driver's token.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, TypeVar

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.hub import endpoint, hf_api
from hf_pipeline.run.plan import TaskRecord

RECORD_MARK = "hf_pipeline shard record:"
RUN_DIR = ".hf_pipeline"  # per-run files inside the PR (hidden: never read as data)
MAX_FILES_PER_COMMIT = 50  # the Hub recommends < 100 files per commit over HTTP
T = TypeVar("T")


@dataclass(frozen=True)
class RunPR:
    repo_id: str
    num: int
    created_at: float  # epoch seconds
    base: str = ""  # main's commit the run was opened on (its manifest says)

    @property
    def ref(self) -> str:
        return f"refs/pr/{self.num}"

    @property
    def url(self) -> str:
        return f"{endpoint()}/datasets/{self.repo_id}/discussions/{self.num}"


@dataclass(frozen=True)
class RunFound:
    """A PR of this account titled with a command's key."""

    num: int
    status: str  # open | draft | merged | closed
    created_at: float


def run_title(stage: str, fp: str, key: str) -> str:
    return f"[hf_pipeline] {stage} run {fp} (command {key})"


def run_dir(fp: str) -> str:
    return f"{RUN_DIR}/{fp}"


def manifest_path(fp: str) -> str:
    # gzipped: at a billion rows the shard table and aligned row groups run to megabytes; .gz is stored as LFS
    return f"{run_dir(fp)}/manifest.json.gz"


def scratch_dir(fp: str) -> str:
    return f"{run_dir(fp)}/scratch"


def _status(error: Exception) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def retrying(call: Callable[[], T], what: str, attempts: int = 8, on: tuple[int, ...] = (409, 412)) -> T:
    """A Hub call of the run protocol, its error said as one line naming `what`. Transient errors (429, 5xx, dropped
    connections) are retried below, by the client every process installs (`hub_retry`); here, calls that many
    machines make at once are retried on the statuses `on` (409/412: another commit to the same ref landed first)
    with a short backoff."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(attempts):
        try:
            return call()
        except HfHubHTTPError as e:
            if _status(e) not in on or attempt == attempts - 1:
                raise PipelineError(f"{what} failed: {e}") from e
            time.sleep(min(30.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- who we are, what we may do


@lru_cache(maxsize=None)
def _whoami(endpoint_url: str) -> dict:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return retrying(lambda: hf_api().whoami(), "asking the Hub who this token belongs to", on=())
    except PipelineError as e:
        cause = e.__cause__
        if isinstance(cause, HfHubHTTPError) and _status(cause) == 401:
            raise PipelineError(f"the Hub at {endpoint_url} does not accept this token (or none is set): set HF_TOKEN or "
                                "run `hf auth login` with a token that can write.") from None
        raise
    except (OSError, ValueError) as e:  # no token at all (LocalTokenNotFoundError is an EnvironmentError)
        raise PipelineError(f"no Hub token: set HF_TOKEN or run `hf auth login` ({type(e).__name__}: {e}).") from None


def account() -> str:
    """The account this process's token belongs to: runs are adopted, and records read, only from it."""
    return _whoami(endpoint())["name"]


def check_write_access(repo_id: str) -> None:
    """Said before anything is planned: the token can write and the output's namespace is this account's or one of
    its organizations' (where its role is above read). A fine-grained token's scopes are the Hub's to check."""
    info = _whoami(endpoint())
    namespace = repo_id.split("/", 1)[0]
    token = (info.get("auth") or {}).get("accessToken") or {}
    if token.get("role") == "read":
        raise PipelineError(f"your token ({info['name']}) is read-only: {repo_id} needs a token with write access.")
    orgs = {o.get("name"): o.get("roleInOrg") for o in info.get("orgs") or []}
    if namespace != info["name"] and namespace not in orgs and token.get("role") != "fineGrained":
        raise PipelineError(f"you ({info['name']}) cannot write to {repo_id}: {namespace} is neither your account nor one of "
                            f"your organizations ({', '.join(sorted(filter(None, orgs))) or 'none'}).")
    if orgs.get(namespace) == "read":
        raise PipelineError(f"you ({info['name']}) have read access only to the organization {namespace}.")


# ---------------------------------------------------------------- finding and opening a run


def find_runs(repo_id: str, stage: str, key: str) -> list[RunFound]:
    """This account's PRs of the command `key` (any status), lowest number first; [] when the repo does not exist."""
    from huggingface_hub.errors import RepositoryNotFoundError

    me = account()
    suffix = f"(command {key})"
    try:
        prs = retrying(lambda: list(hf_api().get_repo_discussions(repo_id, repo_type="dataset", discussion_type="pull_request",
                                                                  author=me)), f"listing the pull requests of {repo_id}")
    except PipelineError as e:
        if isinstance(e.__cause__, RepositoryNotFoundError):
            return []
        raise
    return sorted((RunFound(d.num, d.status, d.created_at.timestamp()) for d in prs
                   if d.author == me and d.title.startswith(f"[hf_pipeline] {stage} run ") and d.title.endswith(suffix)),
                  key=lambda r: r.num)


def read_manifest(repo_id: str, num: int) -> dict[str, Any]:
    """The manifest of the run in PR `num`: at its head while the run is open (only the run's author commits to it);
    once sealed (the seal deletes the run's folder), at the PR's opening commit, made by this account."""
    from huggingface_hub import hf_hub_download

    ref = f"refs/pr/{num}"
    url = f"{endpoint()}/datasets/{repo_id}/discussions/{num}"
    revision, found = ref, _manifests_at(repo_id, ref)
    if not found:
        me = account()
        commits = retrying(lambda: hf_api().list_repo_commits(repo_id, repo_type="dataset", revision=ref), f"listing {url}")
        opening = [c for c in commits if c.title.startswith("[hf_pipeline] ") and me in (c.authors or [])]
        if opening:
            revision = opening[-1].commit_id
            found = _manifests_at(repo_id, revision)
    if len(found) != 1:
        raise PipelineError(f"the run's pull request {url} holds {len(found)} run manifests (expected one): close it to "
                            "start the run over.")
    path = retrying(lambda: hf_hub_download(repo_id, found[0], repo_type="dataset", revision=revision),
                    f"reading the manifest of {url}")
    return json.loads(gzip.decompress(Path(path).read_bytes()))


def _manifests_at(repo_id: str, revision: str) -> list[str]:
    return [p for p in listed_files(repo_id, revision, RUN_DIR) if p.endswith("/manifest.json.gz")]


def main_head(repo_id: str) -> str:
    return retrying(lambda: hf_api().dataset_info(repo_id, revision="main").sha, f"reading the head of {repo_id}")


def _opening_ops(repo_id: str, head: str, manifest: dict[str, Any]) -> list:
    """The run's first commit: the previous run's data/ and run folder deleted, this run's manifest added."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    files = retrying(lambda: hf_api().list_repo_files(repo_id, repo_type="dataset", revision=head), f"listing {repo_id}")
    ops: list[Any] = [CommitOperationDelete(f"{folder}/", is_folder=True) for folder in ("data", RUN_DIR)
                      if any(f.startswith(f"{folder}/") for f in files)]
    body = gzip.compress(json.dumps({**manifest, "base": head}, sort_keys=True).encode(), mtime=0)
    ops.append(CommitOperationAdd(manifest_path(manifest["fingerprint"]), body))
    return ops


def _open_pr(repo_id: str, title: str, description: str, manifest: dict[str, Any]) -> tuple[int, str]:
    """Open a PR on main's head with the run's opening commit, in one step. Main moving in between (412) starts over
    from the new head, so the PR's base is always the commit whose files it cleared."""
    from huggingface_hub.errors import HfHubHTTPError

    for _ in range(8):
        head = main_head(repo_id)
        ops = _opening_ops(repo_id, head, manifest)
        try:
            info = retrying(lambda: hf_api().create_commit(
                repo_id, ops, commit_message=title, commit_description=description, repo_type="dataset",
                create_pr=True, parent_commit=head), f"opening the run's pull request on {repo_id}", on=())
        except PipelineError as e:
            if isinstance(e.__cause__, HfHubHTTPError) and _status(e.__cause__) in (409, 412):
                continue  # main moved while we listed it
            raise
        return int(info.pr_num), head
    raise PipelineError(f"main of {repo_id} kept moving while the run's pull request was opened; rerun.")


def run_of(repo_id: str, num: int, manifest: dict[str, Any], created_at: float) -> RunPR:
    return RunPR(repo_id, num, created_at, manifest.get("base", ""))


def open_run(repo_id: str, stage: str, key: str, manifest: dict[str, Any], description: str,
             private: bool = False) -> tuple[RunPR, dict[str, Any], bool]:
    """(the run's PR, its manifest, whether this call opened it). Two drivers opening at once each open one; the
    lowest number wins, the other is closed as its duplicate and its driver adopts the winner's manifest."""
    api = hf_api()
    retrying(lambda: api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private),
             f"creating {repo_id}", on=())
    title = run_title(stage, manifest["fingerprint"], key)
    num, base = _open_pr(repo_id, title, description, manifest)
    runs = [r for r in find_runs(repo_id, stage, key) if r.status in ("open", "draft")]
    first = min(runs, key=lambda r: r.num) if runs else RunFound(num, "open", time.time())
    if first.num == num:  # ours: its manifest is the one just written
        manifest = {**manifest, "base": base}
        return run_of(repo_id, num, manifest, first.created_at), manifest, True
    close_pr(repo_id, num, f"duplicate of #{first.num}")
    adopted = read_manifest(repo_id, first.num)
    return run_of(repo_id, first.num, adopted, first.created_at), adopted, False


# ---------------------------------------------------------------- records


def shard_records(run: RunPR) -> list[TaskRecord]:
    """Every usable record committed to the run's PR by this account, oldest first. A record in a commit by anyone
    else is never read; one of ours that cannot be used (another package version's) is skipped, said once."""
    me = account()
    commits = retrying(lambda: hf_api().list_repo_commits(run.repo_id, repo_type="dataset", revision=run.ref),
                       f"listing the commits of {run.url}")
    records = []
    for commit in reversed(commits):
        text = commit.message or ""
        if RECORD_MARK not in text or me not in (commit.authors or []):
            continue
        body = text.split(RECORD_MARK, 1)[1]
        try:
            records.append(TaskRecord.from_json(json.loads(body[body.index("{"):body.rindex("}") + 1])))
        except ValueError as e:
            print(f"skipping the record in commit {commit.commit_id[:12]} of {run.url}: {e}", file=sys.stderr, flush=True)
    return records


def file_entry(path: Path, rows: int) -> dict[str, Any]:
    """What a record says of one output file: its content hash (the Hub's LFS oid), size and rows."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "size": path.stat().st_size, "rows": rows}


def task_started(run: RunPR, paths: list[str]) -> bool:
    """Whether any of `paths` (a task's first output file, by its possible names) is in the run's PR: one request,
    so a task can tell cheaply whether another attempt got there first."""
    found = retrying(lambda: hf_api().get_paths_info(run.repo_id, paths, repo_type="dataset", revision=run.ref),
                     f"looking for {paths[0]} in {run.url}")
    return bool(found)


def commit_shard(run: RunPR, files: dict[str, Path], record: TaskRecord, title: str) -> None:
    """Upload a shard's files to the run's PR (commits of <= 50 files); the record rides in the last commit, so a
    shard counts as finished only once all its files are in (and the seal checks they are the record's)."""
    from huggingface_hub import CommitOperationAdd

    items = sorted(files.items())
    batches = [items[i:i + MAX_FILES_PER_COMMIT] for i in range(0, len(items), MAX_FILES_PER_COMMIT)] or [[]]
    for k, batch in enumerate(batches):
        ops = [CommitOperationAdd(path, str(local)) for path, local in batch]
        _commit_part(run, ops, record, title, k, len(batches))


def _commit_part(run: RunPR, ops: list, record: TaskRecord, title: str, k: int, n: int) -> None:
    last = k == n - 1
    description = f"{RECORD_MARK}\n```json\n{json.dumps(record.to_json())}\n```" if last else None
    try:
        retrying(lambda: hf_api().create_commit(
            run.repo_id, ops, commit_message=title if last else f"{title} (files {k + 1}/{n})",
            commit_description=description, repo_type="dataset", revision=run.ref,
        ), f"uploading {record.task} to {run.url}")
    except PipelineError:
        status = pr_status(run)
        if status != "open" and status != "draft":
            raise PipelineError(f"the run's pull request {run.url} is {status}: another driver sealed or closed the run "
                                f"while {record.task} was being committed.") from None
        raise


def pr_details(run: RunPR) -> Any:
    """The run's PR as the Hub describes it now (status, merge commit)."""
    return retrying(lambda: hf_api().get_discussion_details(run.repo_id, run.num, repo_type="dataset"), f"reading {run.url}")


def pr_status(run: RunPR) -> str:
    return pr_details(run).status


def pr_head(run: RunPR) -> str:
    """The commit at the head of the run's PR: files read there never change under the reader."""
    return retrying(lambda: hf_api().dataset_info(run.repo_id, revision=run.ref).sha, f"reading the head of {run.url}")


def close_pr(repo_id: str, num: int, comment: str) -> None:
    """Close a PR of this account; one already closed (a retried request whose first attempt went through) is done."""
    try:
        retrying(lambda: hf_api().change_discussion_status(repo_id, num, "closed", comment=comment, repo_type="dataset"),
                 f"closing the pull request #{num} of {repo_id}")
    except PipelineError:
        if hf_api().get_discussion_details(repo_id, num, repo_type="dataset").status != "closed":
            raise


def listed_files(repo_id: str, revision: str, folder: str) -> dict[str, tuple[str | None, int]]:
    """path -> (LFS sha256 or None, size) of every file under `folder` at `revision` (one paged listing)."""
    from huggingface_hub.errors import EntryNotFoundError
    from huggingface_hub.hf_api import RepoFile

    try:
        entries = retrying(lambda: list(hf_api().list_repo_tree(repo_id, folder, recursive=True, repo_type="dataset",
                                                                revision=revision)), f"listing {folder}/ of {repo_id}@{revision}")
    except PipelineError as e:
        if isinstance(e.__cause__, EntryNotFoundError):
            return {}
        raise
    return {e.path: (e.lfs.sha256 if e.lfs else None, e.size) for e in entries if isinstance(e, RepoFile)}


def verify_files(run: RunPR, records: list[TaskRecord], folders: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """({task: why its files in the PR are not its record's}, [files under `folders` that no record names]).
    Each of a record's files must be in the PR with the sha256 it recorded: a task whose data came from two attempts
    (two drivers, a retried worker, > 50 files in several commits) shows here and is redone."""
    listing: dict[str, tuple[str | None, int]] = {}
    for folder in folders:
        listing.update(listed_files(run.repo_id, run.ref, folder))
    problems: dict[str, str] = {}
    named: set[str] = set()
    for record in records:
        for path, meta in sorted(record.files.items()):
            named.add(path)
            if path not in listing:
                problems[record.task] = f"{path} is missing"
                break
            sha, size = listing[path]
            if (sha or "") != meta["sha256"] or size != meta.get("size", size):
                problems[record.task] = f"{path} has sha256 {(sha or 'none')[:12]}, its record says {meta['sha256'][:12]}"
                break
    return problems, sorted(set(listing) - named)


def count_rows(run: RunPR, records: list[TaskRecord], threads: int = 16) -> dict[str, str]:
    """{task: why} for every record whose files' parquet footers (read by range at the PR's head) do not hold the rows
    it recorded. One footer read per file, 16 at a time."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.parquet as pq
    from huggingface_hub import HfFileSystem

    head = pr_head(run)
    fs = HfFileSystem()

    def rows(path: str) -> int:
        with fs.open(f"hf://datasets/{run.repo_id}@{head}/{path}", "rb", block_size=1 << 16) as fh:
            return pq.read_metadata(fh).num_rows

    wanted = [(r.task, path, meta["rows"]) for r in records for path, meta in sorted(r.files.items())]
    for folder in sorted({path.rsplit("/", 1)[0] for _, path, _ in wanted}):  # listed once, before the threads ask
        fs.ls(f"datasets/{run.repo_id}@{head}/{folder}", detail=True)
    with ThreadPoolExecutor(threads) as pool:
        found = list(pool.map(lambda w: rows(w[1]), wanted))
    problems: dict[str, str] = {}
    for (task, path, expected), got in zip(wanted, found):
        if got != expected and task not in problems:
            problems[task] = f"{path} holds {got} rows, its record says {expected}"
    return problems


def read_row_groups(run: RunPR, wanted: list[tuple[str, list[int] | None]], columns: list[str] | None = None):
    """Row groups of files in the run's PR, in the order asked (None: every row group of that file), read by range
    at the PR's head commit, resolved once (files never change once committed)."""
    import pyarrow.parquet as pq
    from huggingface_hub import HfFileSystem

    head = pr_head(run)
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


# ---------------------------------------------------------------- main moved: rebase


def rebase_run(run: RunPR, stage: str, key: str, manifest: dict[str, Any], records: list[TaskRecord],
               description: str) -> tuple[RunPR, dict[str, Any]]:
    """Main moved since the run opened: merging would conflict on the card, or silently keep another run's data
    files. The run moves to a PR opened on main's current head: every record's files are copied server-side from
    this PR's head (the same LFS objects: nothing is uploaded again) in commits of <= 50 files, each task's record
    in its last commit; then this PR is closed. A rebase interrupted halfway is continued by the next one."""
    from huggingface_hub import CommitOperationCopy

    head = main_head(run.repo_id)
    source = pr_head(run)
    moved = {**manifest, "rebased_from": run.num}
    target = None
    for found in find_runs(run.repo_id, stage, key):
        if found.num != run.num and found.status in ("open", "draft"):
            other = read_manifest(run.repo_id, found.num)
            if other.get("rebased_from") == run.num and other.get("base") == head:
                target, moved = run_of(run.repo_id, found.num, other, found.created_at), other
    if target is None:
        title = run_title(stage, manifest["fingerprint"], key)
        num, _ = _open_pr(run.repo_id, title, f"{description}\n\nRebased from #{run.num}: main moved meanwhile.", moved)
        moved = read_manifest(run.repo_id, num)
        target = run_of(run.repo_id, num, moved, time.time())
    print(f"main of {run.repo_id} moved since the run opened: moving its files to {target.url} (server-side copies)",
          flush=True)
    copied = {r.task for r in shard_records(target)}
    for record in records:
        if record.task in copied:
            continue
        paths = sorted(record.files)
        batches = [paths[i:i + MAX_FILES_PER_COMMIT] for i in range(0, len(paths), MAX_FILES_PER_COMMIT)] or [[]]
        for k, batch in enumerate(batches):
            ops = [CommitOperationCopy(p, p, src_revision=source) for p in batch]
            _commit_part(target, ops, record, f"{stage}: {record.task} copied from #{run.num}", k, len(batches))
    close_pr(run.repo_id, run.num, f"rebased onto main as #{target.num}")
    return target, moved


# ---------------------------------------------------------------- seal


def tag_commit(repo_id: str, tag: str, sha: str, message: str) -> None:
    """Tag `sha`; a tag already there at the same commit (an earlier attempt's) counts as done."""
    from huggingface_hub.errors import HfHubHTTPError

    from hf_pipeline.io.hub import output_tags

    try:
        retrying(lambda: hf_api().create_tag(repo_id, tag=tag, revision=sha, repo_type="dataset", tag_message=message),
                 f"tagging {repo_id}@{sha[:12]} as {tag}", on=())
    except PipelineError as e:
        if not (isinstance(e.__cause__, HfHubHTTPError) and _status(e.__cause__) == 409):
            raise
        there = output_tags(repo_id).get(tag)
        if there != sha:
            raise PipelineError(f"tag '{tag}' of {repo_id} already points at {str(there)[:12]}, not at the run's merge "
                                f"commit {sha[:12]}: delete that tag or choose another --tag.") from None


class MainMoved(PipelineError):
    """Main is not the commit the run was opened on."""


def seal(run: RunPR, card: str, artifacts: dict[str, Path], fp: str, tag: str, message: str, strays: list[str]) -> str:
    """Card, artifacts, the scratch folder's and stray files' removal in one commit to the PR; then the PR is merged
    (main moves in one step), the merged tree checked against the run's files, and the merge commit tagged.
    Returns the merge commit's sha. Raises MainMoved before merging when main is not the run's base."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = hf_api()
    details = pr_details(run)
    if details.status != "merged":
        if main_head(run.repo_id) != run.base:
            raise MainMoved(f"main of {run.repo_id} moved since the run opened on {run.base[:12]}.")
        ops: list[Any] = [CommitOperationAdd(p, str(f)) for p, f in sorted(artifacts.items())]
        ops.append(CommitOperationAdd("README.md", card.encode()))
        ops += [CommitOperationDelete(p) for p in strays]
        if listed_files(run.repo_id, run.ref, run_dir(fp)):  # the manifest and the scratch files
            ops.append(CommitOperationDelete(f"{run_dir(fp)}/", is_folder=True))
        if strays:
            print(f"deleting {len(strays)} file(s) in {run.url} that no record names (e.g. {strays[0]})", flush=True)
        try:
            retrying(lambda: api.create_commit(run.repo_id, ops, commit_message=f"{message}: card", repo_type="dataset",
                                               revision=run.ref), f"committing the card to {run.url}")
            retrying(lambda: api.merge_pull_request(run.repo_id, run.num, comment=message, repo_type="dataset"),
                     f"merging {run.url}", on=())
        except PipelineError as e:
            # a retried merge whose first attempt went through, or another driver sealing the same run meanwhile
            if pr_status(run) != "merged":
                raise PipelineError(f"could not merge the run's pull request {run.url}: {e}") from e
        details = pr_details(run)
    sha = merged_as(run, details)
    tag_commit(run.repo_id, tag, sha, message)
    return sha


def merged_as(run: RunPR, details: Any = None) -> str:
    """The merge commit of the run's PR, checked to hold exactly the PR's data files: main moving between the check
    before the merge and the merge itself would have mixed another run's files in (nothing is tagged then)."""
    details = details or pr_details(run)
    sha = details.merge_commit_oid
    if not sha:
        raise PipelineError(f"the run's pull request {run.url} is {details.status}, with no merge commit.")
    merged, ours = listed_files(run.repo_id, sha, "data"), listed_files(run.repo_id, run.ref, "data")
    if merged != ours:
        differ = sorted(set(merged) ^ set(ours)) or sorted(p for p in merged if merged[p] != ours.get(p))
        raise MergeNotTheRun(f"the merge of {run.url} ({sha[:12]}) holds other data files than the run (e.g. {differ[0]}): "
                             "main moved while it merged. Not tagged; rerun the same command to start the run over.")
    return sha


class MergeNotTheRun(PipelineError):
    """A merged run whose merge commit does not hold exactly its files."""
