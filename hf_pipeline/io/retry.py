"""Every HTTP request the pipeline makes to the Hub survives a transient failure: retried, then raised as it came.

At thousands of shards some Hub call answers 429 or 5xx, or loses its connection, in every run. So one client does
every request of `huggingface_hub` in the process, and with it of `datasets`, which reaches the Hub through
`huggingface_hub` only (`HfApi`, `hf_hub_download`, `HfFileSystem`'s range reads and listings, `load_dataset_builder`
and `load_dataset` resolving `hf://` files): `HfApi` calls, downloads, range reads, commits and LFS uploads alike.
`install()` makes it `huggingface_hub`'s client (`set_client_factory`).

What is retried, on requests to the Hub (the `HF_ENDPOINT` host, and huggingface.co / hf.co and their subdomains:
its CDN and storage bridges): 429 and 500/502/503/504, after the `Retry-After` they give (or a 429's exhausted
`RateLimit` window's reset), capped, else after an exponential backoff with jitter; and a connection that fails
(refused, reset, dropped without a response, a connect or read timeout). At most `HF_PIPELINE_HUB_RETRIES` retries
(default 5); then the last response is handed back as it came (the caller's `hf_raise_for_status` raises its error)
or the last connection error is raised. One log line per retry (method, host and path: never a header, so never
the token; no query string, which can hold a signed URL).
Requests to other hosts go once, as before: `datasets` pings a download counter on S3 that an offline cluster never
reaches, and an LFS upload to a storage bucket's signed URL is retried by `huggingface_hub`'s `http_backoff` itself.

Request bodies: bytes (every API call, the NDJSON commit) are sent again as they are; a file being streamed (an LFS
upload's PUT, `huggingface_hub`'s `http_backoff` passes the open file) is rewound to where it started; any other body
(a generator) cannot be replayed, so its request is not retried here (`huggingface_hub` retries none of those
either). `http_backoff`, which `huggingface_hub` wraps around LFS batch/upload/verify calls, range reads and
paginated listings, retries on top of this client only once this client's retries are spent.

What is not covered: a response body cut off midway while the caller streams it (`stream=True`): the status line came,
so this client has returned. `hf_hub_download` resumes such a download itself (a `Range` request from where it
stopped); `HfFileSystem` reads by range through non-streamed requests, which are covered. Nothing the pipeline runs
uses `huggingface_hub`'s async client (only its inference clients do), `requests`, or `fsspec`'s HTTP filesystem for
the Hub. Xet transfers (off against the local Hub) go through `hf_xet`, which retries on its own.

Retrying a request the Hub may have applied before failing (a commit, a tag, a merge answered by a 502 or a dropped
connection) can meet the effect of the first attempt (a second commit, "tag exists"): making those steps idempotent
is the run protocol's part (`hub_run.py`).

Why a subclass of `httpx2.Client` overriding `send`, and not a transport: `send` is the one public method every
request goes through (`request`, `stream`, redirects included), and a client given its own transport ignores the
proxy environment variables (`HTTPS_PROXY`), which a cluster behind a proxy needs.

Where it is installed: on import of `hf_pipeline.io.hub`, which every process that reaches the Hub through the
pipeline imports before its first Hub call: the CLI and the runner's driver (`runner`, `contract` import it), local
workers (same process), Ray actors (unpickling a run's plan imports `runner`), and `datafiles`, `hub_run`, `pairs`.
Explicit calls at each Hub-touching function would miss the next one someone adds; the import cannot be skipped.
`install()` is idempotent, and a process forked after it keeps it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import httpx2

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# connection failures: refused/reset/dropped (NetworkError), dropped without a response (RemoteProtocolError), and
# connect/read/write/pool timeouts
RETRY_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and how long: `retries` after the first attempt; waits of `base_wait` * 2^n seconds with jitter,
    a 429 as long as the Hub asks; no wait longer than `max_wait`."""

    retries: int = 5
    base_wait: float = 0.5
    max_wait: float = 60.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        """From `HF_PIPELINE_HUB_RETRIES`, `HF_PIPELINE_HUB_RETRY_WAIT` and `HF_PIPELINE_HUB_MAX_WAIT` (seconds)."""
        default = cls()
        try:
            return cls(
                retries=max(0, int(os.environ.get("HF_PIPELINE_HUB_RETRIES", default.retries))),
                base_wait=max(0.0, float(os.environ.get("HF_PIPELINE_HUB_RETRY_WAIT", default.base_wait))),
                max_wait=max(0.0, float(os.environ.get("HF_PIPELINE_HUB_MAX_WAIT", default.max_wait))),
            )
        except ValueError as e:
            raise ValueError(f"HF_PIPELINE_HUB_RETRIES / _RETRY_WAIT / _MAX_WAIT must be numbers: {e}") from None

    def wait(self, attempt: int, headers: Mapping[str, str] | None = None) -> float:
        """Seconds before retry number `attempt + 1`: what the answer's headers ask for (plus up to 10%, so many
        workers limited at once do not all come back in the same instant), else exponential backoff with jitter."""
        asked = _asked_wait(headers) if headers is not None else None
        if asked is not None:
            return min(self.max_wait, asked * random.uniform(1.0, 1.1))
        return min(self.max_wait, self.base_wait * 2**attempt) * random.uniform(0.5, 1.0)


