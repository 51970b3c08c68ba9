"""The local executor: every task in this process, in order, with the stage's models loaded once (a laptop, one
GPU, or one task per machine with `--shard-index`, e.g. a job array)."""

from __future__ import annotations

from dataclasses import dataclass

from hf_pipeline.run.executors.base import ExecutorOptions
from hf_pipeline.run.plan import RunPlan, Task, TaskRecord
from hf_pipeline.run.worker import Worker


@dataclass
class LocalOptions(ExecutorOptions):
    """The local executor has no option of its own."""


class LocalExecutor:
    name = "local"
    Options = LocalOptions

    def __init__(self, options: LocalOptions) -> None:
        self.options = options

    def run(self, plan: RunPlan, tasks: list[Task]) -> list[TaskRecord]:
        worker = Worker(plan)
        return [worker.run(task) for task in tasks]


EXECUTOR = LocalExecutor
