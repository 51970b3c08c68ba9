"""A local, Hugging Face Hub-compatible endpoint for offline runs and tests.

Point the real clients at it with ``HF_ENDPOINT=http://127.0.0.1:PORT``, ``HF_HUB_DISABLE_XET=1`` and
``HF_TOKEN`` set to a token of this Hub (``hub env`` prints all three).

Accounts and permissions, as far as the pipeline relies on the Hub's: tokens map to accounts in
``ROOT/tokens.json`` (``accounts.py``; re-read when it changes). Reads of public repos need no token; an unknown
token is a 401 on any request; every write needs a valid one (401 without). A namespace belongs to the account of
that name (the default account ``local`` owns ``local``, and administers every namespace that is no account's, as
its organizations): its owner may do everything. Any other signed-in account may, on a repo it can see, open
discussions and pull requests, comment, edit and hide its own comments, rename, publish or close its own
discussions and commit to its own pull requests, and nothing else (403): no commit to a branch, no branch or tag,
no merge, no deletion. A private repo (``visibility``/``private`` at creation) is visible to its owner only: to
anyone else it does not exist (the Hub's 401/404 ``RepoNotFound``) and listings leave it out. Commits are authored
in git by the account that made them (``list_repo_commits``' ``authors``), and discussions and their events name
theirs (``author``).

Requests pass ``guard.RequestGuard`` first: a ``Host`` that does not name this server (DNS rebinding) or a write
from another ``Origin`` (a web page) is a 403, and bodies are capped as they arrive (413): commits at 64 MiB
(``--max-commit-bytes``), LFS objects at 50 GiB (``--max-lfs-bytes``; also refused past the size their batch call
announced), anything else at 8 MiB (``--max-json-bytes``). A commit's body must be ``application/x-ndjson`` or
JSON (415 otherwise: a web form cannot send one) and an inline file at most the Hub's 10 MB (413). LFS uploads
carry no token (the client sends none to an upload URL): the batch call hands a signed URL for one object of one
size. Listening on a non-loopback ``--host`` logs one warning line.

Repositories are plain git repositories in olah's "mirror" layout,
``ROOT/mirrors/{models,datasets,spaces}/ORG/NAME/.git``, with LFS content stored as pointer files in git and
the objects under ``.git/lfs/objects/aa/bb/OID`` (the path olah's ``LocalMirrorRepo`` reads; it builds it from
the working directory, which is why the repositories are non-bare, although no working tree is ever checked out).

Reads are served by olah's mirror backend (``LocalMirrorRepo``: repo metadata, refs, tree listings) behind our
own routes, which first resolve the repository and revision so the client gets Hub-style errors
(``X-Error-Code: RepoNotFound / RevisionNotFound / EntryNotFound``, where olah answers 401 or falls back to an
upstream), and which hand olah a full commit sha, so a branch or tag is never served stale. olah's own router is
mounted last, offline, for anything else. We serve these reads ourselves, where olah's fall short:
``/resolve`` (olah ignores ``Range``, which ``HfFileSystem`` and pyarrow rely on, sends no ``ETag`` or
``X-Repo-Commit`` on GET, and fails with a 500 on a missing file), commit history (olah's lacks the
``authors[].user`` the client parses), paths-info (olah's lookup is quadratic in the folder size) and the
``lastCommit`` of expanded listings (olah takes it from HEAD, not from the requested revision).
Writes (repos, preupload, LFS batch/upload, NDJSON commits, branches, tags, discussions) and the repo listings
(``/api/models|datasets|spaces``, paged by a ``Link`` header as the Hub's) are all ours.

Discussions and pull requests behave like the Hub's, as far as its client and docs tell: one numbering for both;
a pull request is the git ref ``refs/pr/N``, opened at the head of ``main`` and in status "draft" when made with
``create_discussion``/``create_pull_request`` (open when made by ``create_commit(create_pr=True)``); commits go
to it through the commit endpoint (revision ``refs%2Fpr%2FN``) while it is open or draft, and every read takes
``refs/pr/N`` as a revision. Merging needs it open (drafts are published first, as on the Hub) and squashes it
into one commit on ``main`` titled "<title> (#N)", whose sha the details give as ``mergeCommitId``; a file both
sides changed differently is a 409. Records (title, status, comments, status and title changes) are JSON files in
the repo's ``.git/hf_discussions/``, so they go with the repo; commit events are read from git.

``--access-log FILE`` appends one JSON line per request (method, raw path and query, ``Range``, status, bytes
sent) and never another header: tokens travel in ``Authorization``.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

import yaml
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from gitdb import IStream, LooseObjectDB
from olah.configs import OlahConfig
from olah.mirror.repos import LocalMirrorRepo
from olah.server_routes import router as olah_router

from hf_pipeline.hub.accounts import DEFAULT_ACCOUNT, TOKENS_FILE, allowed_host_names, network_warning, read_tokens
from hf_pipeline.hub.guard import MiB, HubError, Limits, RequestGuard, UploadSigner, too_large

DEFAULT_BRANCH = "main"
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
GIT_ENV = {
    "TZ": "UTC",  # olah prints commit dates with a "Z" suffix whatever their offset: make that true
    # git's identity where it records one outside a commit (reflogs); commits and tags name the account making them.
    "GIT_COMMITTER_NAME": DEFAULT_ACCOUNT, "GIT_COMMITTER_EMAIL": f"{DEFAULT_ACCOUNT}@localhost",
}
# Patterns stored as LFS, as in the .gitattributes the Hub puts in every new repo (abridged).
LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lz4", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*.gguf",
    "*.jpg", "*.jpeg", "*.png", "*.webp", "*.mp3", "*.wav", "*.flac", "*.ogg", "*.mp4", "*tfevents*",
]
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS)
REGULAR_MAX_SIZE = 10 * 1024 * 1024  # the Hub refuses non-LFS files above 10 MB
DISCUSSIONS_PER_PAGE = 50  # the Hub's page size; the client pages until ``start + len(page) >= count``
# ``status`` filters of the discussions list. "open" includes drafts and "closed" merged pull requests, as the
# Hub's Community tab shows them: a driver looking for its still-draft pull request finds it among the open ones.
STATUS_FILTERS = {"all": None, "open": {"open", "draft"}, "closed": {"closed", "merged"}}
TYPE_FILTERS = {"all": None, "discussion": False, "pull_request": True}  # ``type`` filter -> isPullRequest


REPO_SETTINGS = "hf_repo.json"  # in a repo's .git: {"private": bool, "createdAt": date}
LISTING_PAGE_SIZE = 1000  # repos per page of /api/models|datasets|spaces, as on the Hub
# What the listings take. ``full``, ``config``, ``cardData`` and ``expand`` ask for more data per repo: the summary
# is all there is here, and the client reads what is missing as None.
LISTING_PARAMS = {"author", "search", "sort", "direction", "limit", "cursor", "full", "config", "cardData", "expand"}
LISTING_SORTS = {"id", "createdAt", "lastModified", "downloads", "likes", "trendingScore"}  # counts: 0 for all
COMMIT_CONTENT_TYPES = {"application/x-ndjson", "application/json"}  # never a type a web form can send


@dataclass(frozen=True)
class Actor:
    """The account making a write, and whether it administers the repo's namespace (see ``Accounts.admins``)."""

    name: str
    admin: bool


class Accounts:
    """token -> account name from ``ROOT/tokens.json``, re-read whenever the file changes, and who owns what.

    A namespace belongs to the account of that name; a namespace that is no account's is an organization the
    default account administers (so a single-user Hub can publish under any organization name, as its admin).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stamp: tuple | None = None
        self._tokens: dict[str, str] = {}
        self._guard = threading.Lock()

    def _current(self) -> dict[str, str]:
        try:
            stat = (self.root / TOKENS_FILE).stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)  # the file is replaced, never edited in place
        with self._guard:
            if stamp != self._stamp:
                self._tokens, self._stamp = read_tokens(self.root), stamp
            return self._tokens

    def account(self, authorization: str | None) -> str | None:
        """The account an ``Authorization`` header names; None without one; 401 for a token this Hub never gave."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        name = self._current().get(token.strip()) if scheme.lower() == "bearer" else None
        if name is None:  # the Hub's words: the client then raises a plain 401 HfHubHTTPError
            raise HubError(401, "Invalid credentials in Authorization header")
        return name

    def names(self) -> set[str]:
        return {DEFAULT_ACCOUNT, *self._current().values()}

    def admins(self, account: str | None, namespace: str) -> bool:
        """Whether ``account`` may do everything in ``namespace``: its own, or an organization's for the default."""
        if account is None:
            return False
        return account == namespace or (account == DEFAULT_ACCOUNT and namespace not in self.names())


