"""The local Hub's git store: where repositories live, how revisions resolve, and every write to them.

Repositories are plain git repositories in olah's "mirror" layout,
``ROOT/mirrors/{models,datasets,spaces}/ORG/NAME/.git``, with LFS content stored as pointer files in git and
the objects under ``.git/lfs/objects/aa/bb/OID`` (the path olah's ``LocalMirrorRepo`` reads; it builds it from
the working directory, which is why the repositories are non-bare, although no working tree is ever checked out).
A repo's settings (``{"private", "createdAt"}``) sit beside git's files in ``.git/hf_repo.json``.

``Store`` makes every change under a per-repo lock: repos, NDJSON commits (to a branch or a pull request's
``refs/pr/N``), branches and tags, and the discussion changes of ``discussions``. Reads resolve a revision to a
full commit sha first (``Store.resolve``), so a moved branch or tag is never served stale.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

from hf_pipeline.hub.accounts import DEFAULT_ACCOUNT, Actor
from hf_pipeline.hub.guard import HubError, too_large
from hf_pipeline.hub.server import discussions
from hf_pipeline.hub.server.plumbing import (DEFAULT_BRANCH, cat_file, commit_and_move, commit_of, git, identity,
                                             ls_tree, now, write_blob)

REPO_TYPES = {"model": "models", "dataset": "datasets", "space": "spaces"}  # API type -> URL/mirror folder
API_TYPES = {folder: api for api, folder in REPO_TYPES.items()}
URL_PREFIX = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}
NAME_RE = re.compile(r"[A-Za-z0-9][\w.-]{0,95}", re.ASCII)
SHA1_RE = re.compile(r"[0-9a-f]{40}")
COMMIT_PREFIX_RE = re.compile(r"[0-9a-f]{5,40}")  # the parent commits the client accepts
PR_REF_RE = re.compile(r"refs/pr/([1-9][0-9]*)")
OID_RE = re.compile(r"[0-9a-f]{64}")
POINTER_RE = re.compile(rb"version https://git-lfs\.github\.com/spec/v1\noid sha256:([0-9a-f]{64})\nsize (\d+)\n?")
POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# Patterns stored as LFS, as in the .gitattributes the Hub puts in every new repo (abridged).
LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lz4", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*.gguf",
    "*.jpg", "*.jpeg", "*.png", "*.webp", "*.mp3", "*.wav", "*.flac", "*.ogg", "*.mp4", "*tfevents*",
]
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
REGULAR_MAX_SIZE = 10 * 1024 * 1024  # the Hub refuses non-LFS files above 10 MB
REPO_SETTINGS = "hf_repo.json"  # in a repo's .git: {"private": bool, "createdAt": date}


class Store:
    """The repositories under ``root``: lookup, revision resolution and every git write (under a per-repo lock)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.mirrors = self.root / "mirrors"
        for repo_type in REPO_TYPES.values():
            (self.mirrors / repo_type).mkdir(parents=True, exist_ok=True)
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def path(self, repo_type: str, org: str, name: str) -> Path:
        """Mirror folder of a repo; names are validated so a request can never escape ``root``."""
        valid = all(NAME_RE.fullmatch(p) and ".." not in p and not p.endswith(".git") for p in (org, name))
        if repo_type not in URL_PREFIX or not valid:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return self.mirrors / repo_type / org / name

    def find(self, repo_type: str, org: str, name: str) -> Path:
        """Mirror folder of an existing repo; RepoNotFound otherwise."""
        path = self.path(repo_type, org, name)
        if not (path / ".git").is_dir():
            raise HubError(404, f"Repository {org}/{name} not found", "RepoNotFound")
        return path

    def lock(self, path: Path) -> threading.Lock:
        """The lock every write to the repo at ``path`` holds."""
        with self._locks_guard:
            return self._locks.setdefault(path, threading.Lock())

    @staticmethod
    def lfs_object(path: Path, oid: str) -> Path:
        """Where the LFS object ``oid`` of a repo is stored (olah's ``LocalMirrorRepo`` reads it there)."""
        return path / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid

    @staticmethod
    def settings(path: Path) -> dict:
        """A repo's ``{"private", "createdAt"}``; {} for a repo made before they were recorded (public)."""
        try:
            return json.loads((path / ".git" / REPO_SETTINGS).read_text())
        except FileNotFoundError:
            return {}

    def namespaces(self) -> set[str]:
        """Every namespace holding a repository (of any type)."""
        return {p.parent.name for kind in URL_PREFIX for p in (self.mirrors / kind).glob("*/*")
                if (p / ".git").is_dir()}

    @staticmethod
    def resolve(path: Path, revision: str) -> str:
        """Commit sha of a branch, tag, full sha or full ref name; RevisionNotFound otherwise."""
        if SHA1_RE.fullmatch(revision):
            candidates = [revision]
        else:
            candidates = [f"refs/heads/{revision}", f"refs/tags/{revision}"]
            candidates += [revision] if revision.startswith("refs/") else []
        for candidate in candidates:
            sha = commit_of(path, candidate)
            if sha:
                return sha
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def create_repo(self, repo_type: str, org: str, name: str, *, private: bool, author: str) -> bool:
        """Create a repo with the Hub's initial ``.gitattributes`` commit; False if it already exists."""
        path = self.path(repo_type, org, name)
        with self.lock(path):
            if (path / ".git").is_dir():
                return False
            path.parent.mkdir(parents=True, exist_ok=True)
            # Build it next to its final place and rename, so readers never see a half-made repository.
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{name}.creating-"))
            subprocess.run(["git", "init", "-q", "-b", DEFAULT_BRANCH, str(tmp)], check=True, capture_output=True)
            gitattributes = ("100644", write_blob(tmp, GITATTRIBUTES.encode()))
            files = {".gitattributes": gitattributes}
            self._commit_tree(tmp, f"refs/heads/{DEFAULT_BRANCH}", None, files, "initial commit", author)
            (tmp / ".git" / REPO_SETTINGS).write_text(json.dumps({"private": private, "createdAt": now()}))
            os.replace(tmp, path)
            return True

    def delete_repo(self, path: Path) -> None:
        """Delete a repo: gone at once for readers, its files removed afterwards."""
        with self.lock(path):
            trash = path.parent / f".{path.name}.deleting-{os.getpid()}-{threading.get_ident()}"
            os.replace(path, trash)  # atomic for readers; the slow delete happens out of sight
        shutil.rmtree(trash, ignore_errors=True)

    def commit(self, path: Path, revision: str, header: dict, operations: list[dict], actor: Actor,
               create_pr: bool = False) -> tuple[str, int | None]:
        """Apply NDJSON commit operations as one git commit, authored by ``actor``, on a branch (admins only) or
        on a pull request's ``refs/pr/N`` (admins and the account that opened it).

        ``create_pr``: open a pull request against the branch ``revision`` and commit to it, as one step (anyone
        signed in who can see the repo). Returns the commit sha and the number of the pull request it went to
        (None for a branch).
        """
        expected = (header.get("parentCommit") or "").lower()
        title, description = header.get("summary") or "Upload files", header.get("description") or ""
        with self.lock(path):
            if create_pr:  # the Hub opens it from parentCommit when given, else from the branch head
                num = discussions.next_num(path)
                ref, (base, parent) = f"refs/pr/{num}", self._pr_start(path, revision, expected)
            else:
                ref, num = self._commit_ref(path, revision, actor)
                parent = commit_of(path, ref)
                if parent is None and git(path, "for-each-ref", "--count=1", "refs/heads/").strip():
                    # Only a repository without any branch may get a new branch from a commit.
                    raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                if expected and not (parent or "").startswith(expected):  # the status and words of huggingface.co
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = self._files_after(path, parent, operations)
            message = f"{title}\n\n{description}" if description else title
            sha = self._commit_tree(path, ref, parent, files, message, actor.name, new_ref=create_pr)
            if create_pr:  # opened by a commit, it is open at once (only create_discussion makes drafts)
                discussions.save(path, discussions.new_record(num, title, description, actor.name, status="open",
                                                              base=base, start=parent))
            return sha, num

    def _commit_ref(self, path: Path, revision: str, actor: Actor) -> tuple[str, int | None]:
        """The ref a commit to ``revision`` moves: a branch, or an open or draft pull request's ``refs/pr/N``."""
        pr = PR_REF_RE.fullmatch(revision)
        if pr is None:
            if not actor.admin:
                raise HubError(403, f"{actor.name} cannot commit to {revision} of a repo it does not own: "
                                    "open a pull request (create_pr=True) instead")
            return f"refs/heads/{revision.removeprefix('refs/heads/')}", None
        record = discussions.find(path, int(pr.group(1)))
        if record is None or not record["isPullRequest"]:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        opener = discussions.author_of(record)
        if not actor.admin and opener != actor.name:
            raise HubError(403, f"{actor.name} cannot commit to pull request #{record['num']}, opened by {opener}")
        if record["status"] not in ("open", "draft"):
            raise HubError(400, f"Pull request #{record['num']} is {record['status']}: it takes no more commits")
        return revision, record["num"]

    @staticmethod
    def _pr_start(path: Path, branch: str, expected: str) -> tuple[str, str]:
        """(base ref, start commit) of a pull request opened against ``branch``, from ``expected`` if given."""
        base = f"refs/heads/{branch.removeprefix('refs/heads/')}"
        head = commit_of(path, base)
        if head is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        start = commit_of(path, expected) if COMMIT_PREFIX_RE.fullmatch(expected) else None if expected else head
        if start is None:
            raise HubError(404, f"Invalid rev id: {expected}", "RevisionNotFound")
        return base, start

    def _files_after(self, path: Path, parent: str | None, operations: list[dict]) -> dict[str, tuple[str, str]]:
        """path -> (mode, blob) of the tree ``operations`` make from ``parent``'s."""
        files = {p: (e[0], e[2]) for p, e in ls_tree(path, parent, recursive=True).items()} if parent else {}
        for op in operations:
            self._apply(path, files, op.get("key", ""), op.get("value") or {})
        for p in files:  # one pass instead of a check per operation: no file may sit where a folder is
            parents = p.split("/")[:-1]
            if any("/".join(parents[:i]) in files for i in range(1, len(parents) + 1)):
                raise HubError(400, f"{p} conflicts with a file at one of its parent paths")
        return files

    def _apply(self, path: Path, files: dict[str, tuple[str, str]], key: str, value: dict) -> None:
        target = _clean_path(value.get("path", ""))
        if key == "file":
            content = value.get("content", "")
            data = base64.b64decode(content) if value.get("encoding", "base64") == "base64" else content.encode()
            if len(data) > REGULAR_MAX_SIZE:  # the client sends such files through LFS (preupload says so)
                raise too_large(f"{target}, sent inline rather than through LFS,", REGULAR_MAX_SIZE)
            files[target] = ("100644", write_blob(path, data))
        elif key == "lfsFile":  # also an intra-repo copy of an LFS file, which comes without a size
            oid = str(value.get("oid", "")).lower()
            obj = self.lfs_object(path, oid) if OID_RE.fullmatch(oid) else None
            if obj is None or not obj.is_file():
                raise HubError(422, f"LFS object {oid} for {target} was not uploaded (call the LFS batch API first)")
            files[target] = ("100644", write_blob(path, POINTER.format(oid=oid, size=obj.stat().st_size).encode()))
        elif key == "deletedFile":
            if files.pop(target, None) is None:
                raise HubError(404, f"A file with this name doesn't exist: {target}", "EntryNotFound")
        elif key == "deletedFolder":
            under = [p for p in files if p.startswith(target + "/")]
            if not under:
                raise HubError(404, f"A folder with this name doesn't exist: {target}", "EntryNotFound")
            for p in under:
                del files[p]
        else:
            raise HubError(400, f"Unsupported commit operation: {key}")

    def set_ref(self, path: Path, ref: str, sha: str | None, *, must_exist: bool, message: str | None = None,
                author: str = DEFAULT_ACCOUNT) -> None:
        """Create (``sha``) or delete (``None``) a branch or tag, with Hub-style 409/404 answers; an annotated tag
        names ``author`` as its tagger."""
        with self.lock(path):
            current = commit_of(path, ref)
            if must_exist and current is None:
                raise HubError(404, f"Invalid rev id: {ref.split('/', 2)[-1]}", "RevisionNotFound")
            if not must_exist and current is not None:
                raise HubError(409, f"Reference already exists: {ref}")
            invalid = subprocess.run(["git", "check-ref-format", ref], capture_output=True).returncode
            if invalid or any(part.startswith("-") for part in ref.split("/")):  # never let a name read as an option
                raise HubError(400, f"Invalid reference name: {ref}")
            if sha is None:
                git(path, "update-ref", "-d", ref)
            elif message and ref.startswith("refs/tags/"):  # an annotated tag keeps the message, as on the Hub
                git(path, "tag", "-a", "-m", message, ref[len("refs/tags/"):], sha, env=identity(author))
            else:
                git(path, "update-ref", ref, sha, "0" * 40)

    # Discussions and pull requests change under the same lock as commits: a pull request's number, its ref and
    # its record are taken together, and a merge moves its base branch.
    def create_discussion(self, path: Path, title: str, description: str, pull_request: bool, author: str) -> int:
        """``discussions.create`` under the repo lock: a discussion, or a draft pull request from ``main``."""
        with self.lock(path):
            return discussions.create(path, title, description, pull_request, author)

    def change_discussion(self, path: Path, num: int, change: Callable[[dict], dict]) -> dict:
        """``discussions.change`` under the repo lock: apply ``change`` to a record, save it, return the event."""
        with self.lock(path):
            return discussions.change(path, num, change)

    def merge(self, path: Path, num: int, comment: str | None, author: str) -> str:
        """``discussions.merge`` under the repo lock: squash pull request ``num`` into its base; the merge sha."""
        with self.lock(path):
            return discussions.merge(path, num, comment, author)

    @staticmethod
    def _commit_tree(path: Path, ref: str, parent: str | None, files: dict, message: str, author: str,
                     new_ref: bool = False) -> str:
        """Commit ``files`` on top of ``parent`` as ``author`` and move ``ref`` from ``parent`` (``new_ref``: from
        nothing)."""
        with tempfile.TemporaryDirectory() as tmp:  # a throwaway index keeps the repo's own index untouched
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            entries = "".join(f"{mode} {blob}\t{p}\0" for p, (mode, blob) in files.items())
            git(path, "update-index", "-z", "--index-info", data=entries.encode(), env=env)
            tree = git(path, "write-tree", env=env).decode().strip()
        return commit_and_move(path, ref, tree, [parent] if parent else [], message,
                               None if new_ref else parent, author)


