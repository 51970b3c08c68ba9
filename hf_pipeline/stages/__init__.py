"""The registry of stages: every module of this package, each declaring its stage(s) as module attributes (a
`Stage`, or a `TrainingStage` for a model run). Adding a stage is adding its module (and its card template): the
registry finds it. Stage modules import heavy libraries inside their functions, so listing is cheap."""

from __future__ import annotations

import pkgutil
from functools import lru_cache
from importlib import import_module

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.training import TrainingStage
from hf_pipeline.stage import Stage


@lru_cache(maxsize=None)
def all_stages() -> dict[str, Stage | TrainingStage]:
    """name -> stage, by name, for every stage declared by a module of this package."""
    found: dict[str, Stage | TrainingStage] = {}
    for module in pkgutil.iter_modules(__path__):
        for value in vars(import_module(f"{__name__}.{module.name}")).values():
            if isinstance(value, (Stage, TrainingStage)):
                if found.get(value.name, value) is not value:
                    raise PipelineError(f"two stages are named '{value.name}' (one in hf_pipeline.stages.{module.name}).")
                found[value.name] = value
    return dict(sorted(found.items()))
