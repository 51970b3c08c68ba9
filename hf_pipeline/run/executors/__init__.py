"""Executors: who runs a run's tasks, behind one interface (`base.Executor`), each with its own options.

    local   every task in this process, one after the other
    ray     tasks on a pool of Ray actors, one model load per actor, on one machine or a cluster

An executor is one module of this package defining `EXECUTOR` (see `base.py`); `executors()` finds them all, so a
new executor is one file. Executor modules import their engine (Ray) only when they run, so listing them is cheap.
A task's output goes from the worker that made it straight to the run's pull request on the Hub, so no executor
needs a filesystem shared by the driver and its workers.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from functools import lru_cache
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.config import build_config
from hf_pipeline.run.executors.base import Executor, ExecutorOptions


@lru_cache(maxsize=None)
def executors() -> dict[str, type[Executor]]:
    """name -> executor class, for every module of this package that defines `EXECUTOR`. Two executors may not
    share a name, nor an option name (options are flags of the same command)."""
    found: dict[str, type[Executor]] = {}
    flags: dict[str, str] = {}
    for module in pkgutil.iter_modules(__path__):
        cls = getattr(importlib.import_module(f"{__name__}.{module.name}"), "EXECUTOR", None)
        if cls is None:
            continue
        if cls.name in found:
            raise PipelineError(f"two executors are named '{cls.name}' ({found[cls.name].__module__}, {cls.__module__}).")
        for f in dataclasses.fields(cls.Options):
            if f.name in flags:
                raise PipelineError(f"executors {flags[f.name]} and {cls.name} both have an option '{f.name}'.")
            flags[f.name] = cls.name
        found[cls.name] = cls
    return dict(sorted(found.items()))


def executor_options(name: str, values: Any) -> ExecutorOptions:
    """The options of executor `name`, from its Options instance or a mapping of its keys (checked by name)."""
    cls = executor_class(name)
    if isinstance(values, cls.Options):
        return values
    if isinstance(values, ExecutorOptions):
        raise PipelineError(f"--executor {name} takes {cls.Options.__name__}, not {type(values).__name__}.")
    return build_config(cls.Options, dict(values or {}), prefix="executor_options.")


def executor_class(name: str) -> type[Executor]:
    known = executors()
    if name not in known:
        raise PipelineError(f"--executor must be one of {', '.join(known)}, got '{name}'.")
    return known[name]


def get_executor(name: str, values: Any) -> Executor:
    """The executor named `name`, with its options (an Options instance, or a mapping of its keys)."""
    return executor_class(name)(executor_options(name, values))
