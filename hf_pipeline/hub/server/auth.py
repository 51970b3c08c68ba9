"""Who may do what on the local Hub: tokens to accounts, and the checks every route starts with.

Accounts and permissions, as far as the pipeline relies on the Hub's: tokens map to accounts in
``ROOT/tokens.json`` (``hf_pipeline.hub.accounts``; re-read when it changes). Reads of public repos need no token;
an unknown token is a 401 on any request; every write needs a valid one (401 without). A namespace belongs to the
account of that name (the default account ``local`` owns ``local``, and administers every namespace that is no
account's, as its organizations): its owner may do everything. Any other signed-in account may, on a repo it can
see, open discussions and pull requests, comment, edit and hide its own comments, rename, publish or close its own
discussions and commit to its own pull requests, and nothing else (403): no commit to a branch, no branch or tag,
no merge, no deletion. A private repo (``visibility``/``private`` at creation) is visible to its owner only: to
anyone else it does not exist (the Hub's 401/404 ``RepoNotFound``) and listings leave it out. Commits are authored
in git by the account that made them (``list_repo_commits``' ``authors``), and discussions and their events name
theirs (``author``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import Request

from hf_pipeline.hub.accounts import DEFAULT_ACCOUNT, TOKENS_FILE, Actor, read_tokens
from hf_pipeline.hub.guard import HubError
from hf_pipeline.hub.server.store import Store


class Accounts:
    """token -> account name from ``ROOT/tokens.json``, re-read whenever the file changes, and who owns what.

    A namespace belongs to the account of that name; a namespace that is no account's is an organization the
    default account administers (so a single-user Hub can publish under any organization name, as its admin).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stamp: tuple | None = None
        self._tokens: dict[str, str] = {}
        self._guard = threading.Lock()

    def _current(self) -> dict[str, str]:
        try:
            stat = (self.root / TOKENS_FILE).stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)  # the file is replaced, never edited in place
        with self._guard:
            if stamp != self._stamp:
                self._tokens, self._stamp = read_tokens(self.root), stamp
            return self._tokens

    def account(self, authorization: str | None) -> str | None:
        """The account an ``Authorization`` header names; None without one; 401 for a token this Hub never gave."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        name = self._current().get(token.strip()) if scheme.lower() == "bearer" else None
        if name is None:  # the Hub's words: the client then raises a plain 401 HfHubHTTPError
            raise HubError(401, "Invalid credentials in Authorization header")
        return name

    def names(self) -> set[str]:
        """Every account's name, the default account's included."""
        return {DEFAULT_ACCOUNT, *self._current().values()}

    def admins(self, account: str | None, namespace: str) -> bool:
        """Whether ``account`` may do everything in ``namespace``: its own, or an organization's for the default."""
        if account is None:
            return False
        return account == namespace or (account == DEFAULT_ACCOUNT and namespace not in self.names())


class Access:
    """The checks every route starts with: who the request's account is, and what it may see or change."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.accounts = Accounts(store.root)

    def account_of(self, request: Request) -> str | None:
        """The request's account; None without a token."""
        return self.accounts.account(request.headers.get("authorization"))

    def signed_in(self, request: Request) -> str:
        """The request's account; a 401 without a token."""
        account = self.account_of(request)
        if account is None:
            raise HubError(401, "You must be authenticated to do this: send a token of this Hub (HF_TOKEN, see "
                                "`hub env`)")
        return account

    def visible(self, path: Path, org: str, account: str | None) -> bool:
        """Whether ``account`` can see the repo at ``path`` in namespace ``org``: public, or administered by it."""
        return not self.store.settings(path).get("private") or self.accounts.admins(account, org)

    def readable(self, request: Request, repo_type: str, org: str, name: str) -> Path:
        """A repo the request may read: public, or private and administered by its account. Anything else is a
        repo that does not exist, as the Hub answers (401 without a token, 404 with one): RepositoryNotFoundError."""
        account = self.account_of(request)
        path = self.store.find(repo_type, org, name)
        if not self.visible(path, org, account):
            raise HubError(401 if account is None else 404, f"Repository {org}/{name} not found", "RepoNotFound")
        return path

    def contributor(self, request: Request, repo_type: str, org: str, name: str) -> tuple[Path, Actor]:
        """A signed-in account that can see the repo: it may open discussions and pull requests and comment."""
        account = self.signed_in(request)
        return self.readable(request, repo_type, org, name), Actor(account, self.accounts.admins(account, org))

    def admin(self, request: Request, repo_type: str, org: str, name: str, action: str) -> tuple[Path, Actor]:
        """The repo's owner (or, for an organization's repo, the default account): it may do everything."""
        path, actor = self.contributor(request, repo_type, org, name)
        if not actor.admin:
            raise HubError(403, f"{actor.name} cannot {action} in {org}/{name}: only the repo's owner can")
        return path, actor
