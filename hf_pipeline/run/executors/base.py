"""The one interface every executor implements: run these tasks of this plan, return their records."""

from __future__ import annotations

from typing import Any, Protocol

from hf_pipeline.run.worker import Task


class Executor(Protocol):
    def run(self, plan: Any, tasks: list[Task]) -> list[dict]:
        """Run every task (each commits its own output to the run's pull request; what it alone reads rides in
        `task.inputs`) and return their records in task order. A task that fails for good raises PipelineError
        naming it; finished tasks stay on the Hub."""
        ...
