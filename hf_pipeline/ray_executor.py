"""The Ray executor: the ordinary runner, one shard per task, on a pool of Ray actors.

`run_stage(..., RunOptions(executor="ray", num_shards=N))` (CLI: `--executor ray --num-shards N`) plans the run
on the driver exactly as the local executor does (same inputs pinned, same fingerprint, same tag), then:

1. starts `num_workers` actors (`--cpus-per-worker`, `--gpus-per-worker` reserve their resources). Each actor
   runs the stage's `setup` once (models load once per worker) and loads the mapped input once;
2. hands out shards. A worker maps its shard with `runner.process_shard` (the same `Dataset.shard` +
   batched `map` + checkpoint chunks as a local run), then writes the shard as ONE parquet file
   `<work_dir>/<stage>-<fingerprint>/shard-XXXXX-of-YYYYY.parquet` (+ a `.json` beside it) and drops its chunks;
3. when every shard is done, the driver calls `runner.publish_run` on the shard files in shard order: the
   stage's finalize, the data files, the card, ONE commit and the tag. Until then nothing is published, so
   a half-finished run never looks published.

Failures: a shard whose worker dies (SIGKILL, OOM, node lost) is retried on a fresh worker; a shard whose map
raises is retried on another live worker where there is one; both at most `max_shard_retries` times. A
shard that fails for good stops new shards from being handed out, lets the shards in flight finish (their
files are kept), and ends the run with a PipelineError naming the shard and its error; nothing is
published. Rerunning the same command skips the shards whose files are on disk, and a shard that was cut off
mid-way resumes from its checkpoint chunks.

Storage: the driver reads every shard file to publish, so the workers and the driver must share
`work_dir`: on one machine that is automatic; on a multi-node cluster pass `--work-dir` on shared storage
(NFS, a mounted bucket) or the driver will stop with an error naming the missing shard files.
Code: stages from the installed package are imported by the workers; a stage defined elsewhere (a test, a
notebook) is shipped to them by value. Environment: the Hub settings of the driver (`HF_ENDPOINT`, `HF_TOKEN`,
offline flags, proxies, and on a local instance the cache folders) are passed to the workers in the
actors' runtime_env.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.runner import RunPlan, RunResult, print_summary, publish_run

# environment the workers need to reach the same Hub the same way as the driver
_ENV_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "SENTENCE_TRANSFORMERS_", "TOKENIZERS_")
_ENV_NAMES = ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy")
# folders of this machine: meaningful for a local Ray instance, not for workers on other nodes
_PATH_VARS = ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "HF_PIPELINE_CACHE", "HF_MODULES_CACHE", "HF_ASSETS_CACHE")


def shard_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}"


def shard_file(plan: RunPlan, shard_index: int, num_shards: int) -> Path:
    return plan.work_dir / f"{shard_name(shard_index, num_shards)}.parquet"


def finished_shard(plan: RunPlan, shard_index: int, num_shards: int) -> dict[str, Any] | None:
    """The record of a shard finished by an earlier attempt of this very run (same fingerprint), else None."""
    data = shard_file(plan, shard_index, num_shards)
    meta = data.with_suffix(".json")
    if not (data.exists() and meta.exists()):
        return None
    try:
        record = json.loads(meta.read_text())
    except ValueError:
        return None
    return record if record.get("fingerprint") == plan.fingerprint else None


def write_shard_file(plan: RunPlan, shard_index: int, num_shards: int, chunk_files: list[Path]) -> dict[str, Any]:
    """Concatenate a shard's checkpoint chunks into its one parquet file (atomically), record it, drop the chunks."""
    import pyarrow.parquet as pq

    out = shard_file(plan, shard_index, num_shards)
    tmp = out.with_suffix(".parquet.tmp")
    rows_out = 0
    writer = None
    try:
        for chunk in chunk_files:
            table = pq.read_table(chunk)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
            rows_out += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, out)
    chunk_dir = plan.work_dir / shard_name(shard_index, num_shards)
    manifest = json.loads((chunk_dir / "manifest.json").read_text())
    record = {
        "fingerprint": plan.fingerprint,
        "shard_index": shard_index,
        "num_shards": num_shards,
        "rows_in": manifest["rows"],
        "rows_out": rows_out,
        "file": out.name,
    }
    meta_tmp = out.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps(record))
    os.replace(meta_tmp, out.with_suffix(".json"))
    shutil.rmtree(chunk_dir, ignore_errors=True)
    return record


