"""The one interface every executor implements: run these tasks of this plan, return their records.

An executor is one module of this package that defines `EXECUTOR`, a class with a `name`, an `Options` dataclass
(its own settings: each field becomes a `run_stage.py` flag, `--<field-name>`, with the field's help) and
`run(plan, tasks) -> records`. The registry (`executors/__init__.py`) finds it by scanning the package: adding an
executor is adding its file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from hf_pipeline.run.plan import RunPlan, Task, TaskRecord


@dataclass
class ExecutorOptions:
    """What every executor's `Options` derives from (the local executor has no option of its own)."""


class Executor(Protocol):
    name: ClassVar[str]
    Options: ClassVar[type[ExecutorOptions]]

    def __init__(self, options: ExecutorOptions) -> None: ...

    def run(self, plan: RunPlan, tasks: list[Task]) -> list[TaskRecord]:
        """Run every task (each commits its own output to the run's pull request; what it alone reads rides in
        `task.inputs`) and return their records in task order. A task that fails for good raises PipelineError
        naming it; finished tasks stay on the Hub."""
        ...
