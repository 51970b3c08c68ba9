"""The registry of stages. Stage modules import heavy libraries inside their functions, so listing is cheap."""

from __future__ import annotations

from importlib import import_module

from hf_pipeline.run.stage import Stage
from hf_pipeline.run.training import TrainingStage

STAGE_MODULES = ["collect_queries", "genericize", "build_index", "match", "instantiate", "judge", "assemble", "analyze", "genericizer_silver", "instantiator_silver", "match_labels"]


# training stages (silver data in, a versioned model repo out; see hf_pipeline/run/training.py): module -> attributes
TRAINING_STAGES = {"train_llm": ("STAGE_GENERICIZER", "STAGE_INSTANTIATOR"), "train_embedder": ("STAGE",)}


def all_stages() -> dict[str, Stage | TrainingStage]:
    stages: list[Stage | TrainingStage] = [import_module(f"hf_pipeline.stages.{m}").STAGE for m in STAGE_MODULES]
    for module, names in TRAINING_STAGES.items():
        stages += [getattr(import_module(f"hf_pipeline.stages.{module}"), n) for n in names]
    return {s.name: s for s in stages}
