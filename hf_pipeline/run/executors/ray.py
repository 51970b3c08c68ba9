"""The Ray executor: a run's tasks on a pool of Ray actors, on one machine or a cluster (`--executor ray`).

The driver plans the run exactly as the local executor does (same inputs pinned, same fingerprint, same tag, same
shards) and opens the run's pull request; then:

1. it starts `num_workers` actors (`cpus_per_worker`, `gpus_per_worker` reserve their resources). Each actor is a
   `worker.Worker`: it loads the stage's models once, on its first shard;
2. it hands out tasks. An actor maps its shard (reading only the shard's files), commits the output and its
   record to the pull request itself, and returns the record. The driver never reads a worker's files: workers
   keep their work dirs and caches to themselves (`worker_cache_dir` gives each actor its own, even on one node);
3. when every task is in, the driver seals the run (the runner's job, for every executor).

Failures: a task whose actor dies (SIGKILL, OOM, node lost) is retried on a fresh actor; a task whose map raises
is retried on another live actor where there is one; both at most `max_task_retries` times. A task that fails for
good stops new tasks from being handed out, lets the tasks in flight finish (their output is on the Hub), and ends
the run with a PipelineError naming the task and its error; nothing is merged. Rerunning the same command, on any
machine, skips the tasks already on the pull request.

Code: stages from the installed package are imported by the actors; a stage defined elsewhere (a test, a notebook)
is shipped by value. Environment: the driver's Hub settings (`HF_ENDPOINT`, `HF_TOKEN`, offline flags, proxies,
and on a local instance the cache folders) go to the actors in their runtime_env.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.executors.base import ExecutorOptions
from hf_pipeline.run.plan import RunPlan, Task, TaskRecord
from hf_pipeline.run.worker import Worker

# environment the workers need to reach the same Hub the same way as the driver
_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "SENTENCE_TRANSFORMERS_", "TOKENIZERS_", "OMP_")
_ENV_NAMES = ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy")
# folders of this machine: meaningful for a local Ray instance, not for workers on other nodes
_PATH_VARS = ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "HF_PIPELINE_CACHE", "HF_MODULES_CACHE", "HF_ASSETS_CACHE")


@dataclass
class RayOptions(ExecutorOptions):
    ray_address: str | None = field(default=None, metadata={"help": "an existing Ray cluster ('auto', 'ray://host:10001'); default: a local instance"})
    num_workers: int | None = field(default=None, metadata={"help": "Ray actors; default: as many as the cluster's resources fit, at most one per task"})
    cpus_per_worker: float = field(default=1.0, metadata={"help": "CPUs reserved by each actor"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "GPUs reserved by each actor"})
    max_task_retries: int = field(default=2, metadata={"help": "retries of a task whose actor died or whose map raised"})
    worker_cache_dir: str | None = field(
        default=None, metadata={"help": "give each actor its own work dir and Hub/datasets caches under DIR/worker-N (default: the node's own)"}
    )


class _Actor:
    """One Ray actor: a Worker (models loaded once) running any number of tasks."""

    def __init__(self, plan: RunPlan, cache_dir: str | None):
        if cache_dir:  # this actor's own caches: nothing it writes is read by the driver or another actor
            os.makedirs(cache_dir, exist_ok=True)
            for var, sub in (("HF_HOME", "hf_home"), ("HF_HUB_CACHE", "hf_home/hub"), ("HF_DATASETS_CACHE", "datasets"), ("HF_PIPELINE_CACHE", "hf_pipeline")):
                os.environ[var] = os.path.join(cache_dir, sub)
            plan = dataclasses.replace(plan, options=dataclasses.replace(plan.options, work_dir=os.path.join(cache_dir, "runs")))
        self.worker = Worker(plan)

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: Task) -> TaskRecord:
        return dataclasses.replace(self.worker.run(task), pid=os.getpid())


def worker_env(local_instance: bool) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES) and (local_instance or k not in _PATH_VARS)
    }
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return env


def _ship_stage_code(plan: RunPlan) -> None:
    """Stages outside the installed package (tests, notebooks) travel to the workers by value."""
    from ray import cloudpickle

    def hooks(declaration: object):  # every callable of the declaration, its groups' included
        for f in dataclasses.fields(declaration):
            value = getattr(declaration, f.name)
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                yield from hooks(value)
            elif callable(value):
                yield value

    modules = {getattr(f, "__module__", None) for f in hooks(plan.stage)} | {type(plan.config).__module__}
    for name in modules:
        if not name or name == "__main__" or name.split(".")[0] in ("hf_pipeline", "builtins"):
            continue
        module = sys.modules.get(name)
        if module is not None:
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:
                pass


def _describe(error: BaseException) -> tuple[str, str]:
    """(one line, full text) for an error raised by a task."""
    from ray.exceptions import RayTaskError

    if isinstance(error, RayTaskError):
        cause = error.cause if getattr(error, "cause", None) is not None else error
        line = f"{type(cause).__name__}: {cause}" if cause is not error else str(error).strip().splitlines()[-1]
        return line, str(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}", "".join(traceback.format_exception_only(type(error), error))


class RayExecutor:
    name = "ray"
    Options = RayOptions

    def __init__(self, options: RayOptions) -> None:
        self.options = options

    def _connect(self) -> tuple[bool, bool]:
        """(started_here, local_instance): join `address`, or an already initialized Ray, or start a local one."""
        from hf_pipeline.optional import require

        require("ray", "ray", "--executor ray")
        import ray

        if ray.is_initialized():
            return False, not self.options.ray_address
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        if self.options.ray_address:
            ray.init(address=self.options.ray_address, include_dashboard=False, log_to_driver=True)
            return True, False
        ray.init(include_dashboard=False, log_to_driver=True)
        return True, True

    def _num_workers(self, pending: int) -> int:
        import ray

        opts, total = self.options, ray.cluster_resources()
        if opts.num_workers:
            wanted = opts.num_workers
            need_cpu, need_gpu = wanted * opts.cpus_per_worker, wanted * opts.gpus_per_worker
            if need_cpu > total.get("CPU", 0) or need_gpu > total.get("GPU", 0):
                print(f"[ray] warning: {wanted} workers need {need_cpu:g} CPU / {need_gpu:g} GPU but the cluster has "
                      f"{total.get('CPU', 0):g} / {total.get('GPU', 0):g} now: the rest wait for an autoscaler (or forever)",
                      file=sys.stderr, flush=True)
        else:
            fits = int(total.get("CPU", 1) // max(opts.cpus_per_worker, 1e-9))
            if opts.gpus_per_worker:
                fits = min(fits, int(total.get("GPU", 0) // opts.gpus_per_worker))
                if fits < 1:
                    raise PipelineError(f"--gpus-per-worker {opts.gpus_per_worker} but the Ray cluster has {total.get('GPU', 0)} GPU(s).")
            wanted = max(1, fits)
        return max(1, min(wanted, pending))

    def run(self, plan: RunPlan, tasks: list[Task]) -> list[TaskRecord]:
        opts = self.options
        if opts.max_task_retries < 0:
            raise PipelineError("--max-task-retries must be 0 or more.")
        if opts.cpus_per_worker <= 0 or opts.gpus_per_worker < 0:
            raise PipelineError("--cpus-per-worker must be above 0 and --gpus-per-worker at least 0.")
        if not tasks:
            return []
        started_here, local_instance = self._connect()
        try:
            return self._run(plan, tasks, local_instance)
        finally:
            if started_here:
                import ray

                ray.shutdown()

    def _run(self, plan: RunPlan, tasks: list[Task], local_instance: bool) -> list[TaskRecord]:
        import ray
        from ray.exceptions import RayError, RayTaskError

        opts = self.options
        _ship_stage_code(plan)
        plan_ref = ray.put(plan.for_workers())  # once, in the object store; each task carries its own inputs
        actor_class = ray.remote(_Actor)
        actor_options = {"num_cpus": opts.cpus_per_worker, "num_gpus": opts.gpus_per_worker, "max_restarts": 0,
                         "max_task_retries": 0, "runtime_env": {"env_vars": worker_env(local_instance)}}
        n_workers = self._num_workers(len(tasks))
        next_id = 0

        def new_worker():
            nonlocal next_id
            next_id += 1
            cache = os.path.join(opts.worker_cache_dir, f"worker-{next_id}") if opts.worker_cache_dir else None
            return next_id, actor_class.options(**actor_options).remote(plan_ref, cache)

        pending = deque(tasks)
        idle = [new_worker() for _ in range(n_workers)]
        print(f"[ray] {len(tasks)} task(s) on {n_workers} worker(s) ({opts.cpus_per_worker} CPU, {opts.gpus_per_worker} GPU "
              f"each); up to {opts.max_task_retries} retries per task", flush=True)
        in_flight: dict[Any, tuple[int, Any, Task]] = {}
        attempts: dict[Task, int] = {}
        failed_on: dict[Task, set[int]] = {}  # task -> ids of live workers where it raised
        failures: dict[Task, tuple[str, str]] = {}
        records: dict[Task, TaskRecord] = {}
        stop = False

        def retry_or_fail(task: Task, line: str, full: str, where: str) -> bool:
            left = opts.max_task_retries + 1 - attempts[task]
            if left > 0:
                print(f"[ray] {task.name} attempt {attempts[task]} failed ({where}): {line}; retrying ({left} left)", file=sys.stderr, flush=True)
                pending.appendleft(task)
                return False
            print(f"[ray] {task.name} failed for good after {attempts[task]} attempt(s) ({where}):\n{full}", file=sys.stderr, flush=True)
            failures[task] = (line, full)
            return True

        try:
            while (pending and not stop) or in_flight:
                while pending and idle and not stop:  # a retried task prefers a worker it has not failed on
                    for task in list(pending):
                        choices = [w for w in idle if w[0] not in failed_on.get(task, ())]
                        if not choices and not in_flight:
                            choices = idle  # nobody else will come free: the same worker again
                        if choices:
                            break
                    else:
                        break
                    wid, actor = choices[0]
                    idle.remove((wid, actor))
                    pending.remove(task)
                    attempts[task] = attempts.get(task, 0) + 1
                    in_flight[actor.run.remote(task)] = (wid, actor, task)
                if not in_flight:
                    break
                done, _ = ray.wait(list(in_flight), num_returns=1)
                wid, actor, task = in_flight.pop(done[0])
                try:
                    record = ray.get(done[0])
                except RayTaskError as e:  # the stage raised; the worker is alive
                    line, full = _describe(e)
                    failed_on.setdefault(task, set()).add(wid)
                    idle.append((wid, actor))
                    stop |= retry_or_fail(task, line, full, f"worker {wid}")
                    continue
                except RayError as e:  # the worker died (killed, OOM, node lost): replace it
                    line, full = _describe(e)
                    ray.kill(actor, no_restart=True)
                    replacement = new_worker()
                    idle.append(replacement)
                    stop |= retry_or_fail(task, line, full, f"worker {wid} died; worker {replacement[0]} replaces it")
                    continue
                records[task] = record
                idle.append((wid, actor))
                print(f"[ray] {task.name} done on worker {wid} (pid {record.pid}): {record.rows_in} rows in, "
                      f"{record.rows_out} out, {record.seconds}s; {len(records)}/{len(tasks)} tasks", flush=True)
        finally:
            for _, actor in idle + [(w, a) for w, a, _ in in_flight.values()]:
                ray.kill(actor, no_restart=True)

        if failures:
            task, (line, _) = min(failures.items(), key=lambda kv: kv[0].index)
            others = "" if len(failures) == 1 else f" ({len(failures) - 1} other task(s) failed too)"
            raise PipelineError(
                f"{task.name} of stage {plan.stage.name} failed after {attempts[task]} attempt(s): {line}{others}. "
                f"Nothing was merged: {len(records)} finished task(s) are on the run's pull request {plan.run.url} and "
                f"{len(pending)} were not started; rerun the same command to resume."
            )
        return [records[t] for t in tasks]


EXECUTOR = RayExecutor
