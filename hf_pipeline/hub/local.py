"""Start, stop and inspect a detached local Hub server (``hf_pipeline.hub.server``) for one root folder.

The server's pid, port and URL live in ``ROOT/hub.json`` so any later process (another CLI call, a test session)
finds and reuses the running server instead of starting a second one. Its output goes to ``ROOT/hub.log``.
With ``access_log=FILE`` the server also appends one JSON line per request to FILE (see ``read_access_log``).
Users' default root is ``.hub/`` in the current directory; callers pass it.
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
          access_log: Path | None = None) -> str:
    """Start a detached server for ``root`` (or reuse the running one) and return its URL once it is healthy.

    ``access_log``: a file the server appends one JSON line per request to (method, path, Range, status, bytes;
    never another header). A running server is only reused if it logs to that same file.
    """
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    access_log = str(Path(access_log).resolve()) if access_log else None
    with _start_lock(root):
        running = status(root)
        if running is not None:
            if access_log and running.get("access_log") != access_log:
                raise RuntimeError(f"the local hub for {root} is running, not logging to {access_log}: stop it first")
            return running["url"]
        port = port or free_port(host)
        url = f"http://{host}:{port}"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_PACKAGE_PARENT),
                                                                          os.environ.get("PYTHONPATH")]))}
        with open(root / LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hf_pipeline.hub.server", "--root", str(root), "--host", host,
                 "--port", str(port), *(["--access-log", access_log] if access_log else [])],
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
        return url


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