def _clean_path(path: str) -> str:
    path = path.strip("/")
    if not path or any(p in ("", ".", "..") for p in path.split("/")) or path.split("/")[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def path_infos(path: Path, sha: str, paths: list[str]) -> list[dict]:
    """Hub ``paths-info`` entries for those of ``paths`` that exist at commit ``sha`` (LFS files as their object).

    One ``ls-tree`` per distinct folder and one ``cat-file`` for all pointer candidates: olah's lookup re-reads
    every entry of each folder on the way for every path (minutes for a thousand files in one folder).
    """
    folders: dict[str, dict] = {}
    infos = []
    for p in dict.fromkeys(p.strip("/") for p in paths):
        parent, _, base = p.rpartition("/")
        if parent not in folders:
            folders[parent] = ls_tree(path, f"{sha}:{parent}" if parent else sha)
        _, kind, oid, size = folders[parent].get(base, ("", "", "", ""))
        if kind == "tree":
            infos.append({"type": "directory", "oid": oid, "size": 0, "path": p})
        elif kind == "blob":
            infos.append({"type": "file", "oid": oid, "size": int(size), "path": p})
    small = [info for info in infos if info["type"] == "file" and info["size"] < 200]  # maybe an LFS pointer
    for info, found in zip(small, cat_file(path, [info["oid"] for info in small]) if small else []):
        pointer = POINTER_RE.fullmatch(found[2]) if found else None
        if pointer:  # report the LFS object, as the Hub does, not the pointer file
            info["lfs"] = {"oid": pointer.group(1).decode(), "size": int(pointer.group(2)), "pointerSize": info["size"]}
            info["size"] = info["lfs"]["size"]
    return infos
