"""A stage's run as a typed spec: (stage, run options, config), built once from YAML/--set values and validated.

The CLI builds one from its flags; the pipeline command builds one per entry, all before the first stage runs, and
hands each to the process that runs it as that typed object, not as a file to re-read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hf_pipeline.run.config import build_config
from hf_pipeline.errors import PipelineError


@dataclass
class StageSpec:
    stage: str  # the stage's name (looked up in hf_pipeline.stages in whichever process runs it)
    options: Any  # runner.RunOptions
    config: Any  # the stage's config dataclass
    argv: list[str] = dataclasses.field(default_factory=list)  # recorded in the card
    dry_run: bool = False


def is_training(stage: Any) -> bool:
    from hf_pipeline.run.training import TrainingStage

    return isinstance(stage, TrainingStage)


def run_option_names(stage: Any) -> set[str]:
    from hf_pipeline.run.runner import RunOptions

    if is_training(stage):
        from hf_pipeline.run.training import TRAIN_OPTIONS

        return set(TRAIN_OPTIONS)
    return {f.name for f in dataclasses.fields(RunOptions)}


def build_spec(name: str, values: dict[str, Any], argv: list[str] | None = None, dry_run: bool = False) -> StageSpec:
    """YAML/--set values -> StageSpec; every key is a run option or a config key (nested ones dotted), else an error."""
    from hf_pipeline.run.runner import RunOptions
    from hf_pipeline.stages import all_stages

    stages = all_stages()
    if name not in stages:
        raise PipelineError(f"unknown stage '{name}' (stages: {', '.join(stages)}).")
    stage = stages[name]
    run_keys = run_option_names(stage)
    options = build_config(RunOptions, {k: v for k, v in values.items() if k in run_keys})
    config = build_config(stage.config_class, {k: v for k, v in values.items() if k not in run_keys})
    return StageSpec(name, options, config, list(argv or []), dry_run)


def run_spec(spec: StageSpec):
    """Run a spec with the runner of its kind; returns its RunResult / TrainResult (None for a dry run)."""
    from hf_pipeline.stages import all_stages

    stage = all_stages()[spec.stage]
    if is_training(stage):
        from hf_pipeline.run.training import run_training

        return run_training(stage, spec.options, spec.config, argv=spec.argv, dry_run=spec.dry_run)
    from hf_pipeline.run.runner import run_stage

    return run_stage(stage, spec.options, spec.config, argv=spec.argv, dry_run=spec.dry_run)
