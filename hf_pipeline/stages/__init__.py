"""The registry of stages. Stage modules import heavy libraries inside their functions, so listing is cheap."""

from __future__ import annotations

from importlib import import_module

from hf_pipeline.stage import Stage

STAGE_MODULES = ["collect_queries", "genericize", "build_index", "match", "instantiate", "judge", "assemble", "analyze"]


def all_stages() -> dict[str, Stage]:
    stages = [import_module(f"hf_pipeline.stages.{m}").STAGE for m in STAGE_MODULES]
    return {s.name: s for s in stages}
