"""The local executor: every task in this process, in order, with the stage's models loaded once."""

from __future__ import annotations

from typing import Any

from hf_pipeline.run.worker import Task, Worker


class LocalExecutor:
    def __init__(self, options: Any = None):
        self.options = options

    def run(self, plan: Any, tasks: list[Task]) -> list[dict]:
        worker = Worker(plan)
        return [worker.run(task) for task in tasks]
