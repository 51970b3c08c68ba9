"""The local Hub's write routes: repos, preupload, the LFS API, commits, branches and tags.

A commit's body must be ``application/x-ndjson`` or JSON (415 otherwise: a web form cannot send one) and an
inline file at most the Hub's 10 MB (413); ``guard.RequestGuard`` has already capped the body as it arrived. LFS
uploads carry no token (the client sends none to an upload URL): the batch call hands a signed URL for one object
of one size, and the upload is refused past that size. The LFS API is here whole, the download link its batch call
hands readers included. Who may write what is ``auth.Access``'s to say; the git side of every write is
``store.Store``'s. Discussions and pull requests have their routes in ``discussion_routes``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from hf_pipeline.hub.guard import HubError, Limits, UploadSigner, too_large
from hf_pipeline.hub.server.auth import Access
from hf_pipeline.hub.server.plumbing import DEFAULT_BRANCH, cat_file
from hf_pipeline.hub.server.store import (API_TYPES, GITATTRIBUTES, OID_RE, REGULAR_MAX_SIZE, REPO_TYPES, URL_PREFIX,
                                          Store, path_infos)

COMMIT_CONTENT_TYPES = {"application/x-ndjson", "application/json"}  # never a type a web form can send


def write_routes(store: Store, access: Access, limits: Limits) -> APIRouter:
    """The write routes over ``store``'s repos, each checking ``access`` first; ``limits``: the LFS object cap the
    batch API announces."""
    router = APIRouter()
    signer = UploadSigner()  # its key lives in this process only: upload URLs die with the server

    # -- repositories -----------------------------------------------------------------------------------------
    @router.post("/api/repos/create")
    def create_repo(request: Request, payload: dict) -> JSONResponse:
        account = access.signed_in(request)
        repo_type, org, name = _repo_from_payload(payload, account)
        if not access.accounts.admins(account, org):  # the Hub's 403: the client's exist_ok then checks it exists
            raise HubError(403, f"You don't have the rights to create a {API_TYPES.get(repo_type)} under the "
                                f"namespace {org!r}")
        # The client sends ``visibility`` ("public"/"private"); older ones sent ``private``.
        visibility = payload.get("visibility") or ("private" if payload.get("private") else "public")
        if visibility not in ("public", "private"):
            raise HubError(400, f"Unsupported visibility: {visibility}")
        url = repo_url(request, repo_type, org, name)
        # 409: the client's exist_ok=True turns it into success
        if not store.create_repo(repo_type, org, name, private=visibility == "private", author=account):
            return JSONResponse({"error": f"You already created this {repo_type[:-1]} repo", "url": url}, 409)
        return JSONResponse({"url": url, "name": f"{org}/{name}", "id": f"{org}/{name}"})

    @router.delete("/api/repos/delete")
    def delete_repo(request: Request, payload: dict) -> dict:
        path, _ = access.admin(request, *_repo_from_payload(payload, access.signed_in(request)),
                               action="delete the repo")
        store.delete_repo(path)
        return {}

    # -- uploads: preupload, the LFS API (batch, PUT, download link, verify) -----------------------------------
    @router.post("/api/{repo_type}/{org}/{name}/preupload/{revision:path}")
    def preupload(request: Request, repo_type: str, org: str, name: str, revision: str, payload: dict) -> dict:
        path, _ = access.contributor(request, repo_type, org, name)
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
        path = (access.readable(request, repo_type, org, name) if download
                else access.contributor(request, repo_type, org, name)[0])
        repo = f"{repo_type}/{org}/{name}"
        href = f"{_base(request)}/api/local/lfs/{repo}"
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

    @router.post("/{repo_type}/{org}/{name}.git/info/lfs/objects/batch")
    def lfs_batch_typed(request: Request, repo_type: str, org: str, name: str, payload: dict) -> JSONResponse:
        return lfs_batch(request, repo_type, org, name, payload)

    @router.post("/{org}/{name}.git/info/lfs/objects/batch")
    def lfs_batch_model(request: Request, org: str, name: str, payload: dict) -> JSONResponse:
        return lfs_batch(request, "models", org, name, payload)

    @router.put("/api/local/lfs/{repo_type}/{org}/{name}/{oid}")
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

    @router.get("/api/local/lfs/{repo_type}/{org}/{name}/{oid}")
    def lfs_download(request: Request, repo_type: str, org: str, name: str, oid: str) -> FileResponse:
        # The download link of an LFS object, as the LFS batch API (``writes``) hands it out.
        path = access.readable(request, repo_type, org, name)
        if not OID_RE.fullmatch(oid) or not store.lfs_object(path, oid).is_file():
            raise HubError(404, "Object does not exist", "EntryNotFound")
        return FileResponse(store.lfs_object(path, oid), media_type="application/octet-stream")

    @router.post("/api/local/lfs/{repo_type}/{org}/{name}/verify")
    def lfs_verify(request: Request, repo_type: str, org: str, name: str, payload: dict) -> dict:
        oid, (path, _) = str(payload.get("oid", "")), access.contributor(request, repo_type, org, name)
        obj = store.lfs_object(path, oid)
        if not OID_RE.fullmatch(oid) or not obj.is_file() or obj.stat().st_size != int(payload.get("size", -1)):
            raise HubError(404, "Object does not exist", "EntryNotFound")
        return {"message": "ok"}

    # -- commits, branches, tags -------------------------------------------------------------------------------
    @router.post("/api/{repo_type}/{org}/{name}/commit/{revision:path}")
    async def create_commit(request: Request, repo_type: str, org: str, name: str, revision: str) -> dict:
        """One NDJSON commit. Admins commit anywhere, anyone signed in may open a pull request with it, and a pull
        request's author may commit to it (``Store.commit``)."""
        create_pr = request.query_params.get("create_pr") in ("1", "true", "True")
        path, actor = access.contributor(request, repo_type, org, name)
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

    @router.post("/api/{repo_type}/{org}/{name}/branch/{branch:path}")
    def create_branch(request: Request, repo_type: str, org: str, name: str, branch: str,
                      payload: dict | None = None) -> dict:
        path, _ = access.admin(request, repo_type, org, name, "create a branch")
        sha = store.resolve(path, (payload or {}).get("startingPoint") or DEFAULT_BRANCH)
        store.set_ref(path, f"refs/heads/{branch}", sha, must_exist=False)
        return {}

    @router.delete("/api/{repo_type}/{org}/{name}/branch/{branch:path}")
    def delete_branch(request: Request, repo_type: str, org: str, name: str, branch: str) -> dict:
        path, _ = access.admin(request, repo_type, org, name, "delete a branch")
        if branch == DEFAULT_BRANCH:
            raise HubError(403, "You cannot delete the default branch")
        store.set_ref(path, f"refs/heads/{branch}", None, must_exist=True)
        return {}

    @router.post("/api/{repo_type}/{org}/{name}/tag/{revision:path}")
    def create_tag(request: Request, repo_type: str, org: str, name: str, revision: str, payload: dict) -> dict:
        path, actor = access.admin(request, repo_type, org, name, "create a tag")
        sha = store.resolve(path, revision)
        tag, message = payload.get("tag", ""), payload.get("message")
        store.set_ref(path, f"refs/tags/{tag}", sha, must_exist=False, message=message, author=actor.name)
        return {}

    @router.delete("/api/{repo_type}/{org}/{name}/tag/{tag:path}")
    def delete_tag(request: Request, repo_type: str, org: str, name: str, tag: str) -> dict:
        path, _ = access.admin(request, repo_type, org, name, "delete a tag")
        store.set_ref(path, f"refs/tags/{tag}", None, must_exist=True)
        return {}

    return router


