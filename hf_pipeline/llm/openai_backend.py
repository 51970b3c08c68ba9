"""Any OpenAI-compatible chat server (vLLM's, or a hosted API) over HTTP: bounded concurrency, retries with
exponential backoff, and a clear stop when the server is gone, keeping every row that finished.

A row fails on its own (a 400 for an over-long prompt) -> `Completion(finish_reason="error")`, and the batch goes
on. Rows failing one after another after all retries (connection refused, timeouts, 429/5xx, 401/403/404) mean
the server is gone or unusable -> `BackendUnavailable` with the finished completions attached.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm.base import BackendUnavailable, Completion, Messages, ModelSpec, Sampling
from hf_pipeline.llm.json_output import warn_unbounded_strings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


class _RowFailed(Exception):
    def __init__(self, message: str, retryable: bool, server_fault: bool):
        super().__init__(message)
        self.retryable = retryable
        self.server_fault = server_fault  # says something about the server, not about this row


class OpenAIBackend:
    def __init__(self, spec: ModelSpec):
        if not spec.base_url:
            raise PipelineError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.spec = spec
        key = os.environ.get(spec.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(
            base_url=spec.base_url.rstrip("/"),
            headers=headers,
            timeout=spec.request_timeout,
            limits=httpx.Limits(max_connections=spec.max_concurrency),
        )

    def generate(
        self, messages: list[Messages], sampling: Sampling, json_schema: dict | None = None
    ) -> list[Completion]:
        body: dict = {
            "model": self.spec.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if json_schema is not None:
            warn_unbounded_strings(json_schema)
            # vLLM's server honours response_format; the older `guided_json` field is silently ignored
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json_schema, "strict": True},
            }

        results: list[Completion | None] = [None] * len(messages)
        gone = threading.Event()
        lock = threading.Lock()
        failures_in_a_row = 0
        last_error = ""

        def run(i: int) -> None:
            nonlocal failures_in_a_row, last_error
            if gone.is_set():
                return
            try:
                completion = self._request({**body, "messages": messages[i]}, gone)
                server_fault = False
            except _RowFailed as e:
                completion = Completion(text="", finish_reason="error", error=str(e))
                server_fault = e.server_fault
            if completion is None:  # abandoned because the server is gone
                return
            with lock:
                results[i] = completion
                if server_fault:
                    failures_in_a_row += 1
                    last_error = completion.error
                    if failures_in_a_row >= self.spec.max_consecutive_failures:
                        gone.set()
                else:
                    failures_in_a_row = 0

        with ThreadPoolExecutor(max_workers=self.spec.max_concurrency) as pool:
            list(pool.map(run, range(len(messages))))
        if gone.is_set():
            finished = sum(c is not None and c.finish_reason != "error" for c in results)
            raise BackendUnavailable(
                f"the server at {self.spec.base_url} stopped answering: {failures_in_a_row} rows in a row failed "
                f"after {self.spec.max_retries} retries (last: {last_error}); {finished} of {len(messages)} rows "
                "finished and are attached",
                results,
            )
        return results

    def _request(self, body: dict, gone: threading.Event) -> Completion | None:
        """One row: the completion, None if the batch gave up on the server meanwhile, or _RowFailed."""
        for attempt in range(self.spec.max_retries + 1):
            try:
                return self._post(body)
            except _RowFailed as e:
                if not e.retryable or attempt == self.spec.max_retries:
                    raise
                delay = min(MAX_BACKOFF_S, self.spec.retry_backoff * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("%s; retry %d/%d in %.1fs", e, attempt + 1, self.spec.max_retries, delay)
                if gone.wait(delay):
                    return None
        raise AssertionError("unreachable")

    def _post(self, body: dict) -> Completion:
        try:
            response = self.client.post("/chat/completions", json=body)
        except httpx.TimeoutException as e:
            raise _RowFailed(f"timed out: {e!r}", retryable=True, server_fault=True) from e
        except httpx.TransportError as e:  # connection refused/reset, broken protocol
            raise _RowFailed(f"connection failed: {e!r}", retryable=True, server_fault=True) from e
        status = response.status_code
        if status != 200:
            message = f"HTTP {status}: {response.text[:500]}"
            retryable = status in (408, 409, 429) or status >= 500
            raise _RowFailed(message, retryable=retryable, server_fault=retryable or status in (401, 403, 404))
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        reason = choice.get("finish_reason")
        if reason in ("content_filter", "abort"):  # no usable text: the server refused or dropped the request
            finish, error = "error", f"finish_reason {reason!r}"
        else:
            finish, error = ("length" if reason == "length" else "stop"), None
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=finish,
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
            error=error,
        )
