"""One small interface over the LLM engines the stages use: chat messages in, one completion per row out, in order.

    backend = load_backend(config)            # an LLMConfig; hf_pipeline.llm.registry names the backends
    completions = backend.generate(messages, sampling, json_schema)
    backend.last_usage, backend.usage         # tokens and seconds of the last call, and of all calls so far
    backend.settings()                        # the engine settings, JSON-able, for dataset cards

Backends: `transformers` (any machine, no server), `vllm` (the production path: offline engine, continuous
batching, prefix caching) and `openai` (any OpenAI-compatible server, e.g. a vLLM server another team runs).
Every setting and its default lives in `LLMConfig` (hf_pipeline/llm/config.py); backends read it directly.

`json_schema` is one schema for every row, or a list with one schema per row (e.g. instantiate's
`constrain_format`, where each row has its own pattern): either way the rows go to the engine in one call.

A row whose prompt does not fit the model's context (prompt tokens + 1 > max_model_len) is never sent: it comes
back as `Completion(finish_reason="prompt_too_long")`, which `parse_json_completion` turns into the row status
`prompt_too_long`, so one long document cannot fail a whole batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.hub import cache_root, split_ref
from hf_pipeline.llm.config import PACKAGED_SMOLLM2, LLMConfig
from hf_pipeline.llm.json_output import warn_unbounded_strings
from hf_pipeline.llm.smollm2 import smollm2_gguf

log = logging.getLogger(__name__)

Messages = list[dict]  # one chat: [{"role": "user", "content": "..."}, ...]
FinishReason = Literal["stop", "length", "error", "prompt_too_long"]
# the packaged SmolLM2's context when max_model_len is unset: keeps vLLM's KV cache small on CPU
PACKAGED_MAX_MODEL_LEN = 2048
USAGE_KEYS = ("prompt_tokens", "cached_prompt_tokens", "generated_tokens", "seconds", "requests")


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling settings; `hf_pipeline.llm.config.sampling(config)` builds one from an LLMConfig, whose
    defaults these are."""

    max_tokens: int = LLMConfig.max_tokens
    temperature: float = LLMConfig.temperature  # 0: greedy
    top_p: float = LLMConfig.top_p
    # vllm/openai: per request, so identical prompts sample identically; transformers: once per generate call.
    # None: unseeded (LLMConfig always passes its seed).
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings; the matched string is not part of the text


def sampling(config: LLMConfig) -> Sampling:
    """The per-call sampling settings of a config."""
    return Sampling(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p, seed=config.seed)


@dataclass
class Completion:
    """One row's answer. `prompt_tokens` counts the rendered chat prompt, `cached_tokens` the part of it served
    from the engine's prefix cache (vLLM, servers that report it; 0 otherwise), `completion_tokens` the generated
    tokens. finish_reason: stop | length (hit max_tokens) | error (see `error`) | prompt_too_long (never sent to
    the engine; `error` says how long against which context)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    cached_tokens: int = 0


class BackendUnavailable(PipelineError):
    """The engine behind a backend is gone (e.g. a server stopped answering) part way through a batch.

    `completions` has one entry per input row: the rows that finished (including rows that failed on their
    own, as `finish_reason="error"`), and None for rows never answered, so a stage can keep what it has."""

    def __init__(self, message: str, completions: list[Completion | None]):
        super().__init__(message)
        self.completions = completions

    def __reduce__(self):  # survives pickling, e.g. out of a Ray worker
        return type(self), (str(self), self.completions)


def empty_usage() -> dict[str, float]:
    return {key: 0 for key in USAGE_KEYS} | {"seconds": 0.0}


def usage_of(completions: list[Completion | None], seconds: float) -> dict[str, float]:
    """Tokens the engine processed for these rows: rows never sent (prompt_too_long, or None when the engine went
    away) are not requests and add no tokens."""
    sent = [c for c in completions if c is not None and c.finish_reason != "prompt_too_long"]
    return {
        "prompt_tokens": sum(c.prompt_tokens for c in sent),
        "cached_prompt_tokens": sum(c.cached_tokens for c in sent),
        "generated_tokens": sum(c.completion_tokens for c in sent),
        "seconds": round(seconds, 3),
        "requests": len(sent),
    }


def prompt_too_long(prompt_tokens: int, context: int) -> Completion:
    return Completion(
        text="",
        finish_reason="prompt_too_long",
        prompt_tokens=prompt_tokens,
        error=f"prompt_too_long: {prompt_tokens} prompt tokens + 1 generated > context of {context} tokens",
    )


def per_row_schemas(json_schema: dict | list[dict] | None, rows: int) -> list[dict] | None:
    """None, or one schema per row."""
    if json_schema is None:
        return None
    if isinstance(json_schema, dict):
        return [json_schema] * rows
    schemas = list(json_schema)
    if len(schemas) != rows or not all(isinstance(s, dict) for s in schemas):
        raise PipelineError(
            f"json_schema must be one schema (a dict) or a list of one dict per row; got {len(schemas)} entries "
            f"for {rows} rows"
        )
    return schemas


class Backend:
    """What every backend shares: schema handling, timing and token accounting around `_generate`.

    `usage` adds up every call; `last_usage` is the last call's, both as {"prompt_tokens", "cached_prompt_tokens",
    "generated_tokens", "seconds", "requests"} (seconds: wall time inside generate)."""

    name = ""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.usage = empty_usage()
        self.last_usage = empty_usage()

    def generate(
        self, messages: list[Messages], sampling: Sampling, json_schema: dict | list[dict] | None = None
    ) -> list[Completion]:
        """One completion per row, in order. `json_schema`: None, one schema for every row, or one per row."""
        schemas = per_row_schemas(json_schema, len(messages))
        for schema in _distinct(schemas or []):
            warn_unbounded_strings(schema)
        started = time.perf_counter()
        try:
            completions = self._generate(messages, sampling, schemas) if messages else []
        except BackendUnavailable as e:
            self._record(e.completions, time.perf_counter() - started)
            raise
        self._record(completions, time.perf_counter() - started)
        return completions

    def _generate(self, messages: list[Messages], sampling: Sampling, schemas: list[dict] | None) -> list[Completion]:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The backend's name and engine settings, JSON-able and free of secrets, for dataset cards."""
        return {"backend": self.name, "model": model_ref(self.config)}

    def _record(self, completions: list[Completion | None], seconds: float) -> None:
        self.last_usage = usage_of(completions, seconds)
        for key, value in self.last_usage.items():
            self.usage[key] += value
        self.usage["seconds"] = round(self.usage["seconds"], 3)


