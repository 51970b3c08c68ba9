"""Any OpenAI-compatible chat server (vLLM's, or a hosted API) over HTTP: bounded concurrency, retries with
exponential backoff, and a clear stop when the server is gone, keeping every row that finished.

A row fails on its own (a 400) -> `Completion(finish_reason="error")`, and the batch goes on; a 400 that says the
prompt exceeds the model's context -> `finish_reason="prompt_too_long"` (this backend has no tokenizer to count
first). A schema per row is sent per request; cached prompt tokens come from `usage.prompt_tokens_details` when
the server sends it (vLLM's with `--enable-prompt-tokens-details`, as `vllm_server` starts it). Rows failing one after another after all retries (connection refused, timeouts, 429/5xx, 401/403/404) mean
the server is gone or unusable -> `BackendUnavailable` with the finished completions attached.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm.base import Backend, BackendUnavailable, Completion, Messages, Sampling, public_url
from hf_pipeline.llm.config import LLMConfig

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0
# how vLLM's and OpenAI's servers word a prompt that does not fit the context
_CONTEXT_EXCEEDED = re.compile(r"maximum context length|longer than the maximum model length", re.I)


class _RowFailed(Exception):
    def __init__(self, message: str, retryable: bool, server_fault: bool, too_long: bool = False):
        super().__init__(message)
        self.retryable = retryable
        self.server_fault = server_fault  # says something about the server, not about this row
        self.too_long = too_long  # the server says the prompt exceeds the model's context


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, config: LLMConfig):
        if not config.base_url:
            raise PipelineError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        super().__init__(config)
        key = os.environ.get(config.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(
            base_url=config.base_url.rstrip("/"),
            headers=headers,
            timeout=config.request_timeout,
            limits=httpx.Limits(max_connections=config.max_concurrency),
        )

    def settings(self) -> dict:
        c = self.config
        return {
            **super().settings(),
            "base_url": public_url(c.base_url),
            "max_concurrency": c.max_concurrency,
            "max_retries": c.max_retries,
            "retry_backoff": c.retry_backoff,
            "request_timeout": c.request_timeout,
            "max_consecutive_failures": c.max_consecutive_failures,
        }

    def _generate(self, messages: list[Messages], sampling: Sampling, schemas: list[dict] | None) -> list[Completion]:
        body: dict = {
            "model": self.config.model,
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if sampling.stop:
            body["stop"] = list(sampling.stop)

        def request(i: int) -> dict:
            if schemas is None:
                return {**body, "messages": messages[i]}
            # vLLM's server honours response_format; the older `guided_json` field is silently ignored
            response_format = {"type": "json_schema", "json_schema": {"name": "output", "schema": schemas[i], "strict": True}}
            return {**body, "messages": messages[i], "response_format": response_format}

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
                completion = self._request(request(i), gone)
                server_fault = False
            except _RowFailed as e:
                completion = Completion(text="", finish_reason="prompt_too_long" if e.too_long else "error", error=str(e))
                server_fault = e.server_fault
            if completion is None:  # abandoned because the server is gone
                return
            with lock:
                results[i] = completion
                if server_fault:
                    failures_in_a_row += 1
                    last_error = completion.error
                    if failures_in_a_row >= self.config.max_consecutive_failures:
                        gone.set()
                else:
                    failures_in_a_row = 0

        with ThreadPoolExecutor(max_workers=self.config.max_concurrency) as pool:
            list(pool.map(run, range(len(messages))))
        if gone.is_set():
            finished = sum(c is not None and c.finish_reason != "error" for c in results)
            raise BackendUnavailable(
                f"the server at {public_url(self.config.base_url)} stopped answering: {failures_in_a_row} rows in a row failed "
                f"after {self.config.max_retries} retries (last: {last_error}); {finished} of {len(messages)} rows "
                "finished and are attached",
                results,
            )
        return results

    def _request(self, body: dict, gone: threading.Event) -> Completion | None:
        """One row: the completion, None if the batch gave up on the server meanwhile, or _RowFailed."""
        for attempt in range(self.config.max_retries + 1):
            try:
                return self._post(body)
            except _RowFailed as e:
                if not e.retryable or attempt == self.config.max_retries:
                    raise
                delay = min(MAX_BACKOFF_S, self.config.retry_backoff * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("%s; retry %d/%d in %.1fs", e, attempt + 1, self.config.max_retries, delay)
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
            too_long = status == 400 and bool(_CONTEXT_EXCEEDED.search(response.text))
            raise _RowFailed(message, retryable=retryable, server_fault=retryable or status in (401, 403, 404), too_long=too_long)
        data = response.json()
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        details = usage.get("prompt_tokens_details") or {}
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
            cached_tokens=details.get("cached_tokens") or 0,
        )
