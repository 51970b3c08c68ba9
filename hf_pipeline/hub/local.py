"""Start, stop and inspect a detached local Hub server (``hf_pipeline.hub.server``) for one root folder.

The server's pid, port and URL live in ``ROOT/hub.json`` so any later process (another CLI call, a test session)
finds and reuses the running server instead of starting a second one. Its output goes to ``ROOT/hub.log``.
With ``access_log=FILE`` the server also appends one JSON line per request to FILE (see ``read_access_log``).
Users' default root is ``.hub/`` in the current directory; callers pass it.

Writes need a token: ``start`` gives the default account (``local``) one, kept in ``ROOT/tokens.json`` (0600) across
restarts, and ``token`` reads it back (``hub env`` prints it as ``HF_TOKEN``); ``add_user`` makes another account,
which the running server accepts at once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from hf_pipeline.hub import accounts

STATE_FILE = "hub.json"
LOG_FILE = "hub.log"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # so `-m hf_pipeline...` works without an install


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (another process could still take it before we bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def status(root: Path) -> dict | None:
    """The state of the server running for ``root`` (pid, port, url, ...), or None if none answers."""
    root = Path(root).resolve()
    state = _read_state(root)
    if state is None or not _alive(state.get("pid")):
        return None
    health = _health(state.get("url", ""))
    # The port must be served by *our* server for *this* root, not by whatever took the port since.
    if health is None or health.get("root") != str(root):
        return None
    return state


def start(root: Path, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0,
          access_log: Path | None = None, token: str | None = None, allowed_hosts: tuple[str, ...] = (),
          max_commit_bytes: int | None = None, max_lfs_bytes: int | None = None, max_json_bytes: int | None = None,
          listing_page_size: int | None = None) -> str:
    """Start a detached server for ``root`` (or reuse the running one) and return its URL once it is healthy.

    ``token``: a token (``accounts.new_token()``) for the default account, added to the one it may have; without
    it, the account keeps its token or gets a new one. ``access_log``: a file the server appends one JSON line per
    request to (method, path, Range, status, bytes; never another header). A running server is only reused if it
    logs to that same file. ``host``: the address to listen on (not a loopback one: reachable from the network, and
    a warning says so on stderr); ``allowed_hosts``: other names clients reach it by. ``max_commit_bytes``,
    ``max_lfs_bytes``, ``max_json_bytes``, ``listing_page_size``: the server's caps and page size (its defaults
    otherwise). Like ``host``, they apply when a server starts, not to a running one.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    access_log = str(Path(access_log).resolve()) if access_log else None
    with _start_lock(root):
        accounts.ensure_token(root, token)  # the running server re-reads the file: a new token works at once
        running = status(root)
        if running is not None:
            if access_log and running.get("access_log") != access_log:
                raise RuntimeError(f"the local hub for {root} is running, not logging to {access_log}: stop it first")
            return running["url"]
        port = port or free_port(host)
        url = f"http://{host}:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_PARENT),
                                                                          os.environ.get("PYTHONPATH")]))}
        options = {"--access-log": access_log, "--max-commit-bytes": max_commit_bytes,
                   "--max-lfs-bytes": max_lfs_bytes, "--max-json-bytes": max_json_bytes,
                   "--listing-page-size": listing_page_size}
        flags = [arg for flag, value in options.items() if value is not None for arg in (flag, str(value))]
        flags += [arg for name in allowed_hosts for arg in ("--allowed-host", name)]
        with open(root / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(  # never a token on the command line: `ps` shows it to every user
                [sys.executable, "-m", "hf_pipeline.hub.server", "--root", str(root), "--host", host,
                 "--port", str(port), *flags],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # detached: survives the caller, and Ctrl-C in the caller's shell
            )
        deadline = time.monotonic() + timeout
        while _health(url) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    proc.kill()
                tail = (root / LOG_FILE).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"local hub did not start on {url} (see {root / LOG_FILE}):\n{tail}")
            time.sleep(0.1)
        state = {"pid": proc.pid, "host": host, "port": port, "url": url, "root": str(root), "access_log": access_log}
        tmp = root / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, root / STATE_FILE)
        warning = accounts.network_warning(host, port)
        if warning:  # the server logged it to hub.log; the caller sees it too
            print(warning, file=sys.stderr)
        return url


def token(root: Path) -> str:
    """The default account's token for ``root`` (given by ``start``): what ``HF_TOKEN`` must be to write."""
    found = accounts.token_of(Path(root).resolve())
    if found is None:
        raise RuntimeError(f"no local Hub token in {Path(root).resolve()}: start the hub first")
    return found


def add_user(root: Path, name: str) -> str:
    """Create account ``name`` on the Hub at ``root`` and return its token; a running server accepts it at once.

    It owns the namespace ``name`` and can contribute to others' public repos (discussions, pull requests).
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    with _start_lock(root):
        namespaces = {p.name for p in root.glob("mirrors/*/*") if p.is_dir()}
        return accounts.add_account(root, name, namespaces)


def stop(root: Path, timeout: float = 10.0) -> bool:
    """Stop the server started for ``root``; True if one was running. Removes the state file either way."""
    root = Path(root).resolve()
    state = _read_state(root)
    stopped = False
    if state is not None and _alive(state.get("pid")) and _is_our_server(state["pid"], root):
        os.kill(state["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _alive(state["pid"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(state["pid"]):
            os.kill(state["pid"], signal.SIGKILL)
        stopped = True
    (root / STATE_FILE).unlink(missing_ok=True)
    return stopped


def read_access_log(root: Path) -> list[dict]:
    """The requests logged so far by the running server for ``root`` (started with ``access_log``), in order.

    Each: ``{"time", "method", "path" (raw, with the query string), "range" (or None), "status", "bytes"}``.
    """
    log = (_read_state(Path(root).resolve()) or {}).get("access_log")
    if not log:
        raise RuntimeError(f"no access log: the local hub for {root} is not running, or was started without one")
    *complete, _partial = Path(log).read_text(encoding="utf-8").split("\n")  # the last piece may be being written
    return [json.loads(line) for line in complete]


def _read_state(root: Path) -> dict | None:
    try:
        return json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:  # reap it first if it is our own exited child, else a zombie looks alive forever
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_our_server(pid: int, root: Path) -> bool:
    """Guard against a recycled pid: only signal a process that is the server for this root."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # no /proc (macOS): fall back to asking the server which root it serves
        state = _read_state(root) or {}
        return (_health(state.get("url", "")) or {}).get("root") == str(root)
    return b"hf_pipeline.hub.server" in cmdline and str(root).encode() in cmdline


def _health(url: str) -> dict | None:
    if not url:
        return None
    try:
        with _NO_PROXY.open(f"{url}/api/local/health", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


@contextmanager
def _start_lock(root: Path) -> Iterator[None]:
    """Serialize start() across processes for one root, so two callers never spawn two servers."""
    try:
        import fcntl
    except ImportError:  # Windows: best effort, no lock
        yield
        return
    with open(root / ".hub.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
