"""LLM backends behind one interface: `load_backend(config).generate(messages, sampling, json_schema)`.

`config` is an `LLMConfig` (hf_pipeline/llm/config.py), the one home of every LLM setting and default. Importing
this package imports no engine: the registry imports a backend's module when it is loaded.
"""

from hf_pipeline.llm.base import (
    Backend,
    BackendUnavailable,
    Completion,
    Sampling,
    load_path,
    materialize_gguf,
    model_ref,
    resolve_model,
    sampling,
)
from hf_pipeline.llm.config import LLMConfig
from hf_pipeline.llm.json_output import nullable, parse_json_completion
from hf_pipeline.llm.registry import backend_names, load_backend, register_backend
from hf_pipeline.llm.smollm2 import default_offline_model

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Completion",
    "LLMConfig",
    "Sampling",
    "backend_names",
    "default_offline_model",
    "load_backend",
    "load_path",
    "materialize_gguf",
    "model_ref",
    "nullable",
    "parse_json_completion",
    "register_backend",
    "resolve_model",
    "sampling",
]
