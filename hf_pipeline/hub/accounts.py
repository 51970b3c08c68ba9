"""The local Hub's accounts and tokens, and the addresses it answers on: standard library only.

Tokens live in ``ROOT/tokens.json`` (mode 0600, owner only): a JSON object mapping each token to its account name.
The default account ``local`` gets one at ``hub start``; ``add_account`` adds others. The server re-reads the file
whenever it changes, so a new account works without a restart. Tokens never travel on a command line (``ps`` shows
those), only through this file.

Hosts: the server answers only requests whose ``Host`` names it (see ``allowed_host_names``), which stops DNS
rebinding; a server bound to a non-loopback address is reachable from the network (``network_warning``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import string
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ACCOUNT = "local"
TOKENS_FILE = "tokens.json"
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{34}")  # the Hub's user access tokens: hf_ + 34 letters and digits
ACCOUNT_RE = re.compile(r"[A-Za-z0-9][\w.-]{0,95}", re.ASCII)  # what a namespace may be (see server.store.NAME_RE)
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Actor:
    """The account making a write, and whether it administers the repo's namespace (the server's
    ``auth.Accounts.admins``)."""

    name: str
    admin: bool


def new_token() -> str:
    """A fresh Hub-like token (``hf_`` + 34 letters/digits) from the OS's secure random source."""
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


def read_tokens(root: Path) -> dict[str, str]:
    """token -> account name; {} when the file does not exist yet."""
    try:
        tokens = json.loads((Path(root) / TOKENS_FILE).read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(tokens, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tokens.items()):
        raise ValueError(f"{Path(root) / TOKENS_FILE} is not a JSON object of token -> account name")
    return tokens


def token_of(root: Path, account: str = DEFAULT_ACCOUNT) -> str | None:
    """One token of ``account`` (the first recorded), or None if it has none."""
    return next((token for token, name in read_tokens(root).items() if name == account), None)


def ensure_token(root: Path, token: str | None = None) -> str:
    """Make sure the default account has a token and return it: ``token`` if given (added to any it has), else
    the one it already has, else a new one. Call it under the caller's lock on ``root``."""
    if token is not None and not TOKEN_RE.fullmatch(token):
        raise ValueError("a local Hub token is hf_ followed by 34 letters or digits (see accounts.new_token)")
    tokens = read_tokens(root)
    if token is None:
        token = token_of(root) or new_token()
    if tokens.get(token) not in (None, DEFAULT_ACCOUNT):
        raise ValueError("that token belongs to another account")
    if tokens.get(token) != DEFAULT_ACCOUNT:
        _write_tokens(root, {**tokens, token: DEFAULT_ACCOUNT})
    return token


def add_account(root: Path, name: str, namespaces_in_use: set[str]) -> str:
    """Create account ``name`` with a new token and return the token (call it under the caller's lock on ``root``).

    A name already held by an account or used as a namespace is refused: on the Hub, users and organizations share
    one space of names, and here a namespace that is no account's belongs to the default account's organizations.
    """
    if not ACCOUNT_RE.fullmatch(name) or ".." in name or name.endswith(".git"):
        raise ValueError(f"invalid account name: {name!r}")
    tokens = read_tokens(root)
    if name == DEFAULT_ACCOUNT or name in tokens.values() or name in namespaces_in_use:
        raise ValueError(f"the name {name!r} is taken (an account or a namespace with repositories)")
    token = new_token()
    _write_tokens(root, {**tokens, token: name})
    return token


def _write_tokens(root: Path, tokens: dict[str, str]) -> None:
    """Replace the tokens file atomically; the new file is created 0600, so it is never readable by others."""
    tmp = Path(root) / f".{TOKENS_FILE}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(tokens, handle, indent=2)
    os.replace(tmp, Path(root) / TOKENS_FILE)


def is_loopback(host: str) -> bool:
    """True for names and addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve to anything
        return False


def allowed_host_names(host: str, extra: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The names a request's ``Host`` may give (with the server's port): loopback names, the address the server was
    started on and any ``extra`` names (how clients on the network reach it). IPv6 addresses in brackets."""
    names = {*LOOPBACK_NAMES, host, *extra}
    return {f"[{n.lower()}]" if ":" in n and not n.startswith("[") else n.lower() for n in names}


def network_warning(host: str, port: int) -> str | None:
    """The one line a server on a non-loopback address warns with, or None for a loopback one."""
    if is_loopback(host):
        return None
    return (f"WARNING: the local Hub listens on {host}:{port} and is reachable from the network: anyone who can "
            "reach it can read its public repos; writes need the token (`hub env` prints it).")
