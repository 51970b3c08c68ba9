"""Discussions and pull requests of the local Hub: their records, events, timeline, status changes and merges.

They behave like the Hub's, as far as its client and docs tell: one numbering for both; a pull request is the git
ref ``refs/pr/N``, opened at the head of ``main`` and in status "draft" when made with
``create_discussion``/``create_pull_request`` (open when made by ``create_commit(create_pr=True)``, see
``store.Store.commit``); commits go to it through the commit endpoint (revision ``refs%2Fpr%2FN``) while it is open
or draft, and every read takes ``refs/pr/N`` as a revision. Merging needs it open (drafts are published first, as
on the Hub) and squashes it into one commit on ``main`` titled "<title> (#N)", whose sha the details give as
``mergeCommitId``; a file both sides changed differently is a 409.

Records are JSON files in the repo's ``.git/hf_discussions/N.json``, so they go with the repo. A record holds what
git does not: number, title, status, the stored events (comments, status and title changes) and, for a pull
request, its base branch, the commit it was opened from ("start") and its merge commit. Its commits are read from
git (start..refs/pr/N) when asked for, so a commit to a pull request never rewrites it.

The changes here (``create``, ``change``, ``merge``) expect the caller to hold the repo's lock: ``store.Store``
takes it around each. Of the change functions given to ``change``, ``edit_comment``, ``hide_comment``, ``rename``
and ``change_status`` check that their actor may make them; ``add_comment`` is anyone's who can see the repo.
"""

from __future__ import annotations

import html
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

from hf_pipeline.hub.accounts import DEFAULT_ACCOUNT, Actor
from hf_pipeline.hub.guard import HubError
from hf_pipeline.hub.server.plumbing import (DEFAULT_BRANCH, commit_and_move, commit_of, date_of, git, merge_tree,
                                             now)


# -- records: one JSON file per discussion ----------------------------------------------------------------------
def _folder(path: Path) -> Path:
    return path / ".git" / "hf_discussions"


def find(path: Path, num: int) -> dict | None:
    """Discussion ``num``'s record, or None."""
    try:
        return json.loads((_folder(path) / f"{num}.json").read_text())
    except FileNotFoundError:
        return None


def load(path: Path, num: int) -> dict:
    """Discussion ``num``'s record; a 404 if there is none."""
    record = find(path, num)
    if record is None:
        raise HubError(404, f"Discussion #{num} not found")
    return record


def all_records(path: Path) -> list[dict]:
    """Every discussion's and pull request's record, in no order."""
    return [json.loads(f.read_text()) for f in _folder(path).glob("*.json")]


def next_num(path: Path) -> int:
    """Discussions and pull requests share one numbering, as on the Hub (call it under the repo lock)."""
    return max((int(f.stem) for f in _folder(path).glob("*.json")), default=0) + 1


def save(path: Path, record: dict) -> None:
    """Replace a record atomically (under the repo lock): a reader sees the old one or the new one."""
    folder = _folder(path)
    folder.mkdir(exist_ok=True)
    tmp = folder / f"{record['num']}.json.tmp"
    tmp.write_text(json.dumps(record))
    os.replace(tmp, folder / f"{record['num']}.json")


def new_record(num: int, title: str, description: str, author: str, *, status: str, base: str | None = None,
               start: str | None = None) -> dict:
    """A discussion's record, or a pull request's with ``base`` (its target ref) and ``start`` (commit)."""
    record = {"num": num, "title": title, "status": status, "isPullRequest": start is not None, "author": author,
              "createdAt": now(), "events": [_comment_event(description, author)] if description else []}
    if start is not None:
        record.update(base=base or f"refs/heads/{DEFAULT_BRANCH}", start=start, mergeCommitId=None)
    return record


def valid_title(title: Any) -> str:
    """``title`` stripped; a 400 unless it is a string of the length the Hub accepts."""
    title = title.strip() if isinstance(title, str) else ""
    if not 3 <= len(title) <= 200:  # the Hub's rule, which the client documents
        raise HubError(400, "Title must be between 3 and 200 characters long")
    return title


def author_info(account: str) -> dict:
    """An author as the Hub gives it in discussions and their events (the client reads its ``name``)."""
    return {"name": account, "fullname": account, "type": "user", "avatarUrl": ""}


