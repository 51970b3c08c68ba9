"""Optional dependencies: each lives in a pyproject extra, and a run checks the ones its config needs once, at plan
time, before anything loads, with one line naming the extra to install.

    vllm        llm.backend: vllm                       pip install 'fineinstructions-pipeline[vllm]'
    grammar     constrained decoding on transformers     pip install 'fineinstructions-pipeline[grammar]'
    openai      llm.backend: openai (an HTTP client)     pip install 'fineinstructions-pipeline[openai]'
    analyze     plots: true (matplotlib)                 pip install 'fineinstructions-pipeline[analyze]'
    ray         --executor ray                           pip install 'fineinstructions-pipeline[ray]'
    hub         the local Hub (run_stage.py hub ...)     pip install 'fineinstructions-pipeline[hub]'

The needs are read off the config itself (any `llm` section, `constrain_format`, `plots`), so a stage declares
nothing and cannot forget one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

from hf_pipeline.errors import PipelineError

PACKAGE = "fineinstructions-pipeline"


def missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None  # located, never imported: a check costs nothing


def require(module: str, extra: str, why: str) -> None:
    if missing(module):
        raise PipelineError(f"{why} needs the `{module}` package: pip install '{PACKAGE}[{extra}]'.")


def config_needs(config: Any, where: str = "") -> list[tuple[str, str, str]]:
    """(module, extra, why) for every optional package `config` (a stage's config dataclass) will use. An LLM section
    is any nested config with a `backend` (an `llm.config.LLMConfig`: not imported, this module sits below `llm`)."""
    needs = []
    constrained = bool(getattr(config, "constrain_format", False))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and isinstance(getattr(value, "backend", None), str):
            key = f"{where}{f.name}"
            if value.backend == "vllm":
                needs.append(("vllm", "vllm", f"{key}.backend=vllm"))
            elif value.backend == "openai":
                needs.append(("httpx", "openai", f"{key}.backend=openai"))
            elif value.backend == "transformers" and constrained:
                needs.append(("xgrammar", "grammar", "constrain_format on the transformers backend"))
        elif dataclasses.is_dataclass(value):
            needs += config_needs(value, f"{where}{f.name}.")
    if getattr(config, "plots", False) is True:
        needs.append(("matplotlib", "analyze", f"{where}plots=true"))
    return needs


def check_config(stage: str, config: Any) -> None:
    """Every optional package the stage's config needs is installed, or one line says which extra to add."""
    for module, extra, why in config_needs(config):
        require(module, extra, f"stage {stage} with {why}")
