"""One small interface over the LLM engines the stages use: chat messages in, one completion per row out, in order.

Backends: `transformers` (any machine, no server), `vllm` (the production path: offline engine, continuous
batching) and `openai` (any OpenAI-compatible server, e.g. a vLLM server another team runs).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from hf_pipeline.errors import PipelineError
from hf_pipeline.hub_io import cache_root

Messages = list[dict]  # one chat: [{"role": "user", "content": "..."}, ...]


@dataclass(frozen=True)
class ModelSpec:
    backend: Literal["transformers", "vllm", "openai"] = "transformers"
    # a Hub id, a local model dir, or a .gguf file; for `openai`, the model name the server serves
    model: str = ""
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside `model` (a Hub repo or a local dir)
    dtype: str = "auto"  # auto: bf16 on GPU, float32 on CPU (see resolved_dtype)
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    # vLLM's KV cache in GiB; None: vLLM's default (a share of GPU memory; on CPU, 1 GiB, see vllm_backend)
    kv_cache_gib: float | None = None
    max_batch_size: int = 32  # transformers: rows per `generate` call (vLLM and servers schedule their own)
    # openai: the server and the *name* of the env var that holds its key (the key itself never lives here),
    # requests in flight, retries with exponential backoff, and when to call the server gone
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_concurrency: int = 16
    max_retries: int = 5
    retry_backoff: float = 1.0  # seconds before the first retry, doubling after each
    request_timeout: float = 600.0
    max_consecutive_failures: int = 3  # rows in a row failing after all retries -> BackendUnavailable


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 512
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    # vllm/openai: per request, so identical prompts sample identically; transformers: once per generate call
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings; the matched string is not part of the text


@dataclass
class Completion:
    text: str
    finish_reason: Literal["stop", "length", "error"]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


class Backend(Protocol):
    spec: ModelSpec

    def generate(
        self, messages: list[Messages], sampling: Sampling, json_schema: dict | None = None
    ) -> list[Completion]: ...


class BackendUnavailable(PipelineError):
    """The engine behind a backend is gone (e.g. a server stopped answering) part way through a batch.

    `completions` has one entry per input row: the rows that finished (including rows that failed on their
    own, as `finish_reason="error"`), and None for rows never answered, so a stage can keep what it has."""

    def __init__(self, message: str, completions: list[Completion | None]):
        super().__init__(message)
        self.completions = completions

    def __reduce__(self):  # survives pickling, e.g. out of a Ray worker
        return type(self), (str(self), self.completions)


def load_backend(spec: ModelSpec) -> Backend:
    if spec.backend == "transformers":
        from hf_pipeline.llm.transformers_backend import TransformersBackend

        return TransformersBackend(spec)
    if spec.backend == "vllm":
        from hf_pipeline.llm.vllm_backend import VLLMBackend

        return VLLMBackend(spec)
    if spec.backend == "openai":
        from hf_pipeline.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(spec)
    raise PipelineError(f"unknown LLM backend {spec.backend!r} (expected transformers, vllm or openai)")


def model_ref(spec: ModelSpec) -> str:
    """How a dataset card names the model: "repo@revision", a local path, or the served name and its server."""
    if spec.backend == "openai":
        return f"{spec.model} (served at {spec.base_url})"
    local = Path(spec.model).expanduser()
    if local.exists():
        ref = str(local.resolve())
    else:
        ref = f"{spec.model}@{spec.revision}" if spec.revision else spec.model
    return f"{ref}:{spec.gguf_file}" if spec.gguf_file else ref


def gguf_path(spec: ModelSpec) -> Path | None:
    """The local GGUF file a spec names (downloaded from the Hub if needed), or None for a regular model."""
    if spec.gguf_file is None and not spec.model.endswith(".gguf"):
        return None
    if spec.gguf_file is None:
        return Path(spec.model).expanduser()
    local_dir = Path(spec.model).expanduser()
    if local_dir.is_dir():
        return local_dir / spec.gguf_file
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(spec.model, spec.gguf_file, revision=spec.revision))


def load_path(spec: ModelSpec) -> tuple[str, str | None]:
    """(what `from_pretrained`/vLLM should load, at which revision): the spec's model, or for a GGUF the
    directory it was materialized into."""
    gguf = gguf_path(spec)
    return (str(materialize_gguf(gguf)), None) if gguf else (spec.model, spec.revision)


def resolved_dtype(spec: ModelSpec, on_gpu: bool) -> str:
    """bf16 on GPU; float32 on CPU, where bf16 matmuls without AVX512-BF16/AMX are several times slower
    (SmolLM2 on a 2-core AVX2 machine, vLLM: 12 tok/s bf16 vs 54 tok/s float32)."""
    if spec.dtype != "auto":
        return spec.dtype
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
