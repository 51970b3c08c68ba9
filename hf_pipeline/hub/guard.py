"""What every request to the local Hub passes before a route sees it, and the errors it answers with.

``RequestGuard`` (an ASGI wrapper around the app) refuses, with a Hub-style error:

- a ``Host`` whose name is not this server's (403): a web page that rebinds its own DNS name to 127.0.0.1 cannot
  talk to it (the port is not checked: a reverse proxy on this machine forwards the one it listens on);
- a write (any method but GET/HEAD/OPTIONS) whose ``Origin`` is not the server's own (403): a web page cannot
  post to it, even with a "simple" request that a browser sends without asking first;
- a body over its cap (413), counted as it arrives, so nothing larger is ever buffered: commits
  (``Limits.commit_bytes``), LFS uploads (``Limits.lfs_bytes``, streamed to disk by the route), anything else
  (``Limits.json_bytes``).

LFS uploads are PUT without the ``Authorization`` header (the client sends none to an upload URL, which on the
Hub is a presigned storage URL): the batch endpoint hands out URLs signed with ``UploadSigner``, valid for one
object of one announced size in one repo, for a day.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

MiB, GiB = 1024 ** 2, 1024 ** 3
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
COMMIT_PATH_RE = re.compile(r"/api/(models|datasets|spaces)/[^/]+/[^/]+/commit/")
LFS_UPLOAD_PATH_RE = re.compile(r"/api/local/lfs/")
UPLOAD_URL_LIFETIME_S = 24 * 3600  # a big commit uploads its files one after another, long after the batch call


class HubError(HTTPException):
    """An error answered the way the Hub does, so ``hf_raise_for_status`` maps it to the right exception.

    An ``HTTPException``: FastAPI lets those through when they are raised while it reads a body (``RequestGuard``'s
    413), where it would turn any other exception into a 400.
    """

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None) -> None:
        super().__init__(status, message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}

    def response(self) -> JSONResponse:
        # Headers must be latin-1: keep the (possibly non-ASCII) details in the JSON body only.
        headers = {"X-Error-Message": self.message.encode("ascii", "replace").decode(), **self.headers}
        if self.code:
            headers["X-Error-Code"] = self.code
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


@dataclass(frozen=True)
class Limits:
    """Caps on request bodies, in bytes."""

    commit_bytes: int = 64 * MiB  # one NDJSON commit: its operations and its inline (non-LFS) files
    lfs_bytes: int = 50 * GiB  # one LFS object (the Hub's own cap on a file)
    json_bytes: int = 8 * MiB  # any other body: JSON payloads, the paths-info form


def too_large(what: str, cap: int) -> HubError:
    return HubError(413, f"{what} is larger than this Hub accepts ({cap} bytes)")


class RequestGuard:
    """ASGI wrapper: Host check, Origin check on writes, body caps (see the module docstring)."""

    def __init__(self, app: Callable, host_names: set[str], limits: Limits) -> None:
        self.app, self.host_names, self.limits = app, host_names, limits

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").lower()
        # the name is what a rebinding page cannot choose (its own); the port may be a reverse proxy's on this machine
        name = host.rsplit(":", 1)[0] if host.rsplit(":", 1)[-1].isdigit() else host
        if name not in self.host_names:
            error = HubError(403, f"This Hub does not answer for Host {host or '(none)'!r}: use the address it was "
                                  "started on (or add the name with --allowed-host)")
            return await error.response()(scope, receive, send)
        origin = headers.get("origin")
        if scope["method"] not in SAFE_METHODS and origin is not None and origin.lower() != f"http://{host}":
            error = HubError(403, f"Cross-origin write refused: Origin {origin!r} is not this Hub (http://{host})")
            return await error.response()(scope, receive, send)
        what, cap = self._cap(scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:  # refused before a byte of the body is read
            return await too_large(what, cap).response()(scope, receive, send)
        received = 0

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:  # raised inside the route's body read: the app's HubError handler answers 413
                    raise too_large(what, cap)
            return message

        await self.app(scope, counting_receive, send)

    def _cap(self, scope: dict) -> tuple[str, int]:
        path = scope["path"]
        if COMMIT_PATH_RE.match(path):
            return "The commit payload", self.limits.commit_bytes
        if scope["method"] == "PUT" and LFS_UPLOAD_PATH_RE.match(path):
            return "The LFS object", self.limits.lfs_bytes
        return "The request body", self.limits.json_bytes


class UploadSigner:
    """Signs and checks LFS upload URLs with a key that lives only in this server process."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def _signature(self, repo: str, oid: str, size: int, expires: int) -> str:
        message = f"{repo}\n{oid}\n{size}\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def query(self, repo: str, oid: str, size: int) -> str:
        """The query string of an upload URL for ``oid`` of ``size`` bytes into ``repo`` ("type/org/name")."""
        expires = int(time.time()) + UPLOAD_URL_LIFETIME_S
        return f"size={size}&expires={expires}&signature={self._signature(repo, oid, size, expires)}"

    def check(self, repo: str, oid: str, params: dict[str, str]) -> int:
        """The announced size of a signed upload; 403 if the signature is missing, wrong or expired."""
        try:
            size, expires = int(params["size"]), int(params["expires"])
            valid = hmac.compare_digest(params["signature"], self._signature(repo, oid, size, expires))
        except (KeyError, ValueError):
            valid = False
        if not valid or expires < time.time():
            raise HubError(403, "Invalid or expired upload URL: ask the LFS batch endpoint for a new one")
        return size
