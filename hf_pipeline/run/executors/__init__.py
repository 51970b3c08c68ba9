"""Executors: who runs a run's tasks, behind one interface (`base.Executor`). Each has its own options.

    local   every task in this process, one after the other (a laptop, one GPU, or one task per machine with
            `--shard-index`, e.g. a job array)
    ray     tasks on a pool of Ray actors, one model load per actor, on one machine or a cluster

A task's output goes from the worker that made it straight to the run's pull request on the Hub, so no executor
needs a filesystem shared by the driver and its workers.
"""

from __future__ import annotations

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.executors.base import Executor

EXECUTORS = {"local": "hf_pipeline.run.executors.local:LocalExecutor", "ray": "hf_pipeline.run.executors.ray:RayExecutor"}


def get_executor(name: str, options) -> Executor:
    """The executor named `name`, built from the run options (lazily imported: Ray only when asked for)."""
    import importlib

    if name not in EXECUTORS:
        raise PipelineError(f"--executor must be one of {', '.join(EXECUTORS)}, got '{name}'.")
    module, cls = EXECUTORS[name].split(":")
    return getattr(importlib.import_module(module), cls)(options)