def author_of(record_or_event: dict) -> str:
    """Who opened a discussion or wrote an event; records made before authors were kept are the default account's."""
    author = record_or_event.get("author", DEFAULT_ACCOUNT)
    return author["name"] if isinstance(author, dict) else author


def _require_author_or_admin(record_or_event: dict, actor: Actor, what: str) -> None:
    if not actor.admin and author_of(record_or_event) != actor.name:
        raise HubError(403, f"Only {author_of(record_or_event)} (or the repo's owner) can {what}")


# -- events: comments, title and status changes -----------------------------------------------------------------
def _event(kind: str, data: dict, author: str) -> dict:
    return {"id": uuid.uuid4().hex[:24], "type": kind, "createdAt": now(), "author": author_info(author), "data": data}


def _comment_version(text: str, when: str, author: str) -> dict:
    return {"raw": text, "html": f"<p>{html.escape(text)}</p>", "updatedAt": when, "author": author_info(author)}


def _comment_event(text: str, author: str) -> dict:
    event = _event("comment", {"edited": False, "hidden": False, "history": []}, author)
    event["data"]["latest"] = _comment_version(text, event["createdAt"], author)
    return event


def add_comment(record: dict, text: Any, author: str) -> dict:
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


def edit_comment(record: dict, comment_id: str, text: Any, actor: Actor) -> dict:
    """Only a comment's author may edit it, as on the Hub (an admin may hide it, not reword it)."""
    if not isinstance(text, str) or not text.strip():
        raise HubError(400, "A comment cannot be empty")
    event = _comment(record, comment_id)
    if author_of(event) != actor.name:
        raise HubError(403, f"Only {author_of(event)} can edit this comment")
    data = event["data"]
    if data["hidden"]:
        raise HubError(403, "A hidden comment cannot be edited")
    data["history"].insert(0, data["latest"])  # earlier versions, newest first
    data.update(edited=True, latest=_comment_version(text.strip(), now(), actor.name))
    return event


def hide_comment(record: dict, comment_id: str, actor: Actor) -> dict:
    """Hide a comment and drop its content: its author or the repo's admins."""
    event = _comment(record, comment_id)
    _require_author_or_admin(event, actor, "hide this comment")
    event["data"].update(hidden=True, history=[], latest=_comment_version("", now(), actor.name))  # content gone
    return event


def rename(record: dict, title: Any, actor: Actor) -> dict:
    """Retitle a discussion: its author or the repo's admins."""
    _require_author_or_admin(record, actor, f"rename #{record['num']}")
    event = _event("title-change", {"from": record["title"], "to": valid_title(title)}, actor.name)
    record["title"] = event["data"]["to"]
    record["events"].append(event)
    return event


def change_status(record: dict, status: Any, comment: Any, actor: Actor) -> dict:
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
        add_comment(record, comment, author)
    event = _event("status-change", {"status": status}, author)
    record["status"] = status
    record["events"].append(event)
    return event


# -- pull requests: their commits, read from git -----------------------------------------------------------------
def commit_events(path: Path, record: dict) -> list[dict]:
    """A pull request's commits, oldest first, as the Hub's ``commit`` events (their id is the commit sha)."""
    head = commit_of(path, f"refs/pr/{record['num']}")
    if head is None:
        return []
    out = git(path, "log", "--reverse", "-z", "--format=%H%x1f%ct%x1f%an%x1f%s", f"^{record['start']}",
              head).decode()
    events = []
    for item in filter(None, out.split("\0")):
        oid, timestamp, author, subject = item.split("\x1f", 3)
        when = date_of(timestamp)
        events.append({"id": oid, "type": "commit", "createdAt": when, "author": author_info(author),
                       "data": {"subject": subject, "oid": oid}})
    return events


def _stamp_head(path: Path, record: dict, events: list[dict]) -> None:
    """Remember the pull request's head in its new events, to place them among its commits (git dates are seconds)."""
    if record["isPullRequest"]:
        head = commit_of(path, f"refs/pr/{record['num']}")
        for event in events:
            event["head"] = head


def _public(event: dict) -> dict:
    return {key: value for key, value in event.items() if key != "head"}