def _asked_wait(headers: Mapping[str, str]) -> float | None:
    """The wait an answer asks for: `Retry-After` in seconds, else the reset of an exhausted `RateLimit` window."""
    from huggingface_hub.utils import parse_ratelimit_headers

    retry_after = (headers.get("Retry-After") or "").strip()
    if retry_after.isdigit():
        return float(retry_after)
    limit = parse_ratelimit_headers(headers)
    if limit is not None and limit.remaining == 0:
        return float(limit.reset_in_seconds)
    return None


def _rewinder(request: httpx2.Request) -> Callable[[], None] | None:
    """How to send the request's body again: nothing to do for bytes, a seek back for a file being streamed; None when
    the body cannot be sent again (a generator)."""
    from httpx2._content import IteratorByteStream  # what a file passed as content/data becomes

    stream = request.stream
    if isinstance(stream, httpx2.ByteStream):
        return lambda: None
    source = getattr(stream, "_stream", None) if isinstance(stream, IteratorByteStream) else None
    if source is not None and callable(getattr(source, "seek", None)) and callable(getattr(source, "tell", None)):
        try:
            start = source.tell()
        except OSError:  # an unseekable pipe
            return None
        return lambda: source.seek(start)
    return None


HUB_DOMAINS = ("huggingface.co", "hf.co")


def is_hub(url: httpx2.URL) -> bool:
    """Whether a request goes to the Hub: the endpoint's host, or a host of the Hub's domains."""
    from huggingface_hub import constants

    host = url.host
    return host == httpx2.URL(constants.ENDPOINT).host or any(host == d or host.endswith("." + d) for d in HUB_DOMAINS)


def _where(request: httpx2.Request) -> str:
    """Method, host and path of a request for the log: no query string (a signed URL's), no header (the token)."""
    return f"{request.method} {request.url.host}{':' + str(request.url.port) if request.url.port else ''}{request.url.path}"


class RetryingClient(httpx2.Client):
    """An `httpx2.Client` whose every request is retried on transient failures (see the module docstring)."""

    def __init__(self, policy: RetryPolicy, **kwargs: Any):
        super().__init__(**kwargs)
        self.policy = policy

    def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        rewind = _rewinder(request) if is_hub(request.url) else None
        attempt = 0
        while True:
            try:
                response = super().send(request, **kwargs)
            except RETRY_ERRORS as e:
                if rewind is None or attempt >= self.policy.retries:
                    raise
                reason, wait = type(e).__name__, self.policy.wait(attempt)
            else:
                if response.status_code not in RETRY_STATUSES or rewind is None or attempt >= self.policy.retries:
                    return response
                reason = f"HTTP {response.status_code}"
                wait = self.policy.wait(attempt, response.headers)
                response.close()
            attempt += 1
            logger.warning("Hub %s: %s; retry %d/%d in %.1fs", _where(request), reason, attempt, self.policy.retries, wait)
            time.sleep(wait)
            rewind()


def retrying_client() -> httpx2.Client:
    """`huggingface_hub`'s default client (its request hook: offline mode, request ids, download counter; redirects
    followed; no timeout but the callers' own), retrying; the policy read from the environment now."""
    from huggingface_hub.utils._http import hf_request_event_hook

    return RetryingClient(RetryPolicy.from_env(), event_hooks={"request": [hf_request_event_hook]},
                          follow_redirects=True, timeout=None)


_installed = False


def install() -> None:
    """Make the retrying client `huggingface_hub`'s (and so `datasets`') in this process; once (idempotent)."""
    global _installed
    if _installed:
        return
    from huggingface_hub import set_client_factory

    set_client_factory(retrying_client)
    _installed = True
