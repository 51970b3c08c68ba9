"""git plumbing for the local Hub's repositories, and the one date format the Hub's clients parse.

Every call runs git (or gitdb) on a repository's ``.git`` and reads refs and objects from disk, so nothing is ever
served stale; no working tree is ever used. Nothing here knows about accounts, discussions or HTTP beyond
answering a failed git call with a 500 (``HubError``): ``store.Store`` and ``discussions`` build on it.
"""

from __future__ import annotations

import io
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from gitdb import IStream, LooseObjectDB

from hf_pipeline.hub.accounts import DEFAULT_ACCOUNT
from hf_pipeline.hub.guard import HubError

DEFAULT_BRANCH = "main"  # the branch a new repo starts with, and the base of pull requests
GIT_ENV = {
    "TZ": "UTC",  # olah prints commit dates with a "Z" suffix whatever their offset: make that true
    # git's identity where it records one outside a commit (reflogs); commits and tags name the account making them.
    "GIT_COMMITTER_NAME": DEFAULT_ACCOUNT, "GIT_COMMITTER_EMAIL": f"{DEFAULT_ACCOUNT}@localhost",
}


def run_git(path: Path, *args: str, data: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run git on a repo's ``.git``: no working tree is ever used."""
    return subprocess.run(["git", "--git-dir", str(path / ".git"), *args], input=data, capture_output=True,
                          env={**os.environ, **GIT_ENV, **(env or {})})


def git(path: Path, *args: str, data: bytes | None = None, env: dict | None = None, check: bool = True) -> bytes:
    """git's output; b"" on failure when ``check`` is False, else a 500."""
    proc = run_git(path, *args, data=data, env=env)
    if proc.returncode:
        if not check:
            return b""
        raise HubError(500, f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def commit_of(path: Path, rev: str) -> str | None:
    """The commit sha ``rev`` names, or None."""
    # Callers only pass "refs/..." names or hex shas, never anything git could read as an option.
    return git(path, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False).decode().strip() or None


def cat_file(path: Path, specs: list[str]) -> list[tuple[str, str, bytes] | None]:
    """(oid, type, content) of each ``<rev>:<path>`` or oid, None where missing: one process for all of them."""
    out = git(path, "cat-file", "--batch", data="".join(f"{s}\n" for s in specs).encode())
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


def identity(account: str) -> dict[str, str]:
    """git's author and committer environment for a commit or tag made by ``account``."""
    email = f"{account}@localhost"
    return {"GIT_AUTHOR_NAME": account, "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": account, "GIT_COMMITTER_EMAIL": email}


def commit_and_move(path: Path, ref: str, tree: str, parents: list[str], message: str, old: str | None,
                    author: str) -> str:
    """Commit ``tree`` as ``author`` and move ``ref`` to it from ``old`` (None: the ref must not exist yet)."""
    parent_args = [arg for parent in parents for arg in ("-p", parent)]
    sha = git(path, "commit-tree", tree, *parent_args, "-F", "-", data=message.encode(),
              env=identity(author)).decode().strip()
    # Compare-and-swap on the ref: a concurrent writer outside this process cannot be silently overwritten.
    git(path, "update-ref", ref, sha, old or "0" * 40)
    return sha


def merge_tree(path: Path, ours: str, theirs: str) -> tuple[str, list[str]]:
    """Three-way merge of two commits from their merge base, in the object store: (tree, conflicted files).

    git's own merge, as a git server runs it: a file changed on one side only, or identically on both, merges;
    different changes to one file merge line by line when they touch different lines (LFS pointers never do).
    """
    proc = run_git(path, "merge-tree", "--write-tree", "--name-only", "--no-messages", "-z", ours, theirs)
    if proc.returncode not in (0, 1):  # 1: conflicts, listed after the tree
        raise HubError(500, f"git merge-tree failed: {proc.stderr.decode(errors='replace').strip()}")
    tree, *conflicts = proc.stdout.decode().split("\0")
    return tree, sorted(set(filter(None, conflicts)))


def write_blob(path: Path, data: bytes) -> str:
    """Write a blob with gitdb's pure-Python loose-object store: no subprocess per file in big commits."""
    odb = LooseObjectDB(str(path / ".git" / "objects"))
    return odb.store(IStream("blob", len(data), io.BytesIO(data))).binsha.hex()


def ls_tree(path: Path, treeish: str, recursive: bool = False) -> dict[str, tuple[str, str, str, str]]:
    """path -> (mode, type, oid, size) under a commit or ``<commit>:<folder>``; {} if it is not a folder."""
    out = git(path, "ls-tree", "-z", "-l", *(["-r"] if recursive else []), treeish, check=False).decode()
    entries = {}
    for record in filter(None, out.split("\0")):
        meta, name = record.split("\t", 1)
        mode, kind, oid, size = meta.split()
        entries[name] = (mode, kind, oid, size)
    return entries


def date_of(timestamp: str) -> str:
    """A git timestamp (seconds since the epoch, as ``%ct`` prints it) in the Hub's date format."""
    return _hub_date(datetime.fromtimestamp(int(timestamp), timezone.utc))


def now() -> str:
    """This moment in the Hub's date format (records, repo settings, the access log)."""
    return _hub_date(datetime.now(timezone.utc))


def _hub_date(moment: datetime) -> str:
    moment = moment.astimezone(timezone.utc)  # the one format the client parses: milliseconds and a "Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
