"""The LLM backends by name: name -> "module:Class", imported only when a backend is loaded, so that importing
`hf_pipeline.llm` never imports torch, vLLM or httpx, and no backend module is imported by a module it imports.

    load_backend(LLMConfig(backend="vllm", model="org/name@rev"))
    register_backend("mine", "my_package.my_module:MyBackend")   # a class taking an LLMConfig
"""

from __future__ import annotations

import importlib

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm.config import LLMConfig

_BACKENDS: dict[str, str] = {
    "transformers": "hf_pipeline.llm.transformers_backend:TransformersBackend",
    "vllm": "hf_pipeline.llm.vllm_backend:VLLMBackend",
    "openai": "hf_pipeline.llm.openai_backend:OpenAIBackend",
}


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def register_backend(name: str, target: str) -> None:
    """Make `name` load `target` ("module:Class"); the class is constructed with an LLMConfig."""
    if ":" not in target:
        raise PipelineError(f"a backend target is 'module:Class', got {target!r}")
    _BACKENDS[name] = target


def backend_class(name: str) -> type:
    if name not in _BACKENDS:
        raise PipelineError(f"unknown LLM backend {name!r}; choose one of: {', '.join(backend_names())} (config key llm.backend)")
    module, _, cls = _BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def load_backend(config: LLMConfig):
    """The backend `config.backend` names, constructed with the config."""
    return backend_class(config.backend)(config)
