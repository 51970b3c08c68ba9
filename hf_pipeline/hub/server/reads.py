"""The local Hub's read routes: service and identity, repo info, refs, trees, paths-info, commit history, files
(with ``Range``) and the repo listings.

Reads are served by olah's mirror backend (``LocalMirrorRepo``: repo metadata, refs, tree listings) behind our
own routes, which first resolve the repository and revision so the client gets Hub-style errors
(``X-Error-Code: RepoNotFound / RevisionNotFound / EntryNotFound``, where olah answers 401 or falls back to an
upstream), and which hand olah a full commit sha, so a branch or tag is never served stale. We serve these reads
ourselves, where olah's fall short: ``/resolve`` (olah ignores ``Range``, which ``HfFileSystem`` and pyarrow rely
on, sends no ``ETag`` or ``X-Repo-Commit`` on GET, and fails with a 500 on a missing file), commit history (olah's
lacks the ``authors[].user`` the client parses), paths-info (olah's lookup is quadratic in the folder size) and the
``lastCommit`` of expanded listings (olah takes it from HEAD, not from the requested revision). The repo listings
(``/api/models|datasets|spaces``, paged by a ``Link`` header as the Hub's) are all ours, as are the service routes
(health, the index of repos, ``whoami``, and ``validate-yaml``, which checks a card and changes nothing).
Discussions have their routes in ``discussion_routes``; the LFS API's download link is with the rest of that API
in ``writes``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote

import yaml
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from olah.mirror.repos import LocalMirrorRepo

from hf_pipeline.hub.accounts import DEFAULT_ACCOUNT
from hf_pipeline.hub.guard import HubError
from hf_pipeline.hub.server.auth import Access
from hf_pipeline.hub.server.plumbing import DEFAULT_BRANCH, cat_file, date_of, git
from hf_pipeline.hub.server.store import POINTER_RE, URL_PREFIX, Store, path_infos

LISTING_PAGE_SIZE = 1000  # repos per page of /api/models|datasets|spaces, as on the Hub
COMMITS_PER_PAGE = 50  # commits per page of a history (the Hub pages it too; the client follows the Link header)
# What the listings take. ``full``, ``config``, ``cardData`` and ``expand`` ask for more data per repo: the summary
# is all there is here, and the client reads what is missing as None.
LISTING_PARAMS = {"author", "search", "sort", "direction", "limit", "cursor", "full", "config", "cardData", "expand"}
LISTING_SORTS = {"id", "createdAt", "lastModified", "downloads", "likes", "trendingScore"}  # counts: 0 for all


def read_routes(store: Store, access: Access, listing_page_size: int = LISTING_PAGE_SIZE) -> APIRouter:
    """The read routes over ``store``'s repos, each checking ``access`` first; ``listing_page_size``: repos per
    page of the repo listings."""
    router = APIRouter()

    # -- service, identity and validation -------------------------------------------------------------------
    @router.get("/api/local/health")
    def health() -> dict:
        return {"status": "ok", "root": str(store.root)}

    @router.get("/")
    @router.get("/repos")
    def index(request: Request) -> dict:
        """What this hub holds that the caller can see (replaces olah's HTML pages, whose templating fails on
        this Starlette)."""
        account = access.account_of(request)
        return {kind: sorted(f"{p.parent.name}/{p.name}" for p in (store.mirrors / kind).glob("*/*")
                             if (p / ".git").is_dir() and access.visible(p, p.parent.name, account))
                for kind in URL_PREFIX}

    @router.get("/api/whoami-v2")
    def whoami(request: Request) -> dict:
        """The Hub's shape: the account, its organizations (for the default account, every namespace that is no
        account's: see ``Accounts``) and a write token."""
        account = access.signed_in(request)
        orgs = sorted(store.namespaces() - access.accounts.names()) if account == DEFAULT_ACCOUNT else []
        return {"type": "user", "id": account, "name": account, "fullname": account, "email": None,
                "emailVerified": False, "isPro": False, "canPay": False, "periodEnd": None, "avatarUrl": "",
                "orgs": [{"type": "org", "id": org, "name": org, "fullname": org, "email": None, "canPay": False,
                          "periodEnd": None, "avatarUrl": "", "roleInOrg": "admin", "isEnterprise": False}
                         for org in orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": f"{account} (local Hub)",
                                                                 "role": "write"}}}

    @router.post("/api/validate-yaml")  # create_commit checks a README.md's metadata here first
    def validate_yaml(payload: dict) -> JSONResponse:
        match = re.match(r"\s*---\n(.*?)\n---", payload.get("content", ""), flags=re.S)
        try:
            if match and not isinstance(yaml.safe_load(match.group(1)) or {}, dict):
                raise yaml.YAMLError("metadata must be a mapping")
        except yaml.YAMLError as err:
            return JSONResponse({"errors": [{"message": str(err)}], "warnings": []}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    # -- repos: info, refs, trees, paths-info, history, files -------------------------------------------------
    @router.api_route("/api/{repo_type}/{org}/{name}", methods=["GET", "HEAD"])
    @router.api_route("/api/{repo_type}/{org}/{name}/revision/{revision:path}", methods=["GET", "HEAD"])
    def repo_info(request: Request, repo_type: str, org: str, name: str, revision: str = DEFAULT_BRANCH) -> dict:
        path = access.readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        # Card YAML may hold dates, which olah returns as Python objects.
        meta = json.loads(json.dumps(_with_olah(path, repo_type, org, name, lambda m: m.get_meta(sha)), default=str))
        meta["private"] = bool(store.settings(path).get("private"))  # olah says False for every repo
        if request.query_params.get("blobs") in ("1", "true", "True"):  # files_metadata=True
            tree = _with_olah(path, repo_type, org, name, lambda m: m.get_tree(sha, "", recursive=True)) or []
            files = {item["path"]: item for item in tree if item["type"] == "file"}
            for sibling in meta["siblings"]:
                item = files.get(sibling["rfilename"], {})
                sibling.update(blobId=item.get("oid"), size=item.get("size"))
                if "lfs" in item:  # siblings name the LFS hash "sha256" where trees call it "oid"
                    lfs = item["lfs"]
                    sibling["lfs"] = {"sha256": lfs["oid"], "size": lfs["size"], "pointerSize": lfs["pointerSize"]}
        return meta

    @router.get("/api/{repo_type}/{org}/{name}/refs")
    def list_refs(request: Request, repo_type: str, org: str, name: str, include_prs: bool = False) -> dict:
        path = access.readable(request, repo_type, org, name)
        return _with_olah(path, repo_type, org, name, lambda m: m.get_refs(include_prs=include_prs))

    @router.api_route("/api/{repo_type}/{org}/{name}/tree/{rest:path}", methods=["GET", "HEAD"])
    def list_tree(request: Request, repo_type: str, org: str, name: str, rest: str,
                  recursive: bool = False, expand: bool = False) -> list:
        revision, path_in_repo = _raw_rev_and_path(request, "tree", 5)
        path = access.readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        items = _with_olah(path, repo_type, org, name, lambda m: m.get_tree(sha, path_in_repo, recursive))
        if items is None:  # olah answers None for a missing path or a file
            raise HubError(404, f"{path_in_repo} does not exist on {revision}", "EntryNotFound")
        if expand:  # olah's expand takes each lastCommit from HEAD, not from this revision
            for item in items:
                item["lastCommit"] = _last_commit(path, sha, item["path"])
        return items

    @router.post("/api/{repo_type}/{org}/{name}/paths-info/{revision:path}")
    async def paths_info(request: Request, repo_type: str, org: str, name: str, revision: str) -> list:
        path = access.readable(request, repo_type, org, name)
        form = parse_qs((await request.body()).decode())  # parsed by hand: no form field limit on long lists

        def read() -> list:
            sha = store.resolve(path, revision)
            infos = path_infos(path, sha, form.get("paths", []))
            if form.get("expand", ["false"])[0].lower() == "true":
                for info in infos:
                    info["lastCommit"] = _last_commit(path, sha, info["path"])
            return infos

        return await run_in_threadpool(read)

    @router.get("/api/{repo_type}/{org}/{name}/commits/{revision:path}")
    def list_commits(request: Request, repo_type: str, org: str, name: str, revision: str) -> JSONResponse:
        """A page of the history (newest first), as the Hub pages it: ``p`` is the page, the ``Link: <...>;
        rel="next"`` header names the next one, which the client follows. A client that lists the history often
        pays one request per page: what a run's request count shows."""
        path = access.readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        page = int(request.query_params.get("p", "0")) if request.query_params.get("p", "0").isdigit() else 0
        out = git(path, "log", "-z", f"--skip={page * COMMITS_PER_PAGE}", f"--max-count={COMMITS_PER_PAGE + 1}",
                  "--format=%H%x1f%an%x1f%ct%x1f%s%x1f%b", sha).decode()
        commits = []
        for record in filter(None, out.split("\0")):
            oid, author, timestamp, title, body = record.split("\x1f", 4)
            commits.append({"id": oid, "title": title, "message": body.strip(), "authors": [{"user": author}],
                            "date": date_of(timestamp)})
        headers = {}
        if len(commits) > COMMITS_PER_PAGE:
            headers["Link"] = f'<{request.url.include_query_params(p=page + 1)}>; rel="next"'
        return JSONResponse(commits[:COMMITS_PER_PAGE], headers=headers)

    def resolve_file(request: Request, repo_type: str, org: str, name: str, marker_at: int) -> Response:
        revision, path_in_repo = _raw_rev_and_path(request, "resolve", marker_at)
        path = access.readable(request, repo_type, org, name)
        sha = store.resolve(path, revision)
        commit_header = {"X-Repo-Commit": sha}  # also on 404s: the client caches a file's absence per commit
        found = cat_file(path, [f"{sha}:{path_in_repo}"])[0] if path_in_repo and "\n" not in path_in_repo else None
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

    @router.api_route("/{repo_type}/{org}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
    def resolve_typed(request: Request, repo_type: str, org: str, name: str, rest: str) -> Response:
        return resolve_file(request, repo_type, org, name, 4)

    @router.api_route("/{org}/{name}/resolve/{rest:path}", methods=["GET", "HEAD"])
    def resolve_model(request: Request, org: str, name: str, rest: str) -> Response:
        return resolve_file(request, "models", org, name, 3)

    # -- listings: list_models, list_datasets, list_spaces ---------------------------------------------------------
    @router.get("/api/{repo_type}")
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
        account, author = access.account_of(request), params.get("author")
        searches = [term.lower() for term in params.getlist("search")]
        repos = [p for p in sorted((store.mirrors / repo_type).glob("*/*"))
                 if (p / ".git").is_dir() and author in (None, p.parent.name)
                 and access.visible(p, p.parent.name, account)
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

    return router


def _with_olah(path: Path, repo_type: str, org: str, name: str, read: Callable[[LocalMirrorRepo], Any]) -> Any:
    """One read through olah's mirror backend, with a fresh reader: nothing is cached between requests."""
    mirror = LocalMirrorRepo(str(path), repo_type, org, name)
    try:
        return read(mirror)
    finally:
        mirror._git_repo.close()  # stop its persistent `git cat-file` processes now, not at garbage collection


def _raw_rev_and_path(request: Request, marker: str, start: int) -> tuple[str, str]:
    """Split ``.../{marker}/{revision}/{path}`` from the raw URL: the client %-encodes '/' in revisions."""
    parts = request.scope["raw_path"].decode().split("/")
    i = parts.index(marker, start)
    return unquote(parts[i + 1]), "/".join(unquote(p) for p in parts[i + 2:])


def _last_commit(path: Path, sha: str, path_in_repo: str) -> dict | None:
    """The ``lastCommit`` of an expanded tree/paths-info entry: the latest commit touching it up to ``sha``."""
    out = git(path, "log", "-1", "--format=%H%x00%s%x00%ct", sha, "--", path_in_repo).decode().strip()
    if not out:
        return None
    oid, title, timestamp = out.split("\0")
    return {"id": oid, "title": title, "date": date_of(timestamp)}


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


def _repo_summary(store: Store, path: Path) -> dict:
    """A repo as the Hub's listings give it (what ``ModelInfo``/``DatasetInfo``/``SpaceInfo`` read)."""
    settings = store.settings(path)
    sha, modified = git(path, "log", "-1", "--format=%H%x1f%ct", f"refs/heads/{DEFAULT_BRANCH}").decode().split("\x1f")
    created = settings.get("createdAt") or date_of(git(  # a repo made before creation dates were recorded
        path, "log", "--max-parents=0", "--format=%ct", f"refs/heads/{DEFAULT_BRANCH}").decode().split()[-1])
    return {"id": f"{path.parent.name}/{path.name}", "author": path.parent.name, "sha": sha,
            "lastModified": date_of(modified), "createdAt": created, "private": bool(settings.get("private")),
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "trendingScore": 0, "tags": []}