def timeline(record: dict, commits: list[dict]) -> list[dict]:
    """Stored events and commits in the order they happened: each stored event follows the commits up to its head."""
    position = {commit["id"]: i + 1 for i, commit in enumerate(commits)}  # the start commit, or none: 0
    events, shown = [], 0
    for event in record["events"]:
        upto = position.get(event.get("head"), 0)
        events += commits[shown:upto]
        shown = max(shown, upto)
        events.append(_public(event))
    return events + commits[shown:]


def conflicts(path: Path, record: dict) -> list[str]:
    """Files an open or draft pull request changes that its base also changed differently since it started."""
    head, base = commit_of(path, f"refs/pr/{record['num']}"), commit_of(path, record["base"])
    if record["status"] not in ("open", "draft") or head is None or base is None:
        return []
    return merge_tree(path, base, head)[1]


def diff(path: Path, record: dict) -> str:
    """Unified diff of a pull request against the commit it started from (LFS files show as pointer changes)."""
    head = commit_of(path, f"refs/pr/{record['num']}")
    if head is None:
        return ""
    return git(path, "diff", "--no-color", "--no-renames", record["start"], head).decode(errors="replace")


# -- changes: the caller holds the repo's lock ---------------------------------------------------------------------
def create(path: Path, title: str, description: str, pull_request: bool, author: str) -> int:
    """A new discussion, or a draft pull request whose ``refs/pr/N`` starts at the head of ``main``."""
    num = next_num(path)
    if not pull_request:
        save(path, new_record(num, title, description, author, status="open"))
        return num
    start = commit_of(path, f"refs/heads/{DEFAULT_BRANCH}")
    if start is None:
        raise HubError(404, f"Invalid rev id: {DEFAULT_BRANCH}", "RevisionNotFound")
    git(path, "update-ref", f"refs/pr/{num}", start, "0" * 40)
    save(path, new_record(num, title, description, author, status="draft", start=start))
    return num


def change(path: Path, num: int, apply: Callable[[dict], dict]) -> dict:
    """Apply a change function to a discussion's record and save it; returns the new event.

    ``apply`` checks that its actor may make the change (it sees the record: who opened it, who wrote a comment).
    """
    record = load(path, num)
    known = len(record["events"])
    event = apply(record)
    _stamp_head(path, record, record["events"][known:])
    save(path, record)
    return _public(event)


def merge(path: Path, num: int, comment: str | None, author: str) -> str:
    """Merge an open pull request into its base as the Hub does; returns the merge commit's sha.

    A squash merge, as huggingface.co's history shows: one commit on the base branch with the base head as
    its only parent, titled "<PR title> (#N)" and listing the pull request's commits. Its tree is the pull
    request's own when the base has not moved since the pull request started; else git's three-way merge,
    and a 409 naming the files that conflict. ``refs/pr/N`` stays where it is.
    """
    record = load(path, num)
    _check_mergeable(record)
    head, base = commit_of(path, f"refs/pr/{num}"), commit_of(path, record["base"])
    for ref, sha in ((f"refs/pr/{num}", head), (record["base"], base)):
        if sha is None:
            raise HubError(404, f"Invalid rev id: {ref}", "RevisionNotFound")
    tree, conflicted = merge_tree(path, base, head)
    if conflicted:
        raise HubError(409, f"Merge conflict in: {', '.join(conflicted)}")
    message = _squash_message(record, commit_events(path, record))
    record["mergeCommitId"] = commit_and_move(path, record["base"], tree, [base], message, base, author)
    known = len(record["events"])
    _record_status(record, "merged", comment, author)
    _stamp_head(path, record, record["events"][known:])
    save(path, record)
    return record["mergeCommitId"]


def _check_mergeable(record: dict) -> None:
    if not record["isPullRequest"]:
        raise HubError(400, f"Discussion #{record['num']} is not a pull request")
    if record["status"] == "draft":  # the Hub's page: "This branch is in draft mode, publish it to be able to merge."
        raise HubError(400, f"Pull request #{record['num']} is a draft: publish it (status open) to merge it")
    if record["status"] != "open":
        raise HubError(400, f"Pull request #{record['num']} is {record['status']}: it cannot be merged")


def _squash_message(record: dict, commits: list[dict]) -> str:
    """The Hub's merge commit message: "<title> (#N)", then one line per commit of the pull request."""
    lines = "".join(f"- {c['data']['subject']} ({c['data']['oid']})\n" for c in commits)
    return f"{record['title']} (#{record['num']})\n\n{lines}"
