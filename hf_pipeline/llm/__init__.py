"""LLM backends behind one interface: `load_backend(spec).generate(messages, sampling, json_schema)`."""

from hf_pipeline.llm.base import (
    Backend,
    BackendUnavailable,
    Completion,
    ModelSpec,
    Sampling,
    load_backend,
    materialize_gguf,
    model_ref,
)
from hf_pipeline.llm.json_output import nullable, parse_json_completion
from hf_pipeline.llm.smollm2 import default_offline_model

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Completion",
    "ModelSpec",
    "Sampling",
    "default_offline_model",
    "load_backend",
    "materialize_gguf",
    "model_ref",
    "nullable",
    "parse_json_completion",
]
