"""A stage's run as a typed spec: (stage, run options, config), built once from YAML/--set values and validated.

The CLI builds one from its flags; the pipeline command builds one per entry, all before the first stage runs, and
hands each to the process that runs it as that typed object, not as a file to re-read. Which kind of run a stage
has (a dataset run, a model run: `contract.RunKind`) follows from the type of its declaration, here and nowhere
else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.config import build_config
from hf_pipeline.run.contract import RunKind, run
from hf_pipeline.run.plan import RunOptions
from hf_pipeline.run.runner import DATASET_RUN
from hf_pipeline.run.training import MODEL_RUN, TrainingStage, TrainOptions
from hf_pipeline.stage import Stage

RUN_KINDS: dict[type, RunKind] = {Stage: DATASET_RUN, TrainingStage: MODEL_RUN}


def run_kind(stage: Stage | TrainingStage) -> RunKind:
    return RUN_KINDS[type(stage)]


@dataclass
class StageSpec:
    stage: str  # the stage's name (looked up in hf_pipeline.stages in whichever process runs it)
    options: RunOptions | TrainOptions  # the run options of the stage's kind
    config: object  # an instance of the stage's config dataclass (its `config_class`)
    argv: list[str] = dataclasses.field(default_factory=list)  # recorded in the card
    dry_run: bool = False


def build_spec(name: str, values: dict[str, Any], argv: list[str] | None = None, dry_run: bool = False) -> StageSpec:
    """YAML/--set values -> StageSpec; every key is a run option or a config key (nested ones dotted), else an error."""
    from hf_pipeline.stages import all_stages

    stages = all_stages()
    if name not in stages:
        raise PipelineError(f"unknown stage '{name}' (stages: {', '.join(stages)}).")
    stage = stages[name]
    kind = run_kind(stage)
    run_keys = {f.name for f in dataclasses.fields(kind.options_class)}
    options = build_config(kind.options_class, {k: v for k, v in values.items() if k in run_keys})
    config = build_config(stage.config_class, {k: v for k, v in values.items() if k not in run_keys})
    return StageSpec(name, kind.check_options(stage, options), config, list(argv or []), dry_run)


def run_spec(spec: StageSpec) -> Any:
    """Run a spec (the contract's sequence with the stage's kind); its result (None for a dry run)."""
    from hf_pipeline.stages import all_stages

    stage = all_stages()[spec.stage]
    return run(run_kind(stage), stage, spec.options, spec.config, spec.argv, spec.dry_run)