def _repo_from_payload(payload: dict, account: str) -> tuple[str, str, str]:
    """(folder, namespace, name) of a create/delete payload; without an organization, the caller's own."""
    repo_type = REPO_TYPES.get(payload.get("type") or "model")
    if repo_type is None:
        raise HubError(400, f"Unsupported repo type: {payload.get('type')}")
    return repo_type, payload.get("organization") or account, payload.get("name") or ""


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def repo_url(request: Request, repo_type: str, org: str, name: str) -> str:
    """The URL of a repo's page on this Hub, as the request reached it."""
    return f"{_base(request)}/{URL_PREFIX[repo_type]}{org}/{name}"


def _lfs_patterns(path: Path, sha: str | None) -> list[str]:
    found = cat_file(path, [f"{sha}:.gitattributes"])[0] if sha else None
    lines = found[2].decode(errors="replace").splitlines() if found else GITATTRIBUTES.splitlines()
    return [line.split()[0] for line in lines if "filter=lfs" in line]


def _is_lfs(file: dict, patterns: list[str]) -> bool:
    """The Hub's rule: LFS for large or binary files, or names matching the repo's ``.gitattributes``."""
    if int(file.get("size", 0)) > REGULAR_MAX_SIZE or b"\0" in base64.b64decode(file.get("sample", "")):
        return True
    return any(fnmatch.fnmatch(file["path"].rsplit("/", 1)[-1], p) for p in patterns)