def _distinct(schemas: list[dict]) -> list[dict]:
    seen, out = set(), []
    for schema in schemas:
        if id(schema) not in seen:
            seen.add(id(schema))
            out.append(schema)
    return out


def chat_token_ids(tokenizer, messages: list[Messages]) -> list[list[int]]:
    """Each chat rendered with the model's chat template (generation prompt added) and tokenized: exactly what the
    engine is given, so its length is the prompt's token count."""
    texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def split_too_long(token_ids: list[list[int]], context: int | None) -> tuple[list[int], dict[int, Completion]]:
    """(rows that fit, {row: prompt_too_long completion}) for a context of `context` tokens (None: no check)."""
    fit, refused = [], {}
    for i, ids in enumerate(token_ids):
        if context is not None and len(ids) + 1 > context:
            refused[i] = prompt_too_long(len(ids), context)
        else:
            fit.append(i)
    if refused:
        log.warning("%d of %d prompts do not fit the context of %d tokens: status prompt_too_long", len(refused), len(token_ids), context)
    return fit, refused


# --- where a config's model lives -------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedModel:
    """A config's `model` resolved: what to load (a Hub id, a local dir or .gguf file, or a served name), at which
    revision, and the context cap (the config's, or the packaged model's default)."""

    model: str
    revision: str | None
    max_model_len: int | None


def resolve_model(config: LLMConfig) -> ResolvedModel:
    if config.model == PACKAGED_SMOLLM2:
        return ResolvedModel(str(smollm2_gguf()), None, config.max_model_len or PACKAGED_MAX_MODEL_LEN)
    if config.backend == "openai" or Path(config.model).expanduser().exists():
        return ResolvedModel(config.model, None, config.max_model_len)  # a served name, or a local path
    model, revision = split_ref(config.model)
    return ResolvedModel(model, revision, config.max_model_len)


def model_ref(config: LLMConfig) -> str:
    """How a dataset card names the model: "repo@revision", a local path, or the served name and its server."""
    if config.backend == "openai":
        return f"{config.model} (served at {public_url(config.base_url)})"
    resolved = resolve_model(config)
    local = Path(resolved.model).expanduser()
    if local.exists():
        ref = str(local.resolve())
    else:
        ref = f"{resolved.model}@{resolved.revision}" if resolved.revision else resolved.model
    return ref


def public_url(url: str | None) -> str | None:
    """A URL without user:password@ (a key can hide there)."""
    if not url or "@" not in url.split("//", 1)[-1].split("/", 1)[0]:
        return url
    scheme, rest = url.split("//", 1) if "//" in url else ("", url)
    host_and_path = rest.split("@", 1)[1]
    return f"{scheme}//{host_and_path}" if scheme else host_and_path


def load_path(config: LLMConfig) -> tuple[str, str | None]:
    """(what `from_pretrained`/vLLM should load, at which revision): the config's model, or for a GGUF the
    directory it was materialized into."""
    resolved = resolve_model(config)
    if resolved.model.endswith(".gguf"):
        return str(materialize_gguf(resolved.model)), None
    return resolved.model, resolved.revision


def resolved_dtype(config: LLMConfig, on_gpu: bool) -> str:
    """bf16 on GPU; float32 on CPU, where bf16 matmuls without AVX512-BF16/AMX are several times slower
    (SmolLM2 on a 2-core AVX2 machine, vLLM: 12 tok/s bf16 vs 54 tok/s float32)."""
    if config.dtype != "auto":
        return config.dtype
    return "bfloat16" if on_gpu else "float32"


def materialize_gguf(path: str | Path) -> Path:
    """Convert a GGUF file once into a safetensors model dir (config, weights, tokenizer, chat template) in the
    cache, keyed by the file's content, and return that dir. Loading GGUF directly dequantizes every time (~40 s
    for SmolLM2-135M on 2 cores) and vLLM takes GGUF only through a plugin; the dir loads in a second anywhere.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise PipelineError(f"GGUF file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    out = cache_root() / "models" / digest.hexdigest()[:16]
    if (out / "config.json").exists():
        return out

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it, although its weights are
    # already dequantized: copy them into a plain model built from the same config.
    config = model.config
    del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: a concurrent converter either wins or finds the finished dir
    except OSError:
        if not (out / "config.json").exists():
            raise
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out