# -- git plumbing: every call reads refs and objects from disk, so nothing can be served stale -----------------
def _git_run(path: Path, *args: str, data: bytes | None = None,
             env: dict | None = None) -> subprocess.CompletedProcess:
    """Run git on a repo's ``.git``: no working tree is ever used."""
    return subprocess.run(["git", "--git-dir", str(path / ".git"), *args], input=data, capture_output=True,
                          env={**os.environ, **GIT_ENV, **(env or {})})


def _git(path: Path, *args: str, data: bytes | None = None, env: dict | None = None, check: bool = True) -> bytes:
    """git's output; b"" on failure when ``check`` is False, else a 500."""
    proc = _git_run(path, *args, data=data, env=env)
    if proc.returncode:
        if not check:
            return b""
        raise HubError(500, f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _commit_of(path: Path, rev: str) -> str | None:
    # Callers only pass "refs/..." names or hex shas, never anything git could read as an option.
    return _git(path, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False).decode().strip() or None


def _cat_file(path: Path, specs: list[str]) -> list[tuple[str, str, bytes] | None]:
    """(oid, type, content) of each ``<rev>:<path>`` or oid, None where missing: one process for all of them."""
    out = _git(path, "cat-file", "--batch", data="".join(f"{s}\n" for s in specs).encode())
    results = []
    for _ in specs:  # each record: "<oid> <type> <size>\n<content>\n", or "<spec> missing\n"
        header, out = out.split(b"\n", 1)
        fields = header.decode(errors="replace").split()
        if header.endswith((b" missing", b" ambiguous")) or len(fields) != 3:
            results.append(None)
            continue
        size = int(fields[2])
        results.append((fields[0], fields[1], out[:size]))
        out = out[size + 1:]
    return results


def _identity(account: str) -> dict[str, str]:
    """git's author and committer environment for a commit or tag made by ``account``."""
    email = f"{account}@localhost"
    return {"GIT_AUTHOR_NAME": account, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": account, "GIT_COMMITTER_EMAIL": email}


def _commit_and_move(path: Path, ref: str, tree: str, parents: list[str], message: str, old: str | None,
                     author: str) -> str:
    """Commit ``tree`` as ``author`` and move ``ref`` to it from ``old`` (None: the ref must not exist yet)."""
    parent_args = [arg for parent in parents for arg in ("-p", parent)]
    sha = _git(path, "commit-tree", tree, *parent_args, "-F", "-", data=message.encode(),
               env=_identity(author)).decode().strip()
    # Compare-and-swap on the ref: a concurrent writer outside this process cannot be silently overwritten.
    _git(path, "update-ref", ref, sha, old or "0" * 40)
    return sha


def _merge_tree(path: Path, ours: str, theirs: str) -> tuple[str, list[str]]:
    """Three-way merge of two commits from their merge base, in the object store: (tree, conflicted files).

    git's own merge, as a git server runs it: a file changed on one side only, or identically on both, merges;
    different changes to one file merge line by line when they touch different lines (LFS pointers never do).
    """
    proc = _git_run(path, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", ours, theirs)
    if proc.returncode not in (0, 1):  # 1: conflicts, listed after the tree
        raise HubError(500, f"git merge-tree failed: {proc.stderr.decode(errors='replace').strip()}")
    tree, *conflicts = proc.stdout.decode().split("\0")
    return tree, sorted(set(filter(None, conflicts)))


def _blob(path: Path, data: bytes) -> str:
    """Write a blob with gitdb's pure-Python loose-object store: no subprocess per file in big commits."""
    odb = LooseObjectDB(str(path / ".git" / "objects"))
    return odb.store(IStream("blob", len(data), io.BytesIO(data))).binsha.hex()


def _ls_tree(path: Path, treeish: str, recursive: bool = False) -> dict[str, tuple[str, str, str, str]]:
    """path -> (mode, type, oid, size) under a commit or ``<commit>:<folder>``; {} if it is not a folder."""
    out = _git(path, "ls-tree", "-z", "-l", *(["-r"] if recursive else []), treeish, check=False).decode()
    entries = {}
    for record in filter(None, out.split("\0")):
        meta, name = record.split("\t", 1)
        mode, kind, oid, size = meta.split()
        entries[name] = (mode, kind, oid, size)
    return entries


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
        path = self.path(repo_type, org, name)
        if not (path / ".git").is_dir():
            raise HubError(404, f"Repository {org}/{name} not found", "RepoNotFound")
        return path

    def lock(self, path: Path) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(path, threading.Lock())

    @staticmethod
    def lfs_object(path: Path, oid: str) -> Path:
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
            sha = _commit_of(path, candidate)
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
            gitattributes = ("100644", _blob(tmp, GITATTRIBUTES.encode()))
            files = {".gitattributes": gitattributes}
            self._commit_tree(tmp, f"refs/heads/{DEFAULT_BRANCH}", None, files, "initial commit", author)
            (tmp / ".git" / REPO_SETTINGS).write_text(json.dumps({"private": private, "createdAt": _now()}))
            os.replace(tmp, path)
            return True

    def delete_repo(self, path: Path) -> None:
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
                num = _next_discussion_num(path)
                ref, (base, parent) = f"refs/pr/{num}", self._pr_start(path, revision, expected)
            else:
                ref, num = self._commit_ref(path, revision, actor)
                parent = _commit_of(path, ref)
                if parent is None and _git(path, "for-each-ref", "--count=1", "refs/heads/").strip():
                    # Only a repository without any branch may get a new branch from a commit.
                    raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
                if expected and not (parent or "").startswith(expected):  # the status and words of huggingface.co
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = self._files_after(path, parent, operations)
            message = f"{title}\n\n{description}" if description else title
            sha = self._commit_tree(path, ref, parent, files, message, actor.name, new_ref=create_pr)
            if create_pr:  # opened by a commit, it is open at once (only create_discussion makes drafts)
                _save_discussion(path, _new_discussion(num, title, description, actor.name, status="open", base=base,
                                                       start=parent))
            return sha, num

    def _commit_ref(self, path: Path, revision: str, actor: Actor) -> tuple[str, int | None]:
        """The ref a commit to ``revision`` moves: a branch, or an open or draft pull request's ``refs/pr/N``."""
        pr = PR_REF_RE.fullmatch(revision)
        if pr is None:
            if not actor.admin:
                raise HubError(403, f"{actor.name} cannot commit to {revision} of a repo it does not own: "
                                    "open a pull request (create_pr=True) instead")
            return f"refs/heads/{revision.removeprefix('refs/heads/')}", None
        record = _find_discussion(path, int(pr.group(1)))
        if record is None or not record["isPullRequest"]:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        if not actor.admin and _author_of(record) != actor.name:
            raise HubError(403, f"{actor.name} cannot commit to pull request #{record['num']}, "
                                f"opened by {_author_of(record)}")
        if record["status"] not in ("open", "draft"):
            raise HubError(400, f"Pull request #{record['num']} is {record['status']}: it takes no more commits")
        return revision, record["num"]

    @staticmethod
    def _pr_start(path: Path, branch: str, expected: str) -> tuple[str, str]:
        """(base ref, start commit) of a pull request opened against ``branch``, from ``expected`` if given."""
        base = f"refs/heads/{branch.removeprefix('refs/heads/')}"
        head = _commit_of(path, base)
        if head is None:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        start = _commit_of(path, expected) if COMMIT_PREFIX_RE.fullmatch(expected) else None if expected else head
        if start is None:
            raise HubError(404, f"Invalid rev id: {expected}", "RevisionNotFound")
        return base, start

    def _files_after(self, path: Path, parent: str | None, operations: list[dict]) -> dict[str, tuple[str, str]]:
        """path -> (mode, blob) of the tree ``operations`` make from ``parent``'s."""
        files = {p: (e[0], e[2]) for p, e in _ls_tree(path, parent, recursive=True).items()} if parent else {}
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
            files[target] = ("100644", _blob(path, data))
        elif key == "lfsFile":  # also an intra-repo copy of an LFS file, which comes without a size
            oid = str(value.get("oid", "")).lower()
            obj = self.lfs_object(path, oid) if OID_RE.fullmatch(oid) else None
            if obj is None or not obj.is_file():
                raise HubError(422, f"LFS object {oid} for {target} was not uploaded (call the LFS batch API first)")
            files[target] = ("100644", _blob(path, POINTER.format(oid=oid, size=obj.stat().st_size).encode()))
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
            current = _commit_of(path, ref)
            if must_exist and current is None:
                raise HubError(404, f"Invalid rev id: {ref.split('/', 2)[-1]}", "RevisionNotFound")
            if not must_exist and current is not None:
                raise HubError(409, f"Reference already exists: {ref}")
            invalid = subprocess.run(["git", "check-ref-format", ref], capture_output=True).returncode
            if invalid or any(part.startswith("-") for part in ref.split("/")):  # never let a name read as an option
                raise HubError(400, f"Invalid reference name: {ref}")
            if sha is None:
                _git(path, "update-ref", "-d", ref)
            elif message and ref.startswith("refs/tags/"):  # an annotated tag keeps the message, as on the Hub
                _git(path, "tag", "-a", "-m", message, ref[len("refs/tags/"):], sha, env=_identity(author))
            else:
                _git(path, "update-ref", ref, sha, "0" * 40)

    def create_discussion(self, path: Path, title: str, description: str, pull_request: bool, author: str) -> int:
        """A new discussion, or a draft pull request whose ``refs/pr/N`` starts at the head of ``main``."""
        with self.lock(path):
            num = _next_discussion_num(path)
            if not pull_request:
                _save_discussion(path, _new_discussion(num, title, description, author, status="open"))
                return num
            start = _commit_of(path, f"refs/heads/{DEFAULT_BRANCH}")
            if start is None:
                raise HubError(404, f"Invalid rev id: {DEFAULT_BRANCH}", "RevisionNotFound")
            _git(path, "update-ref", f"refs/pr/{num}", start, "0" * 40)
            _save_discussion(path, _new_discussion(num, title, description, author, status="draft", start=start))
            return num

    def change_discussion(self, path: Path, num: int, change: Callable[[dict], dict]) -> dict:
        """Apply ``change`` to a discussion's record and save it, under the repo lock; returns the new event.

        ``change`` checks that its actor may make it (it sees the record: who opened it, who wrote a comment).
        """
        with self.lock(path):
            record = _load_discussion(path, num)
            known = len(record["events"])
            event = change(record)
            _stamp_head(path, record, record["events"][known:])
            _save_discussion(path, record)
            return _public(event)

    def merge(self, path: Path, num: int, comment: str | None, author: str) -> str:
        """Merge an open pull request into its base as the Hub does; returns the merge commit's sha.

        A squash merge, as huggingface.co's history shows: one commit on the base branch with the base head as
        its only parent, titled "<PR title> (#N)" and listing the pull request's commits. Its tree is the pull
        request's own when the base has not moved since the pull request started; else git's three-way merge,
        and a 409 naming the files that conflict. ``refs/pr/N`` stays where it is.
        """
        with self.lock(path):
            record = _load_discussion(path, num)
            _check_mergeable(record)
            head, base = _commit_of(path, f"refs/pr/{num}"), _commit_of(path, record["base"])
            for ref, sha in ((f"refs/pr/{num}", head), (record["base"], base)):
                if sha is None:
                    raise HubError(404, f"Invalid rev id: {ref}", "RevisionNotFound")
            tree, conflicts = _merge_tree(path, base, head)
            if conflicts:
                raise HubError(409, f"Merge conflict in: {', '.join(conflicts)}")
            message = _squash_message(record, _commit_events(path, record))
            record["mergeCommitId"] = _commit_and_move(path, record["base"], tree, [base], message, base, author)
            known = len(record["events"])
            _record_status(record, "merged", comment, author)
            _stamp_head(path, record, record["events"][known:])
            _save_discussion(path, record)
            return record["mergeCommitId"]

    @staticmethod
    def _commit_tree(path: Path, ref: str, parent: str | None, files: dict, message: str, author: str,
                     new_ref: bool = False) -> str:
        """Commit ``files`` on top of ``parent`` as ``author`` and move ``ref`` from ``parent`` (``new_ref``: from
        nothing)."""
        with tempfile.TemporaryDirectory() as tmp:  # a throwaway index keeps the repo's own index untouched
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            entries = "".join(f"{mode} {blob}\t{p}\0" for p, (mode, blob) in files.items())
            _git(path, "update-index", "-z", "--index-info", data=entries.encode(), env=env)
            tree = _git(path, "write-tree", env=env).decode().strip()
        return _commit_and_move(path, ref, tree, [parent] if parent else [], message,
                                None if new_ref else parent, author)


def _clean_path(path: str) -> str:
    path = path.strip("/")
    if not path or any(p in ("", ".", "..") for p in path.split("/")) or path.split("/")[0] == ".git":
        raise HubError(400, f"Invalid path in repo: {path!r}")
    return path


def path_infos(path: Path, sha: str, paths: list[str]) -> list[dict]:
    """Hub ``paths-info`` entries for those of ``paths`` that exist at commit ``sha``.

    One ``ls-tree`` per distinct folder and one ``cat-file`` for all pointer candidates: olah's lookup re-reads
    every entry of each folder on the way for every path (minutes for a thousand files in one folder).
    """
    folders: dict[str, dict] = {}
    infos = []
    for p in dict.fromkeys(p.strip("/") for p in paths):
        parent, _, base = p.rpartition("/")
        if parent not in folders:
            folders[parent] = _ls_tree(path, f"{sha}:{parent}" if parent else sha)
        _, kind, oid, size = folders[parent].get(base, ("", "", "", ""))
        if kind == "tree":
            infos.append({"type": "directory", "oid": oid, "size": 0, "path": p})
        elif kind == "blob":
            infos.append({"type": "file", "oid": oid, "size": int(size), "path": p})
    small = [info for info in infos if info["type"] == "file" and info["size"] < 200]  # maybe an LFS pointer
    for info, found in zip(small, _cat_file(path, [info["oid"] for info in small]) if small else []):
        pointer = POINTER_RE.fullmatch(found[2]) if found else None
        if pointer:  # report the LFS object, as the Hub does, not the pointer file
            info["lfs"] = {"oid": pointer.group(1).decode(), "size": int(pointer.group(2)), "pointerSize": info["size"]}
            info["size"] = info["lfs"]["size"]
    return infos


def _last_commit(path: Path, sha: str, path_in_repo: str) -> dict | None:
    """The ``lastCommit`` of an expanded tree/paths-info entry: the latest commit touching it up to ``sha``."""
    out = _git(path, "log", "-1", "--format=%H%x00%s%x00%ct", sha, "--", path_in_repo).decode().strip()
    if not out:
        return None
    oid, title, timestamp = out.split("\0")
    return {"id": oid, "title": title, "date": _date_of(timestamp)}


def _lfs_patterns(path: Path, sha: str | None) -> list[str]:
    found = _cat_file(path, [f"{sha}:.gitattributes"])[0] if sha else None
    lines = found[2].decode(errors="replace").splitlines() if found else GITATTRIBUTES.splitlines()
    return [line.split()[0] for line in lines if "filter=lfs" in line]


def _is_lfs(file: dict, patterns: list[str]) -> bool:
    """The Hub's rule: LFS for large or binary files, or names matching the repo's ``.gitattributes``."""
    if int(file.get("size", 0)) > REGULAR_MAX_SIZE or b"\0" in base64.b64decode(file.get("sample", "")):
        return True
    return any(fnmatch.fnmatch(file["path"].rsplit("/", 1)[-1], p) for p in patterns)


def _raw_rev_and_path(request: Request, marker: str, start: int) -> tuple[str, str]:
    """Split ``.../{marker}/{revision}/{path}`` from the raw URL: the client %-encodes '/' in revisions."""
    parts = request.scope["raw_path"].decode().split("/")
    i = parts.index(marker, start)
    return unquote(parts[i + 1]), "/".join(unquote(p) for p in parts[i + 2:])


def _date_of(timestamp: str) -> str:
    """A git timestamp (seconds since the epoch, as ``%ct`` prints it) in the Hub's date format."""
    return _hub_date(datetime.fromtimestamp(int(timestamp), timezone.utc))


def _hub_date(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)  # the one format the client parses: milliseconds and a "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _now() -> str:
    return _hub_date(datetime.now(timezone.utc))


def _bytes_response(request: Request, data: bytes, headers: dict[str, str]) -> Response:
    """Serve an in-memory git blob, honouring a single ``Range: bytes=a-b`` as HfFileSystem sends it."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", request.headers.get("range", "").strip())
    if not match or match.groups() == ("", ""):
        return Response(data, headers={**headers, "Content-Length": str(len(data))})
    first, last = match.groups()
    start = int(first) if first else max(len(data) - int(last), 0)
    end = min(int(last), len(data) - 1) if first and last else len(data) - 1
    if start >= len(data) or start > end:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
    return Response(data[start:end + 1], status_code=206,
                    headers={**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}",
                             "Content-Length": str(end - start + 1)})


# -- discussions and pull requests: one JSON record per discussion in .git/hf_discussions/N.json ---------------
# A record holds what git does not: number, title, status, the stored events (comments, status and title changes)
# and, for a pull request, its base branch, the commit it was opened from ("start") and its merge commit. Its
# commits are read from git (start..refs/pr/N) when asked for, so a commit to a pull request never rewrites it.
def _discussions_dir(path: Path) -> Path:
    return path / ".git" / "hf_discussions"


def _find_discussion(path: Path, num: int) -> dict | None:
    try:
        return json.loads((_discussions_dir(path) / f"{num}.json").read_text())
    except FileNotFoundError:
        return None


def _load_discussion(path: Path, num: int) -> dict:
    record = _find_discussion(path, num)
    if record is None:
        raise HubError(404, f"Discussion #{num} not found")
    return record


def _all_discussions(path: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in _discussions_dir(path).glob("*.json")]


def _next_discussion_num(path: Path) -> int:
    """Discussions and pull requests share one numbering, as on the Hub (call it under the repo lock)."""
    return max((int(f.stem) for f in _discussions_dir(path).glob("*.json")), default=0) + 1


def _save_discussion(path: Path, record: dict) -> None:
    """Replace a record atomically (under the repo lock): a reader sees the old one or the new one."""
    folder = _discussions_dir(path)
    folder.mkdir(exist_ok=True)
    tmp = folder / f"{record['num']}.json.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / f"{record['num']}.json")


def _new_discussion(num: int, title: str, description: str, author: str, *, status: str, base: str | None = None,
                    start: str | None = None) -> dict:
    """A discussion's record, or a pull request's with ``base`` (its target ref) and ``start`` (commit)."""
    record = {"num": num, "title": title, "status": status, "isPullRequest": start is not None, "author": author,
              "createdAt": _now(), "events": [_comment_event(description, author)] if description else []}
    if start is not None:
        record.update(base=base or f"refs/heads/{DEFAULT_BRANCH}", start=start, mergeCommitId=None)
    return record


def _valid_title(title: Any) -> str:
    title = title.strip() if isinstance(title, str) else ""
    if not 3 <= len(title) <= 200:  # the Hub's rule, which the client documents
        raise HubError(400, "Title must be between 3 and 200 characters long")
    return title


def _author(account: str) -> dict:
    """An author as the Hub gives it in discussions and their events (the client reads its ``name``)."""
    return {"name": account, "fullname": account, "type": "user", "avatarUrl": ""}


def _author_of(record_or_event: dict) -> str:
    """Who opened a discussion or wrote an event; records made before authors were kept are the default account's."""
    author = record_or_event.get("author", DEFAULT_ACCOUNT)
    return author["name"] if isinstance(author, dict) else author


def _require_author_or_admin(record_or_event: dict, actor: Actor, what: str) -> None:
    if not actor.admin and _author_of(record_or_event) != actor.name:
        raise HubError(403, f"Only {_author_of(record_or_event)} (or the repo's owner) can {what}")


def _event(kind: str, data: dict, author: str) -> dict:
    return {"id": uuid.uuid4().hex[:24], "type": kind, "createdAt": _now(), "author": _author(author), "data": data}


def _comment_version(text: str, when: str, author: str) -> dict:
    return {"raw": text, "html": f"<p>{html.escape(text)}</p>", "updatedAt": when, "author": _author(author)}


def _comment_event(text: str, author: str) -> dict:
    event = _event("comment", {"edited": False, "hidden": False, "history": []}, author)
    event["data"]["latest"] = _comment_version(text, event["createdAt"], author)
    return event


def _add_comment(record: dict, text: Any, author: str) -> dict:
    """Anyone who can see the repo may comment (the route checks that they are signed in)."""
    if not isinstance(text, str) or not text.strip():
        raise HubError(400, "A comment cannot be empty")
    event = _comment_event(text.strip(), author)
    record["events"].append(event)
    return event


def _comment(record: dict, comment_id: str) -> dict:
    for event in record["events"]:
        if event["type"] == "comment" and event["id"] == comment_id:
            return event
    raise HubError(404, f"Comment {comment_id} not found")


def _edit_comment(record: dict, comment_id: str, text: Any, actor: Actor) -> dict:
    """Only a comment's author may edit it, as on the Hub (an admin may hide it, not reword it)."""
    if not isinstance(text, str) or not text.strip():
        raise HubError(400, "A comment cannot be empty")
    event = _comment(record, comment_id)
    if _author_of(event) != actor.name:
        raise HubError(403, f"Only {_author_of(event)} can edit this comment")
    data = event["data"]
    if data["hidden"]:
        raise HubError(403, "A hidden comment cannot be edited")
    data["history"].insert(0, data["latest"])  # earlier versions, newest first
    data.update(edited=True, latest=_comment_version(text.strip(), _now(), actor.name))
    return event


def _hide_comment(record: dict, comment_id: str, actor: Actor) -> dict:
    event = _comment(record, comment_id)
    _require_author_or_admin(event, actor, "hide this comment")
    event["data"].update(hidden=True, history=[], latest=_comment_version("", _now(), actor.name))  # content gone
    return event


def _rename(record: dict, title: Any, actor: Actor) -> dict:
    _require_author_or_admin(record, actor, f"rename #{record['num']}")
    event = _event("title-change", {"from": record["title"], "to": _valid_title(title)}, actor.name)
    record["title"] = event["data"]["to"]
    record["events"].append(event)
    return event


def _change_status(record: dict, status: Any, comment: Any, actor: Actor) -> dict:
    """What the status endpoint may do: open (a draft is published) or close; a merged pull request stays so.
    Only the discussion's author and the repo's admins may change it."""
    _require_author_or_admin(record, actor, f"change the status of #{record['num']}")
    if status not in ("open", "closed"):
        raise HubError(400, f"Invalid status: {status}")
    if record["status"] == "merged":
        raise HubError(400, "This pull request has been merged: its status cannot change")
    if record["status"] == status:
        raise HubError(400, f"Discussion #{record['num']} is already {status}")
    return _record_status(record, status, comment, actor.name)


def _record_status(record: dict, status: str, comment: Any, author: str) -> dict:
    if comment:
        _add_comment(record, comment, author)
    event = _event("status-change", {"status": status}, author)
    record["status"] = status
    record["events"].append(event)
    return event


def _check_mergeable(record: dict) -> None:
    if not record["isPullRequest"]:
        raise HubError(400, f"Discussion #{record['num']} is not a pull request")
    if record["status"] == "draft":  # the Hub's page: "This branch is in draft mode, publish it to be able to merge."
        raise HubError(400, f"Pull request #{record['num']} is a draft: publish it (status open) to merge it")
    if record["status"] != "open":
        raise HubError(400, f"Pull request #{record['num']} is {record['status']}: it cannot be merged")


def _commit_events(path: Path, record: dict) -> list[dict]:
    """A pull request's commits, oldest first, as the Hub's ``commit`` events (their id is the commit sha)."""
    head = _commit_of(path, f"refs/pr/{record['num']}")
    if head is None:
        return []
    out = _git(path, "log", "--reverse", "-z", "--format=%H%x1f%ct%x1f%an%x1f%s", f"^{record['start']}",
               head).decode()
    events = []
    for item in filter(None, out.split("\0")):
        oid, timestamp, author, subject = item.split("\x1f", 3)
        when = _date_of(timestamp)
        events.append({"id": oid, "type": "commit", "createdAt": when, "author": _author(author),
                       "data": {"subject": subject, "oid": oid}})
    return events


def _stamp_head(path: Path, record: dict, events: list[dict]) -> None:
    """Remember the pull request's head in its new events, to place them among its commits (git dates are seconds)."""
    if record["isPullRequest"]:
        head = _commit_of(path, f"refs/pr/{record['num']}")
        for event in events:
            event["head"] = head


def _public(event: dict) -> dict:
    return {key: value for key, value in event.items() if key != "head"}


def _timeline(record: dict, commits: list[dict]) -> list[dict]:
    """Stored events and commits in the order they happened: each stored event follows the commits up to its head."""
    position = {commit["id"]: i + 1 for i, commit in enumerate(commits)}  # the start commit, or none: 0
    timeline, shown = [], 0
    for event in record["events"]:
        upto = position.get(event.get("head"), 0)
        timeline += commits[shown:upto]
        shown = max(shown, upto)
        timeline.append(_public(event))
    return timeline + commits[shown:]


def _squash_message(record: dict, commits: list[dict]) -> str:
    """The Hub's merge commit message: "<title> (#N)", then one line per commit of the pull request."""
    lines = "".join(f"- {c['data']['subject']} ({c['data']['oid']})\n" for c in commits)
    return f"{record['title']} (#{record['num']})\n\n{lines}"


def _conflicts(path: Path, record: dict) -> list[str]:
    """Files an open or draft pull request changes that its base also changed differently since it started."""
    head, base = _commit_of(path, f"refs/pr/{record['num']}"), _commit_of(path, record["base"])
    if record["status"] not in ("open", "draft") or head is None or base is None:
        return []
    return _merge_tree(path, base, head)[1]


def _pr_diff(path: Path, record: dict) -> str:
    """Unified diff of a pull request against the commit it started from (LFS files show as pointer changes)."""
    head = _commit_of(path, f"refs/pr/{record['num']}")
    if head is None:
        return ""
    return _git(path, "diff", "--no-color", "--no-renames", record["start"], head).decode(errors="replace")


def create_app(root: Path, host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = (),
               limits: Limits = Limits(), listing_page_size: int = LISTING_PAGE_SIZE) -> FastAPI:
    """Build the ASGI app serving every repository under ``root`` (created if missing).

    ``host``: the address the server listens on; requests must name it, a loopback name or one of
    ``allowed_hosts`` in their ``Host`` header. ``limits``: caps on request bodies. ``listing_page_size``: repos
    per page of the repo listings.
    """
    store = Store(root)
    accounts = Accounts(store.root)
    signer = UploadSigner()
    app = FastAPI(title="hf_pipeline local hub")
    app.add_middleware(RequestGuard, host_names=allowed_host_names(host, allowed_hosts), limits=limits)
    # olah's handlers read their settings from app.state. Offline, with an unroutable upstream: a route we did not
    # override must never reach huggingface.co.
    config = OlahConfig()
    config.offline = True
    config.mirrors_path = [str(store.mirrors)]
    config.repos_path = str(store.root / "olah-cache")
    config.hf_scheme, config.hf_netloc, config.hf_lfs_netloc = "http", "127.0.0.1:9", "127.0.0.1:9"
    config.metadata_cache_ttl = 0  # its ref -> sha cache would serve a moved branch stale; our routes never use it
    app.state.app_settings = SimpleNamespace(config=config)
    app.state.logger = None
    app.state.templates = None  # olah's HTML pages are shadowed by index() below
    app.state.store = store

    @app.exception_handler(HubError)
    async def _hub_error(_: Request, exc: HubError) -> JSONResponse:
        return exc.response()

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def repo_url(request: Request, repo_type: str, org: str, name: str) -> str:
        return f"{base(request)}/{URL_PREFIX[repo_type]}{org}/{name}"

    def with_olah(path: Path, repo_type: str, org: str, name: str, read: Callable[[LocalMirrorRepo], Any]) -> Any:
        """One read through olah's mirror backend, with a fresh reader: nothing is cached between requests."""
        mirror = LocalMirrorRepo(str(path), repo_type, org, name)
        try:
            return read(mirror)
        finally:
            mirror._git_repo.close()  # stop its persistent `git cat-file` processes now, not at garbage collection

    # -- who may do what: every route starts with one of these ---------------------------------------------------
    def account_of(request: Request) -> str | None:
        return accounts.account(request.headers.get("authorization"))

    def signed_in(request: Request) -> str:
        account = account_of(request)
        if account is None:
            raise HubError(401, "You must be authenticated to do this: send a token of this Hub (HF_TOKEN, see "
                                "`hub env`)")
        return account

    def visible(path: Path, org: str, account: str | None) -> bool:
        return not store.settings(path).get("private") or accounts.admins(account, org)

    def readable(request: Request, repo_type: str, org: str, name: str) -> Path:
        """A repo the request may read: public, or private and administered by its account. Anything else is a
        repo that does not exist, as the Hub answers (401 without a token, 404 with one): RepositoryNotFoundError."""
        account = account_of(request)
        path = store.find(repo_type, org, name)
        if not visible(path, org, account):
            raise HubError(401 if account is None else 404, f"Repository {org}/{name} not found", "RepoNotFound")
        return path

    def contributor(request: Request, repo_type: str, org: str, name: str) -> tuple[Path, Actor]:
        """A signed-in account that can see the repo: it may open discussions and pull requests and comment."""
        account = signed_in(request)
        return readable(request, repo_type, org, name), Actor(account, accounts.admins(account, org))

    def admin(request: Request, repo_type: str, org: str, name: str, action: str) -> tuple[Path, Actor]:
        """The repo's owner (or, for an organization's repo, the default account): it may do everything."""
        path, actor = contributor(request, repo_type, org, name)
        if not actor.admin:
            raise HubError(403, f"{actor.name} cannot {action} in {org}/{name}: only the repo's owner can")
        return path, actor

    # -- service, identity and validation -------------------------------------------------------------------
    @app.get("/api/local/health")
    def health() -> dict:
        return {"status": "ok", "root": str(store.root)}

    @app.get("/")
    @app.get("/repos")
    def index(request: Request) -> dict:
        """What this hub holds that the caller can see (replaces olah's HTML pages, whose templating fails on
        this Starlette)."""
        account = account_of(request)
        return {kind: sorted(f"{p.parent.name}/{p.name}" for p in (store.mirrors / kind).glob("*/*")
                             if (p / ".git").is_dir() and visible(p, p.parent.name, account)) for kind in URL_PREFIX}

    @app.get("/api/whoami-v2")
    def whoami(request: Request) -> dict:
        """The Hub's shape: the account, its organizations (for the default account, every namespace that is no
        account's: see ``Accounts``) and a write token."""
        account = signed_in(request)
        orgs = sorted(store.namespaces() - accounts.names()) if account == DEFAULT_ACCOUNT else []
        return {"type": "user", "id": account, "name": account, "fullname": account, "email": None,
                "emailVerified": False, "isPro": False, "canPay": False, "periodEnd": None, "avatarUrl": "",
                "orgs": [{"type": "org", "id": org, "name": org, "fullname": org, "email": None, "canPay": False,
                          "periodEnd": None, "avatarUrl": "", "roleInOrg": "admin", "isEnterprise": False}
                         for org in orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": f"{account} (local Hub)",
                                                                 "role": "write"}}}

    @app.post("/api/validate-yaml")  # create_commit checks a README.md's metadata here first
    def validate_yaml(payload: dict) -> JSONResponse:
        match = re.match(r"\s*---\n(.*?)\n---", payload.get("content", ""), flags=re.S)
        try:
            if match and not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
                raise yaml.YAMLError("metadata must be a mapping")
        except yaml.YAMLError as err:
            return JSONResponse({"errors": [{"message": str(err)}], "warnings": []}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    # -- repositories -----------------------------------------------------------------------------------------
    def repo_from_payload(payload: dict, account: str) -> tuple[str, str, str]:
        """(folder, namespace, name) of a create/delete payload; without an organization, the caller's own."""
        repo_type = REPO_TYPES.get(payload.get("type") or "model")
        if repo_type is None:
            raise HubError(400, f"Unsupported repo type: {payload.get('type')}")
        return repo_type, payload.get("organization") or account, payload.get("name") or ""

    @app.post("/api/repos/create")
    def create_repo(request: Request, payload: dict) -> JSONResponse:
        account = signed_in(request)
        repo_type, org, name = repo_from_payload(payload, account)
        if not accounts.admins(account, org):  # the Hub's 403: the client's exist_ok then checks the repo exists
            raise HubError(403, f"You don't have the rights to create a {API_TYPES.get(repo_type)} under the "
                                f"namespace {org!r}")
        # The client sends ``visibility`` ("public"/"private"); older ones sent ``private``.
        visibility = payload.get("visibility") or ("private" if payload.get("private") else "public")
        if visibility not in ("public", "private"):
            raise HubError(400, f"Unsupported visibility: {visibility}")
        url = f"{base(request)}/{URL_PREFIX[repo_type]}{org}/{name}"
        # 409: the client's exist_ok=True turns it into success
        if not store.create_repo(repo_type, org, name, private=visibility == "private", author=account):
            return JSONResponse({"error": f"You already created this {repo_type[:-1]} repo", "url": url}, 409)
        return JSONResponse({"url": url, "name": f"{org}/{name}", "id": f"{org}/{name}"})

    @app.delete("/api/repos/delete")
    def delete_repo(request: Request, payload: dict) -> dict:
        path, _ = admin(request, *repo_from_payload(payload, signed_in(request)), action="delete the repo")
        store.delete_repo(path)
        return {}

    # -- reads ------------------------------------------------------------------------------------------------
    @app.api_route("/api/{repo_type}/{org}/{name}", methods=["GET", "HEAD"])
    @app.api_route("/api/{repo_type}/{org}/{name}/revision/{revision:path}", methods=["GET", "HEAD"])
    def repo_info(request: Request, repo_type: str, org: str, name: str, revision: str = DEFAULT_BRANCH) -> dict:
        path = readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        # Card YAML may hold dates, which olah returns as Python objects.
        meta = json.loads(json.dumps(with_olah(path, repo_type, org, name, lambda m: m.get_meta(sha)), default=str))
        meta["private"] = bool(store.settings(path).get("private"))  # olah says False for every repo
        if request.query_params.get("blobs") in ("1", "true", "True"):  # files_metadata=True
            tree = with_olah(path, repo_type, org, name, lambda m: m.get_tree(sha, "", recursive=True)) or []
            files = {item["path"]: item for item in tree if item["type"] == "file"}
            for sibling in meta["siblings"]:
                item = files.get(sibling["rfilename"], {})
                sibling.update(blobId=item.get("oid"), size=item.get("size"))
                if "lfs" in item:  # siblings name the LFS hash "sha256" where trees call it "oid"
                    lfs = item["lfs"]
                    sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
        return meta

    @app.get("/api/{repo_type}/{org}/{name}/refs")
    def list_refs(request: Request, repo_type: str, org: str, name: str, include_prs: bool = False) -> dict:
        path = readable(request, repo_type, org, name)
        return with_olah(path, repo_type, org, name, lambda m: m.get_refs(include_prs=include_prs))

    @app.api_route("/api/{repo_type}/{org}/{name}/tree/{rest:path}", methods=["GET", "HEAD"])
    def list_tree(request: Request, repo_type: str, org: str, name: str, rest: str,
                  recursive: bool = False, expand: bool = False) -> list:
        revision, path_in_repo = _raw_rev_and_path(request, "tree", 5)
        path = readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        items = with_olah(path, repo_type, org, name, lambda m: m.get_tree(sha, path_in_repo, recursive))
        if items is None:  # olah answers None for a missing path or a file
            raise HubError(404, f"{path_in_repo} does not exist on {revision}", "EntryNotFound")
        if expand:  # olah's expand takes each lastCommit from HEAD, not from this revision
            for item in items:
                item["lastCommit"] = _last_commit(path, sha, item["path"])
        return items

    @app.post("/api/{repo_type}/{org}/{name}/paths-info/{revision:path}")
    async def paths_info(request: Request, repo_type: str, org: str, name: str, revision: str) -> list:
        path = readable(request, repo_type, org, name)
        form = parse_qs((await request.body()).decode())  # parsed by hand: no form field limit on long lists

        def read() -> list:
            sha = store.resolve(path, revision)
            infos = path_infos(path, sha, form.get("paths", []))
            if form.get("expand", ["false"])[0].lower() == "true":
                for info in infos:
                    info["lastCommit"] = _last_commit(path, sha, info["path"])
            return infos

        return await run_in_threadpool(read)

    @app.get("/api/{repo_type}/{org}/{name}/commits/{revision:path}")
    def list_commits(request: Request, repo_type: str, org: str, name: str, revision: str) -> list:
        path = readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        out = _git(path, "log", "-z", "--format=%H%x1f%an%x1f%ct%x1f%s%x1f%b", sha).decode()
        commits = []
        for record in filter(None, out.split("\0")):
            oid, author, timestamp, title, body = record.split("\x1f", 4)
            commits.append({"id": oid, "title": title, "message": body.strip(), "authors": [{"user": author}],
                            "date": _date_of(timestamp)})
        return commits

    def resolve_file(request: Request, repo_type: str, org: str, name: str, marker_at: int) -> Response:
        revision, path_in_repo = _raw_rev_and_path(request, "resolve", marker_at)
        path = readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        commit_header = {"X-Repo-Commit": sha}  # also on 404s: the client caches a file's absence per commit
        found = _cat_file(path, [f"{sha}:{path_in_repo}"])[0] if path_in_repo and "\n" not in path_in_repo else None
        if found is None or found[1] != "blob":
            raise HubError(404, f"{path_in_repo} does not exist on {revision}", "EntryNotFound", commit_header)
        blob_oid, _, data = found
        headers = {**commit_header, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        pointer = POINTER_RE.fullmatch(data) if len(data) < 200 else None
        if pointer is None:
            return _bytes_response(request, data, {**headers, "ETag": f'"{blob_oid}"'})
        oid = pointer.group(1).decode()
        obj = store.lfs_object(path, oid)
        if not obj.is_file():
            raise HubError(404, f"LFS object of {path_in_repo} is missing", "EntryNotFound", commit_header)
        headers.update({"ETag": f'"{oid}"', "X-Linked-Etag": f'"{oid}"', "X-Linked-Size": str(obj.stat().st_size)})
        return FileResponse(obj, headers=headers, media_type="application/octet-stream")  # handles Range and HEAD

    @app.api_route("/{repo_type}/{org}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
    def resolve_typed(request: Request, repo_type: str, org: str, name: str, rest: str) -> Response:
        return resolve_file(request, repo_type, org, name, 4)

    @app.api_route("/{org}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
    def resolve_model(request: Request, org: str, name: str, rest: str) -> Response:
        return resolve_file(request, "models", org, name, 3)

    # -- uploads: preupload, LFS batch API, LFS PUT/verify -----------------------------------------------------
    @app.post("/api/{repo_type}/{org}/{name}/preupload/{revision:path}")
    def preupload(request: Request, repo_type: str, org: str, name: str, revision: str, payload: dict) -> dict:
        path, _ = contributor(request, repo_type, org, name)
        try:
            sha = store.resolve(path, revision)
        except HubError:
            sha = None  # a branch the commit will create: nothing to compare against
        files = payload.get("files", [])
        # The client skips a file whose oid it finds unchanged: the sha256 for LFS files, the git blob sha otherwise.
        infos = path_infos(path, sha, [f["path"] for f in files]) if sha else []
        remote = {i["path"]: i.get("lfs", {}).get("oid", i["oid"]) for i in infos if i["type"] == "file"}
        patterns = _lfs_patterns(path, sha)
        return {"commitOid": sha, "files": [
            {"path": f["path"], "uploadMode": "lfs" if _is_lfs(f, patterns) else "regular", "shouldIgnore": False,
             "oid": remote.get(f["path"].strip("/"))} for f in files]}

    def lfs_batch(request: Request, repo_type: str, org: str, name: str, payload: dict) -> JSONResponse:
        """The git-lfs batch API: download links for readers; signed upload links for signed-in contributors."""
        download = payload.get("operation") == "download"
        path = readable(request, repo_type, org, name) if download else contributor(request, repo_type, org, name)[0]
        repo = f"{repo_type}/{org}/{name}"
        href = f"{base(request)}/api/local/lfs/{repo}"
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj.get("oid", "")), int(obj.get("size", 0))
            if not OID_RE.fullmatch(oid):
                objects.append({"oid": oid, "size": size, "error": {"code": 422, "message": "Invalid oid"}})
                continue
            stored = store.lfs_object(path, oid)
            present = stored.is_file() and stored.stat().st_size == size
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            if download:
                entry.update({"actions": {"download": {"href": f"{href}/{oid}"}}} if present else
                             {"error": {"code": 404, "message": "Object does not exist"}})
            elif size > limits.lfs_bytes:
                entry["error"] = {"code": 413, "message": too_large(f"LFS object {oid}", limits.lfs_bytes).message}
            elif not present:  # upload: no "actions" tells the client we already hold the object
                upload = f"{href}/{oid}?{signer.query(repo, oid, size)}"
                entry["actions"] = {"upload": {"href": upload}, "verify": {"href": f"{href}/verify"}}
            objects.append(entry)
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    @app.post("/{repo_type}/{org}/{name}.git/info/lfs/objects/batch")
    def lfs_batch_typed(request: Request, repo_type: str, org: str, name: str, payload: dict) -> JSONResponse:
        return lfs_batch(request, repo_type, org, name, payload)

    @app.post("/{org}/{name}.git/info/lfs/objects/batch")
    def lfs_batch_model(request: Request, org: str, name: str, payload: dict) -> JSONResponse:
        return lfs_batch(request, "models", org, name, payload)

    @app.put("/api/local/lfs/{repo_type}/{org}/{name}/{oid}")
    async def lfs_upload(request: Request, repo_type: str, org: str, name: str, oid: str) -> Response:
        """Stream one object to disk. The client sends no token to an upload URL: the URL's signature, from the
        batch call of a signed-in contributor, is the permission, for this object and its announced size."""
        if not OID_RE.fullmatch(oid):
            raise HubError(400, "Invalid oid")
        announced = signer.check(f"{repo_type}/{org}/{name}", oid, dict(request.query_params))
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > announced:
            raise too_large(f"LFS object {oid}, announced as {announced} bytes,", announced)
        path = store.find(repo_type, org, name)
        tmp_dir = path / ".git" / "lfs" / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest, received = hashlib.sha256(), 0
        with tempfile.NamedTemporaryFile(dir=tmp_dir, delete=False) as tmp:
            try:
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > announced:
                        raise too_large(f"LFS object {oid}, announced as {announced} bytes,", announced)
                    digest.update(chunk)
                    tmp.write(chunk)
            except BaseException:
                os.unlink(tmp.name)
                raise
        if received != announced or digest.hexdigest() != oid:  # content-addressed: never store other bytes
            os.unlink(tmp.name)
            raise HubError(400, f"Uploaded content does not match oid {oid}")
        final = store.lfs_object(path, oid)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp.name, final)  # atomic: a reader sees no object or the whole object
        return Response(status_code=200)

    @app.get("/api/local/lfs/{repo_type}/{org}/{name}/{oid}")
    def lfs_download(request: Request, repo_type: str, org: str, name: str, oid: str) -> FileResponse:
        path = readable(request, repo_type, org, name)
        if not OID_RE.fullmatch(oid) or not store.lfs_object(path, oid).is_file():
            raise HubError(404, "Object does not exist", "EntryNotFound")
        return FileResponse(store.lfs_object(path, oid), media_type="application/octet-stream")

    @app.post("/api/local/lfs/{repo_type}/{org}/{name}/verify")
    def lfs_verify(request: Request, repo_type: str, org: str, name: str, payload: dict) -> dict:
        oid, (path, _) = str(payload.get("oid", "")), contributor(request, repo_type, org, name)
        obj = store.lfs_object(path, oid)
        if not OID_RE.fullmatch(oid) or not obj.is_file() or obj.stat().st_size != int(payload.get("size", -1)):
            raise HubError(404, "Object does not exist", "EntryNotFound")
        return {"message": "ok"}

    # -- commits, branches, tags -------------------------------------------------------------------------------
    @app.post("/api/{repo_type}/{org}/{name}/commit/{revision:path}")
    async def create_commit(request: Request, repo_type: str, org: str, name: str, revision: str) -> dict:
        """One NDJSON commit. Admins commit anywhere, anyone signed in may open a pull request with it, and a pull
        request's author may commit to it (``Store.commit``)."""
        create_pr = request.query_params.get("create_pr") in ("1", "true", "True")
        path, actor = contributor(request, repo_type, org, name)
        # Only the client's content type: a web page's form or text/plain post (sent without a CORS preflight)
        # can never be read as a commit.
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in COMMIT_CONTENT_TYPES:
            raise HubError(415, f"A commit is sent as application/x-ndjson, not {content_type or 'no content type'}")
        try:  # RequestGuard counts the body as it arrives: past the commit cap, this read ends in a 413
            lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Commit payload is not NDJSON: {err}") from err
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        operations = [line for line in lines if line.get("key") != "header"]
        sha, num = await run_in_threadpool(store.commit, path, revision, header, operations, actor, create_pr)
        url = repo_url(request, repo_type, org, name)
        return {"commitUrl": f"{url}/commit/{sha}", "commitOid": sha, "success": True,
                "pullRequestUrl": f"{url}/discussions/{num}" if num else None}

    @app.post("/api/{repo_type}/{org}/{name}/branch/{branch:path}")
    def create_branch(request: Request, repo_type: str, org: str, name: str, branch: str,
                      payload: dict | None = None) -> dict:
        path, _ = admin(request, repo_type, org, name, "create a branch")
        sha = store.resolve(path, (payload or {}).get("startingPoint") or DEFAULT_BRANCH)
        store.set_ref(path, f"refs/heads/{branch}", sha, must_exist=False)
        return {}

    @app.delete("/api/{repo_type}/{org}/{name}/branch/{branch:path}")
    def delete_branch(request: Request, repo_type: str, org: str, name: str, branch: str) -> dict:
        path, _ = admin(request, repo_type, org, name, "delete a branch")
        if branch == DEFAULT_BRANCH:
            raise HubError(403, "You cannot delete the default branch")
        store.set_ref(path, f"refs/heads/{branch}", None, must_exist=True)
        return {}

    @app.post("/api/{repo_type}/{org}/{name}/tag/{revision:path}")
    def create_tag(request: Request, repo_type: str, org: str, name: str, revision: str, payload: dict) -> dict:
        path, actor = admin(request, repo_type, org, name, "create a tag")
        sha = store.resolve(path, revision)
        tag, message = payload.get("tag", ""), payload.get("message")
        store.set_ref(path, f"refs/tags/{tag}", sha, must_exist=False, message=message, author=actor.name)
        return {}

    @app.delete("/api/{repo_type}/{org}/{name}/tag/{tag:path}")
    def delete_tag(request: Request, repo_type: str, org: str, name: str, tag: str) -> dict:
        path, _ = admin(request, repo_type, org, name, "delete a tag")
        store.set_ref(path, f"refs/tags/{tag}", None, must_exist=True)
        return {}

    # -- discussions and pull requests ------------------------------------------------------------------------
    def summary(record: dict, repo_type: str, org: str, name: str) -> dict:
        return {"num": record["num"], "title": record["title"], "status": record["status"],
                "isPullRequest": record["isPullRequest"], "createdAt": record["createdAt"],
                "author": _author(_author_of(record)),
                "repo": {"name": f"{org}/{name}", "type": API_TYPES[repo_type]}, "pinned": False,
                "numComments": sum(event["type"] == "comment" for event in record["events"])}

    @app.post("/api/{repo_type}/{org}/{name}/discussions")
    def create_discussion(request: Request, repo_type: str, org: str, name: str, payload: dict) -> dict:
        path, actor = contributor(request, repo_type, org, name)
        description = payload.get("description")
        num = store.create_discussion(path, _valid_title(payload.get("title")),
                                      description.strip() if isinstance(description, str) else "",
                                      bool(payload.get("pullRequest")), actor.name)
        return {"num": num, "url": f"{repo_url(request, repo_type, org, name)}/discussions/{num}"}

    @app.get("/api/{repo_type}/{org}/{name}/discussions")
    def list_discussions(request: Request, repo_type: str, org: str, name: str, p: int = 0) -> dict:
        path = readable(request, repo_type, org, name)
        kind, status = request.query_params.get("type", "all"), request.query_params.get("status", "all")
        if kind not in TYPE_FILTERS or status not in STATUS_FILTERS:
            raise HubError(400, f"Invalid filter: type={kind}, status={status}")
        author = request.query_params.get("author")
        records = [r for r in _all_discussions(path)
                   if TYPE_FILTERS[kind] in (None, r["isPullRequest"])
                   and (STATUS_FILTERS[status] is None or r["status"] in STATUS_FILTERS[status])
                   and author in (None, _author_of(r))]
        records.sort(key=lambda r: r["num"], reverse=True)  # newest first, as the Hub lists them
        start = max(p, 0) * DISCUSSIONS_PER_PAGE
        return {"discussions": [summary(r, repo_type, org, name) for r in records[start:start + DISCUSSIONS_PER_PAGE]],
                "count": len(records), "start": start}

    @app.get("/api/{repo_type}/{org}/{name}/discussions/{num}")
    def discussion_details(request: Request, repo_type: str, org: str, name: str, num: int) -> dict:
        path = readable(request, repo_type, org, name)
        record = _load_discussion(path, num)
        details = {**summary(record, repo_type, org, name), "events": record["events"]}
        if record["isPullRequest"]:
            details.update(events=_timeline(record, _commit_events(path, record)),
                           changes={"base": record["base"], "mergeCommitId": record["mergeCommitId"]},
                           filesWithConflicts=_conflicts(path, record))
            if request.query_params.get("diff") in ("1", "true", "True"):
                details["diff"] = _pr_diff(path, record)
        return details

    @app.post("/api/{repo_type}/{org}/{name}/discussions/{num}/comment")
    def comment_discussion(request: Request, repo_type: str, org: str, name: str, num: int, payload: dict) -> dict:
        path, actor = contributor(request, repo_type, org, name)
        comment = partial(_add_comment, text=payload.get("comment"), author=actor.name)
        return {"newMessage": store.change_discussion(path, num, comment)}

    @app.post("/api/{repo_type}/{org}/{name}/discussions/{num}/comment/{comment_id}/edit")
    def edit_comment(request: Request, repo_type: str, org: str, name: str, num: int, comment_id: str,
                     payload: dict) -> dict:
        path, actor = contributor(request, repo_type, org, name)
        edit = partial(_edit_comment, comment_id=comment_id, text=payload.get("content"), actor=actor)
        return {"updatedComment": store.change_discussion(path, num, edit)}

    @app.post("/api/{repo_type}/{org}/{name}/discussions/{num}/comment/{comment_id}/hide")
    def hide_comment(request: Request, repo_type: str, org: str, name: str, num: int, comment_id: str) -> dict:
        path, actor = contributor(request, repo_type, org, name)
        hide = partial(_hide_comment, comment_id=comment_id, actor=actor)
        return {"updatedComment": store.change_discussion(path, num, hide)}

    @app.post("/api/{repo_type}/{org}/{name}/discussions/{num}/title")
    def rename_discussion(request: Request, repo_type: str, org: str, name: str, num: int, payload: dict) -> dict:
        path, actor = contributor(request, repo_type, org, name)
        rename = partial(_rename, title=payload.get("title"), actor=actor)
        return {"newTitle": store.change_discussion(path, num, rename)}

    @app.post("/api/{repo_type}/{org}/{name}/discussions/{num}/status")
    def change_status(request: Request, repo_type: str, org: str, name: str, num: int, payload: dict) -> dict:
        path, actor = contributor(request, repo_type, org, name)
        change = partial(_change_status, status=payload.get("status"), comment=payload.get("comment"), actor=actor)
        return {"newStatus": store.change_discussion(path, num, change)}

    @app.post("/api/{repo_type}/{org}/{name}/discussions/{num}/merge")
    def merge_pull_request(request: Request, repo_type: str, org: str, name: str, num: int,
                           payload: dict | None = None) -> dict:
        path, actor = admin(request, repo_type, org, name, "merge a pull request")
        store.merge(path, num, (payload or {}).get("comment"), actor.name)
        return {}

    # -- listings: list_models, list_datasets, list_spaces ---------------------------------------------------------
    @app.get("/api/{repo_type}")
    def list_repos(request: Request, repo_type: str) -> JSONResponse:
        """The repos the caller can see, as the Hub lists them: ``author``, ``search`` (in the id, any case; all
        given must match), ``sort`` (descending unless ``direction=1``), pages of ``limit`` (at most the page
        size) followed through the ``Link: <...>; rel="next"`` header the client pages with."""
        if repo_type not in URL_PREFIX:
            raise HubError(404, f"Unknown listing: /api/{repo_type}")
        params = request.query_params
        unsupported = sorted(set(params) - LISTING_PARAMS)
        if unsupported:  # never a silently unfiltered answer
            raise HubError(400, f"This Hub cannot filter or expand listings by: {', '.join(unsupported)}")
        account, author = account_of(request), params.get("author")
        searches = [term.lower() for term in params.getlist("search")]
        repos = [p for p in sorted((store.mirrors / repo_type).glob("*/*"))
                 if (p / ".git").is_dir() and author in (None, p.parent.name) and visible(p, p.parent.name, account)
                 and all(term in f"{p.parent.name}/{p.name}".lower() for term in searches)]
        start = int(params.get("cursor", "0")) if params.get("cursor", "0").isdigit() else 0  # our cursor: an offset
        size = min(int(params["limit"]), listing_page_size) if params.get("limit", "").isdigit() else listing_page_size
        sort = params.get("sort")
        if sort is None:  # by id: only the page's repos need reading
            page = [_repo_summary(store, p) for p in repos[start:start + size]]
        elif sort in LISTING_SORTS:
            summaries = sorted((_repo_summary(store, p) for p in repos), key=lambda summary: summary[sort],
                               reverse=params.get("direction") != "1")
            page = summaries[start:start + size]
        else:
            raise HubError(400, f"Cannot sort by {sort}: one of {', '.join(sorted(LISTING_SORTS))}")
        headers = {}
        if start + size < len(repos):
            headers["Link"] = f'<{request.url.include_query_params(cursor=start + size)}>; rel="next"'
        return JSONResponse(page, headers=headers)

    # Everything else falls through to olah's router (offline), e.g. repo ids without a namespace (RepoNotFound).
    # Its routes that name one of our repos (HEAD of some reads, Xet tokens) see private repos by our rule too.
    def olah_sees_only_readable_repos(request: Request) -> None:
        params = request.path_params
        if {"repo_type", "org", "repo"} <= params.keys():
            readable(request, params["repo_type"], params["org"], params["repo"])

    app.include_router(olah_router, dependencies=[Depends(olah_sees_only_readable_repos)])
    return app


def _repo_summary(store: Store, path: Path) -> dict:
    """A repo as the Hub's listings give it (what ``ModelInfo``/``DatasetInfo``/``SpaceInfo`` read)."""
    settings = store.settings(path)
    sha, modified = _git(path, "log", "-1", "--format=%H%x1f%ct", f"refs/heads/{DEFAULT_BRANCH}").decode().split("\x1f")
    created = settings.get("createdAt") or _date_of(_git(  # a repo made before creation dates were recorded
        path, "log", "--max-parents=0", "--format=%ct", f"refs/heads/{DEFAULT_BRANCH}").decode().split()[-1])
    return {"id": f"{path.parent.name}/{path.name}", "author": path.parent.name, "sha": sha,
            "lastModified": _date_of(modified), "createdAt": created, "private": bool(settings.get("private")),
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "trendingScore": 0, "tags": []}


class AccessLog:
    """ASGI wrapper appending one JSON line per HTTP request to a file, once its response is sent.

    Each line: ``time`` (its arrival, UTC, ms), ``method``, ``path`` (raw, %-encoded, with ``?query`` if any),
    ``range`` (the ``Range`` header or null), ``status`` and ``bytes`` (body bytes sent; 0 for HEAD). No other
    header is ever written: the ``Authorization`` header carries tokens. It wraps the whole app, errors answered by
    Starlette included, so every request is one line.
    """

    def __init__(self, app: Callable, path: Path) -> None:
        self.app = app
        # Line-buffered: a reader sees whole lines. Only the event loop's thread writes: one line at a time.
        self.file = open(path, "a", buffering=1, encoding="utf-8")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = scope.get("query_string", b"")
        record = {"time": _now(), "method": scope["method"],
                  "path": (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
                  + (f"?{query.decode('latin-1')}" if query else ""),
                  "range": next((v.decode("latin-1") for k, v in scope["headers"] if k == b"range"), None),
                  "status": 500, "bytes": 0}  # 500 stays if the app fails before answering: the server sends it
        written = False

        def log() -> None:
            nonlocal written
            if not written:
                written = True
                self.file.write(json.dumps(record) + "\n")

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                record["status"] = message["status"]
            elif message["type"] == "http.response.body":
                record["bytes"] += len(message.get("body", b""))
                if not message.get("more_body"):
                    log()  # before the client can have the whole response, so a test reading the log after it finds it
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            log()  # when the app failed or the client went away before the last body part


def main(argv: list[str] | None = None) -> None:
    """``python -m hf_pipeline.hub.server --root ROOT --port PORT [options]``: serve until interrupted.

    Accounts and tokens come from ``ROOT/tokens.json`` (``hf_pipeline.hub.local.start`` writes it); without one,
    every write is refused.
    """
    import sys

    import uvicorn

    defaults = Limits()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(".hub"))
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; anything but loopback makes the Hub reachable from the network")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--allowed-host", action="append", default=[],
                        help="another name clients reach this server by (its Host header), e.g. the machine's name")
    parser.add_argument("--max-commit-bytes", type=int, default=defaults.commit_bytes,
                        help=f"largest commit payload (default {defaults.commit_bytes // MiB} MiB)")
    parser.add_argument("--max-lfs-bytes", type=int, default=defaults.lfs_bytes,
                        help=f"largest LFS object (default {defaults.lfs_bytes // MiB // 1024} GiB)")
    parser.add_argument("--max-json-bytes", type=int, default=defaults.json_bytes,
                        help=f"largest body of any other request (default {defaults.json_bytes // MiB} MiB)")
    parser.add_argument("--listing-page-size", type=int, default=LISTING_PAGE_SIZE,
                        help=f"repos per page of list_models/list_datasets (default {LISTING_PAGE_SIZE}, as the Hub)")
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--access-log", type=Path, default=None,
                        help="append one JSON line per request to this file (no header but Range is logged)")
    args = parser.parse_args(argv)
    warning = network_warning(args.host, args.port)
    if warning:
        print(warning, file=sys.stderr, flush=True)  # hub.log, where `hub start` sends the server's output
    limits = Limits(commit_bytes=args.max_commit_bytes, lfs_bytes=args.max_lfs_bytes, json_bytes=args.max_json_bytes)
    app = create_app(args.root, host=args.host, allowed_hosts=tuple(args.allowed_host), limits=limits,
                     listing_page_size=args.listing_page_size)
    # uvicorn's own access log stays off: besides the noise, nothing that carries a request's tokens is logged.
    uvicorn.run(AccessLog(app, args.access_log) if args.access_log else app, host=args.host, port=args.port,
                log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