class ShardWorker:
    """One Ray actor: models and input loaded once, then any number of shards through the ordinary runner."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.resources = None
        self.dataset = None
        self.ready = False

    def pid(self) -> int:
        return os.getpid()

    def run_shard(self, shard_index: int, num_shards: int) -> dict[str, Any]:
        from hf_pipeline.runner import load_mapped_input, process_shard

        started = time.time()
        if not self.ready:  # here rather than in __init__, so a failing setup is reported as the shard's error
            ctx = self.plan.context()
            if self.plan.stage.setup is not None:
                ctx.resources = self.plan.stage.setup(ctx)
            self.resources = ctx.resources
            self.dataset = load_mapped_input(self.plan, ctx)
            self.ready = True
        chunks = process_shard(self.plan, shard_index, num_shards, resources=self.resources, dataset=self.dataset)
        record = write_shard_file(self.plan, shard_index, num_shards, chunks)
        return {**record, "seconds": round(time.time() - started, 2), "pid": os.getpid()}


# ---------------------------------------------------------------- driver side


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

    funcs = [getattr(plan.stage, f.name) for f in dataclasses.fields(plan.stage)]
    modules = {getattr(f, "__module__", None) for f in funcs if callable(f)} | {type(plan.config).__module__}
    for name in modules:
        if not name or name == "__main__" or name.split(".")[0] in ("hf_pipeline", "builtins"):
            continue
        module = sys.modules.get(name)
        if module is not None:
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:
                pass


def _worker_plan(plan: RunPlan) -> RunPlan:
    """The plan as the workers get it: absolute paths (a worker's cwd is not the driver's), same fingerprint."""
    inputs = {
        ref: dataclasses.replace(p, path=str(Path(p.path).resolve())) if p.path else p for ref, p in plan.inputs.items()
    }
    options = dataclasses.replace(plan.options, work_dir=str(plan.work_dir.parent.resolve()))
    return dataclasses.replace(plan, inputs=inputs, options=options)


def _connect(options) -> tuple[bool, bool]:
    """(started_here, local_instance): join `ray_address`, or an already initialized Ray, or start a local one."""
    try:
        import ray
    except ImportError:
        raise PipelineError(
            "--executor ray needs Ray: pip install 'fineinstructions-pipeline[ray]' (or pip install 'ray[data]')."
        ) from None
    if ray.is_initialized():
        return False, not options.ray_address
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if options.ray_address:
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=True)
        return True, False
    ray.init(include_dashboard=False, log_to_driver=True)
    return True, True


def _describe(error: BaseException) -> tuple[str, str]:
    """(one line, full text) for an error raised by a shard task."""
    from ray.exceptions import RayTaskError

    if isinstance(error, RayTaskError):
        cause = error.cause if getattr(error, "cause", None) is not None else error
        line = f"{type(cause).__name__}: {cause}" if cause is not error else str(error).strip().splitlines()[-1]
        return line, str(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}", "".join(traceback.format_exception_only(type(error), error))


def _num_workers(options, pending: int) -> int:
    import ray

    total = ray.cluster_resources()
    if options.num_workers:
        wanted = options.num_workers
        need_cpu, need_gpu = wanted * options.cpus_per_worker, wanted * options.gpus_per_worker
        if need_cpu > total.get("CPU", 0) or need_gpu > total.get("GPU", 0):
            print(
                f"[ray] warning: {wanted} workers need {need_cpu:g} CPU / {need_gpu:g} GPU but the cluster has "
                f"{total.get('CPU', 0):g} / {total.get('GPU', 0):g} now: the rest wait for an autoscaler (or forever)",
                file=sys.stderr, flush=True,
            )
    else:
        fits = int(total.get("CPU", 1) // max(options.cpus_per_worker, 1e-9))
        if options.gpus_per_worker:
            fits = min(fits, int(total.get("GPU", 0) // options.gpus_per_worker))
            if fits < 1:
                raise PipelineError(
                    f"--gpus-per-worker {options.gpus_per_worker} but the Ray cluster has {total.get('GPU', 0)} GPU(s)."
                )
        wanted = max(1, fits)
    return max(1, min(wanted, pending))


def run_on_ray(plan: RunPlan, started: float | None = None) -> RunResult:
    """Map every shard of `plan` on Ray actors, then publish once from the driver. See the module docstring."""
    started = started or time.time()
    opts = plan.options
    if opts.max_shard_retries < 0:
        raise PipelineError("--max-shard-retries must be 0 or more.")
    if opts.cpus_per_worker <= 0 or opts.gpus_per_worker < 0:
        raise PipelineError("--cpus-per-worker must be above 0 and --gpus-per-worker at least 0.")
    num_shards = opts.num_shards
    shards = [opts.shard_index] if opts.shard_index is not None else list(range(num_shards))
    records: dict[int, dict[str, Any]] = {}
    for i in shards:
        record = finished_shard(plan, i, num_shards)
        if record is not None:
            records[i] = record
    if records:
        print(f"[ray] {len(records)} of {len(shards)} shard(s) already finished in {plan.work_dir}: skipped", flush=True)
    pending = deque(i for i in shards if i not in records)

    if pending:
        started_here, local_instance = _connect(opts)
        try:
            _run_shards(plan, pending, records, local_instance)
        finally:
            if started_here:
                import ray

                ray.shutdown()

    files = [shard_file(plan, i, num_shards) for i in shards]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise PipelineError(
            f"the driver cannot read {len(missing)} shard file(s) the workers wrote (e.g. {missing[0]}): on a multi-node "
            "cluster pass --work-dir on storage that the driver and every worker share."
        )
    rows_in = sum(records[i]["rows_in"] for i in shards)
    result = publish_run(plan, files, rows_in, started)
    print_summary(plan, result, time.time() - started)
    return result


def _run_shards(plan: RunPlan, pending: deque, records: dict[int, dict[str, Any]], local_instance: bool) -> None:
    import ray
    from ray.exceptions import RayError, RayTaskError

    opts = plan.options
    num_shards = opts.num_shards
    _ship_stage_code(plan)
    worker_plan = _worker_plan(plan)
    plan_ref = ray.put(worker_plan)
    actor_class = ray.remote(ShardWorker)
    actor_options = {
        "num_cpus": opts.cpus_per_worker,
        "num_gpus": opts.gpus_per_worker,
        "max_restarts": 0,
        "max_task_retries": 0,
        "runtime_env": {"env_vars": worker_env(local_instance)},
    }
    n_workers = _num_workers(opts, len(pending))
    next_id = 0

    def new_worker():
        nonlocal next_id
        next_id += 1
        return next_id, actor_class.options(**actor_options).remote(plan_ref)

    idle = [new_worker() for _ in range(n_workers)]
    print(
        f"[ray] {len(pending)} shard(s) of {num_shards} on {n_workers} worker(s) "
        f"({opts.cpus_per_worker} CPU, {opts.gpus_per_worker} GPU each); up to {opts.max_shard_retries} retries per shard",
        flush=True,
    )
    in_flight: dict[Any, tuple[int, Any, int, float]] = {}  # ref -> (worker id, actor, shard, started)
    attempts: dict[int, int] = {}
    failed_on: dict[int, set[int]] = {}  # shard -> ids of live workers where its map raised
    failures: dict[int, tuple[str, str]] = {}  # shard -> (one line, full text), failed for good
    stop = False

    try:
        while (pending and not stop) or in_flight:
            # hand out shards: a retried shard prefers a worker it has not failed on
            while pending and idle and not stop:
                for shard in list(pending):
                    choices = [w for w in idle if w[0] not in failed_on.get(shard, ())]
                    if not choices and not in_flight:
                        choices = idle  # nobody else will come free: the same worker again
                    if choices:
                        break
                else:
                    break
                wid, actor = choices[0]
                idle.remove((wid, actor))
                pending.remove(shard)
                attempts[shard] = attempts.get(shard, 0) + 1
                ref = actor.run_shard.remote(shard, num_shards)
                in_flight[ref] = (wid, actor, shard, time.time())
            if not in_flight:
                break
            done, _ = ray.wait(list(in_flight), num_returns=1)
            ref = done[0]
            wid, actor, shard, t0 = in_flight.pop(ref)
            label = f"shard {shard} ({shard_name(shard, num_shards)})"
            try:
                record = ray.get(ref)
            except RayTaskError as e:  # the stage raised; the worker is alive
                line, full = _describe(e)
                failed_on.setdefault(shard, set()).add(wid)
                idle.append((wid, actor))
                stop |= _retry_or_fail(plan, shard, label, line, full, attempts, pending, failures, f"worker {wid}")
                continue
            except RayError as e:  # the worker died (killed, OOM, node lost): replace it
                line, full = _describe(e)
                ray.kill(actor, no_restart=True)
                replacement = new_worker()
                idle.append(replacement)
                stop |= _retry_or_fail(
                    plan, shard, label, line, full, attempts, pending, failures, f"worker {wid} died; worker {replacement[0]} replaces it"
                )
                continue
            records[shard] = record
            idle.append((wid, actor))
            print(
                f"[ray] {label} done on worker {wid} (pid {record['pid']}): {record['rows_in']} rows in, "
                f"{record['rows_out']} out, {record['seconds']}s; {len(records)}/{len(records) + len(pending) + len(in_flight) + len(failures)} shards",
                flush=True,
            )
    finally:
        for _, actor in idle + [(w, a) for w, a, _, _ in in_flight.values()]:
            ray.kill(actor, no_restart=True)

    if failures:
        shard, (line, full) = min(failures.items())
        others = "" if len(failures) == 1 else f" ({len(failures) - 1} other shard(s) failed too: {sorted(failures)[1:]})"
        raise PipelineError(
            f"shard {shard} of {num_shards} of stage {plan.stage.name} failed after {attempts[shard]} attempt(s): {line}{others}. "
            f"Nothing was published. {len(records)} finished shard(s) are kept in {plan.work_dir} and {len(pending)} were not "
            f"started; rerun the same command to resume."
        )


def _retry_or_fail(plan, shard, label, line, full, attempts, pending, failures, where) -> bool:
    """Requeue a failed shard while it has retries left; otherwise record it. True means: stop handing out shards."""
    left = plan.options.max_shard_retries + 1 - attempts[shard]
    if left > 0:
        print(f"[ray] {label} attempt {attempts[shard]} failed ({where}): {line}; retrying ({left} left)", file=sys.stderr, flush=True)
        pending.appendleft(shard)
        return False
    print(f"[ray] {label} failed for good after {attempts[shard]} attempt(s) ({where}):\n{full}", file=sys.stderr, flush=True)
    failures[shard] = (line, full)
    return True
