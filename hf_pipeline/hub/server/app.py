"""The local Hub's ASGI app: ``create_app`` assembles the guard, the routes and olah; ``main`` serves it.

Requests pass ``guard.RequestGuard`` first: a ``Host`` that does not name this server (DNS rebinding) or a write
from another ``Origin`` (a web page) is a 403, and bodies are capped as they arrive (413): commits at 64 MiB
(``--max-commit-bytes``), LFS objects at 50 GiB (``--max-lfs-bytes``; also refused past the size their batch call
announced), anything else at 8 MiB (``--max-json-bytes``). Then come our own routes (``reads``, ``writes``,
``discussion_routes``), and olah's router last, offline, for anything else. Listening on a non-loopback
``--host`` logs one warning line.

``--access-log FILE`` appends one JSON line per request (method, raw path and query, ``Range``, status, bytes
sent; see ``AccessLog``) and never another header: tokens travel in ``Authorization``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from olah.configs import OlahConfig
from olah.server_routes import router as olah_router

from hf_pipeline.hub.accounts import allowed_host_names, network_warning
from hf_pipeline.hub.guard import MiB, HubError, Limits, RequestGuard
from hf_pipeline.hub.server.auth import Access
from hf_pipeline.hub.server.discussion_routes import discussion_routes
from hf_pipeline.hub.server.plumbing import now
from hf_pipeline.hub.server.reads import LISTING_PAGE_SIZE, read_routes
from hf_pipeline.hub.server.store import Store
from hf_pipeline.hub.server.writes import write_routes


def create_app(root: Path, host: str = "127.0.0.1", allowed_hosts: tuple[str, ...] = (),
               limits: Limits = Limits(), listing_page_size: int = LISTING_PAGE_SIZE) -> FastAPI:
    """Build the ASGI app serving every repository under ``root`` (created if missing).

    ``host``: the address the server listens on; requests must name it, a loopback name or one of
    ``allowed_hosts`` in their ``Host`` header. ``limits``: caps on request bodies. ``listing_page_size``: repos
    per page of the repo listings.
    """
    store = Store(root)
    access = Access(store)
    app = FastAPI(title="hf_pipeline local hub")
    app.add_middleware(RequestGuard, host_names=allowed_host_names(host, allowed_hosts), limits=limits)
    _configure_olah(app, store)

    @app.exception_handler(HubError)
    async def _hub_error(_: Request, exc: HubError) -> JSONResponse:
        return exc.response()

    # Routes are tried in order: the first that fits a request's path and method answers it, and where a path fits
    # only routes of other methods, the first of those answers the 405 and names its methods in ``Allow``. Routes
    # whose paths overlap keep the order they have always had, within a group or from one group to the next
    # (validate-yaml before the listing /api/{repo_type}, an LFS upload before its download link, opening a
    # discussion before listing them, repo reads before the LFS routes).
    app.include_router(read_routes(store, access, listing_page_size))
    app.include_router(write_routes(store, access, limits))
    app.include_router(discussion_routes(store, access))

    # Everything else falls through to olah's router (offline), e.g. repo ids without a namespace (RepoNotFound).
    # Its routes that name one of our repos (HEAD of some reads, Xet tokens) see private repos by our rule too.
    def olah_sees_only_readable_repos(request: Request) -> None:
        params = request.path_params
        if {"repo_type", "org", "repo"} <= params.keys():
            access.readable(request, params["repo_type"], params["org"], params["repo"])

    app.include_router(olah_router, dependencies=[Depends(olah_sees_only_readable_repos)])
    return app


def _configure_olah(app: FastAPI, store: Store) -> None:
    """olah's handlers read their settings from app.state. Offline, with an unroutable upstream: a route we did not
    override must never reach huggingface.co."""
    config = OlahConfig()
    config.offline = True
    config.mirrors_path = [str(store.mirrors)]
    config.repos_path = str(store.root / "olah-cache")
    config.hf_scheme, config.hf_netloc, config.hf_lfs_netloc = "http", "127.0.0.1:9", "127.0.0.1:9"
    config.metadata_cache_ttl = 0  # its ref -> sha cache would serve a moved branch stale; our routes never use it
    app.state.app_settings = SimpleNamespace(config=config)
    app.state.logger = None
    app.state.templates = None  # olah's HTML pages are shadowed by reads' index()


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
        record = {"time": now(), "method": scope["method"],
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
    import uvicorn

    defaults = Limits()
    overview = sys.modules[__package__].__doc__  # the package's docstring: its first line says what this serves
    # Named as it is run: left to itself, argparse would name the file that runs, __main__.py.
    parser = argparse.ArgumentParser(prog="python -m hf_pipeline.hub.server", description=overview.splitlines()[0])
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
