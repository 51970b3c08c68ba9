"""The local Hub's routes for discussions and pull requests: open, list, read, comment, rename, change status, merge.

What they do is ``discussions``' (records, events, timeline, merges) and ``store.Store``'s (under the repo lock);
who may do it is ``auth.Access``'s: reading needs a repo the request can see, opening and commenting a signed-in
account, renaming, closing and editing its author (or the repo's admins), merging an admin.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request

from hf_pipeline.hub.guard import HubError
from hf_pipeline.hub.server import discussions
from hf_pipeline.hub.server.auth import Access
from hf_pipeline.hub.server.store import API_TYPES, Store
from hf_pipeline.hub.server.writes import repo_url

DISCUSSIONS_PER_PAGE = 50  # the Hub's page size; the client pages until ``start + len(page) >= count``
# ``status`` filters of the discussions list. "open" includes drafts and "closed" merged pull requests, as the
# Hub's Community tab shows them: a driver looking for its still-draft pull request finds it among the open ones.
STATUS_FILTERS = {"all": None, "open": {"open", "draft"}, "closed": {"closed", "merged"}}
TYPE_FILTERS = {"all": None, "discussion": False, "pull_request": True}  # ``type`` filter -> isPullRequest


def discussion_routes(store: Store, access: Access) -> APIRouter:
    """The discussion and pull request routes over ``store``'s repos, each checking ``access`` first."""
    router = APIRouter()

    @router.post("/api/{repo_type}/{org}/{name}/discussions")
    def create_discussion(request: Request, repo_type: str, org: str, name: str, payload: dict) -> dict:
        path, actor = access.contributor(request, repo_type, org, name)
        description = payload.get("description")
        num = store.create_discussion(path, discussions.valid_title(payload.get("title")),
                                      description.strip() if isinstance(description, str) else "",
                                      bool(payload.get("pullRequest")), actor.name)
        return {"num": num, "url": f"{repo_url(request, repo_type, org, name)}/discussions/{num}"}

    @router.get("/api/{repo_type}/{org}/{name}/discussions")
    def list_discussions(request: Request, repo_type: str, org: str, name: str, p: int = 0) -> dict:
        path = access.readable(request, repo_type, org, name)
        kind, status = request.query_params.get("type", "all"), request.query_params.get("status", "all")
        if kind not in TYPE_FILTERS or status not in STATUS_FILTERS:
            raise HubError(400, f"Invalid filter: type={kind}, status={status}")
        author = request.query_params.get("author")
        records = [r for r in discussions.all_records(path)
                   if TYPE_FILTERS[kind] in (None, r["isPullRequest"])
                   and (STATUS_FILTERS[status] is None or r["status"] in STATUS_FILTERS[status])
                   and author in (None, discussions.author_of(r))]
        records.sort(key=lambda r: r["num"], reverse=True)  # newest first, as the Hub lists them
        start = max(p, 0) * DISCUSSIONS_PER_PAGE
        return {"discussions": [_summary(r, repo_type, org, name) for r in records[start:start + DISCUSSIONS_PER_PAGE]],
                "count": len(records), "start": start}

    @router.get("/api/{repo_type}/{org}/{name}/discussions/{num}")
    def discussion_details(request: Request, repo_type: str, org: str, name: str, num: int) -> dict:
        path = access.readable(request, repo_type, org, name)
        record = discussions.load(path, num)
        details = {**_summary(record, repo_type, org, name), "events": record["events"]}
        if record["isPullRequest"]:
            details.update(events=discussions.timeline(record, discussions.commit_events(path, record)),
                           changes={"base": record["base"], "mergeCommitId": record["mergeCommitId"]},
                           filesWithConflicts=discussions.conflicts(path, record))
            if request.query_params.get("diff") in ("1", "true", "True"):
                details["diff"] = discussions.diff(path, record)
        return details

    @router.post("/api/{repo_type}/{org}/{name}/discussions/{num}/comment")
    def comment_discussion(request: Request, repo_type: str, org: str, name: str, num: int, payload: dict) -> dict:
        path, actor = access.contributor(request, repo_type, org, name)
        comment = partial(discussions.add_comment, text=payload.get("comment"), author=actor.name)
        return {"newMessage": store.change_discussion(path, num, comment)}

    @router.post("/api/{repo_type}/{org}/{name}/discussions/{num}/comment/{comment_id}/edit")
    def edit_comment(request: Request, repo_type: str, org: str, name: str, num: int, comment_id: str,
                     payload: dict) -> dict:
        path, actor = access.contributor(request, repo_type, org, name)
        edit = partial(discussions.edit_comment, comment_id=comment_id, text=payload.get("content"), actor=actor)
        return {"updatedComment": store.change_discussion(path, num, edit)}

    @router.post("/api/{repo_type}/{org}/{name}/discussions/{num}/comment/{comment_id}/hide")
    def hide_comment(request: Request, repo_type: str, org: str, name: str, num: int, comment_id: str) -> dict:
        path, actor = access.contributor(request, repo_type, org, name)
        hide = partial(discussions.hide_comment, comment_id=comment_id, actor=actor)
        return {"updatedComment": store.change_discussion(path, num, hide)}

    @router.post("/api/{repo_type}/{org}/{name}/discussions/{num}/title")
    def rename_discussion(request: Request, repo_type: str, org: str, name: str, num: int, payload: dict) -> dict:
        path, actor = access.contributor(request, repo_type, org, name)
        rename = partial(discussions.rename, title=payload.get("title"), actor=actor)
        return {"newTitle": store.change_discussion(path, num, rename)}

    @router.post("/api/{repo_type}/{org}/{name}/discussions/{num}/status")
    def change_status(request: Request, repo_type: str, org: str, name: str, num: int, payload: dict) -> dict:
        path, actor = access.contributor(request, repo_type, org, name)
        change = partial(discussions.change_status, status=payload.get("status"), comment=payload.get("comment"),
                         actor=actor)
        return {"newStatus": store.change_discussion(path, num, change)}

    @router.post("/api/{repo_type}/{org}/{name}/discussions/{num}/merge")
    def merge_pull_request(request: Request, repo_type: str, org: str, name: str, num: int,
                           payload: dict | None = None) -> dict:
        path, actor = access.admin(request, repo_type, org, name, "merge a pull request")
        store.merge(path, num, (payload or {}).get("comment"), actor.name)
        return {}

    return router


def _summary(record: dict, repo_type: str, org: str, name: str) -> dict:
    """A discussion as the Hub lists it, in a repo of the URL folder ``repo_type`` (e.g. "datasets")."""
    return {"num": record["num"], "title": record["title"], "status": record["status"],
            "isPullRequest": record["isPullRequest"], "createdAt": record["createdAt"],
            "author": discussions.author_info(discussions.author_of(record)),
            "repo": {"name": f"{org}/{name}", "type": API_TYPES[repo_type]}, "pinned": False,
            "numComments": sum(event["type"] == "comment" for event in record["events"])}
