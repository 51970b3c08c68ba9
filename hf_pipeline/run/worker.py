"""What one worker does with one task of a run: a shard (map) or a partition (reduce), start to upload.

A map task reads only its shard's files (`datafiles.FileReader`: the whole files it owns are downloaded once, at
the pinned commit; parts of files are read by range), maps them in checkpoint chunks, runs the stage's per-shard
`finalize`, writes the shard's parquet files and commits them, with a record of its counts and stats, to the run's
pull request. Nothing leaves the worker but that commit: no filesystem is shared with the driver or other workers.

Resume: each finished chunk is an Arrow file in the worker's work dir, written whole or not at all (tmp + rename),
so a worker killed mid-shard and started again on the same machine redoes only the missing chunks; a shard whose
record is on the PR is finished for every machine. Chunks are memory-mapped when the shard is finalized, so a
worker holds a chunk's rows in memory, not its shard's.

A reduce task reads, from every map shard's scratch file in the PR, only the row group of its partition, and
runs the stage's `reduce` on those rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.features import features_from_spec
from hf_pipeline.run.plan import RunPlan, Task, TaskRecord
from hf_pipeline.stage import StageContext

ROW_GROUP_ROWS = 10_000  # rows per parquet row group: what readers of a slice or of a few rows fetch at once


def engines(resources: Any) -> dict[str, Any]:
    """The engines in what a stage's `setup` returned (see hf_pipeline/methods/usage.py): anything with a `usage` dict and a
    `settings()` (an LLM backend, an EmbedderUsage, ...), be it the result itself or inside dicts, lists and tuples
    at any depth, named by where it is (`llm`, `models[1]`; the result itself: `engine`).

    Found by walking, not by a convention a stage must follow (genericize's `setup` returns its backend bare, and
    its card had no usage while a dict's backends were counted). A torch model found there that no engine holds
    (as its `model`) is an error, raised before the first row is mapped: its work would be missing from the card."""
    import sys

    torch = sys.modules.get("torch")  # not imported: no torch model can be in the resources

    def is_model(obj: Any) -> bool:  # a torch module, or what wraps one (a transformers pipeline)
        return torch is not None and (isinstance(obj, torch.nn.Module) or isinstance(getattr(obj, "model", None), torch.nn.Module))

    found: dict[str, Any] = {}
    models: list[tuple[str, Any]] = []

    def walk(obj: Any, path: str) -> None:
        if isinstance(getattr(obj, "usage", None), dict) and callable(getattr(obj, "settings", None)):
            found[path or "engine"] = obj
        elif isinstance(obj, dict):
            for key, value in obj.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(obj, (list, tuple)):
            for i, value in enumerate(obj):
                walk(value, f"{path}[{i}]")
        elif is_model(obj):
            models.append((path or "engine", obj))

    walk(resources, "")
    held = {id(getattr(engine, "model", None)) for engine in found.values()}
    unaccounted = [(path, obj) for path, obj in models if id(obj) not in held]
    if unaccounted:
        path, obj = unaccounted[0]
        raise PipelineError(
            f"the stage's setup returned a model ({type(obj).__name__}, at '{path}') that no engine accounts for: wrap it "
            "in one (hf_pipeline.methods.usage.ModelUsage or a subclass) so that its tokens and seconds reach the card."
        )
    return found


def usage_delta(before: dict[str, dict], resources: Any) -> dict[str, Any]:
    """Tokens and seconds the task's engines spent (their cumulative usage now minus at the task's start), summed,
    with each engine's settings for the card."""
    total: dict[str, float] = {}
    settings = {}
    for name, engine in engines(resources).items():
        for key, value in engine.usage.items():
            total[key] = total.get(key, 0) + value - before.get(name, {}).get(key, 0)
        settings[name] = engine.settings()
    return {"tokens": total, "engines": settings} if settings else {}


def status_counts(ds) -> dict[str, dict[str, int]]:
    """Every per-row status column (`status`, `judge_status`, ...) of a dataset counted: the card shows them all."""
    import pyarrow.compute as pc

    columns = [c for c in ds.column_names if c == "status" or c.endswith("_status")]
    if not columns:
        return {}
    table = ds.with_format("arrow", columns=columns)[:]  # just these columns in memory
    return {c: {str(v["values"]): int(v["counts"]) for v in pc.value_counts(table[c]).to_pylist()} for c in columns}


class Worker:
    """One process's view of a run: its plan, its models (loaded once, on the first map task) and its readers."""

    def __init__(self, plan: RunPlan, resources: Any = None):
        self.plan = plan
        self.resources = resources
        self._readers: dict[str, Any] = {}

    # ------------------------------------------------------------------ context
    def context(self, task: Task | None = None) -> StageContext:
        plan = self.plan
        ctx = plan.context(self.resources)
        ctx.read_rows = self.read_rows
        if task is not None:
            ctx.shard, ctx.num_shards = task.index, task.of
        return ctx

    def read_rows(self, ref: str, path: str, rows: list[int]):
        """Rows of one data file of a declared input (e.g. a shard's documents, by the positions its pairs carry)."""
        from hf_pipeline.io.datafiles import FileReader

        pinned = self.plan.pinned(ref)
        if ref not in self._readers:
            self._readers[ref] = FileReader(pinned, [], columns=None, describe_missing=True)
        return self._readers[ref].read_rows(path, rows)

    def ensure_setup(self) -> None:
        if self.resources is None and self.plan.stage.map.setup is not None:
            self.resources = self.plan.stage.map.setup(self.context())

    # ------------------------------------------------------------------ tasks
    def run(self, task: Task) -> TaskRecord:
        """Run one task to its commit on the run's PR; returns its record. A task whose output another attempt (a
        second driver, a retry) already put in the PR is not redone: one request tells, the records are read only
        then."""
        existing = self.existing_record(task)
        if existing is not None:
            return existing
        started = time.time()
        usage_before: dict[str, dict] = {}
        if task.phase == "map":
            if self.plan.shards[task.index].rows:  # a shard without rows (an empty input) loads no model
                self.ensure_setup()
            usage_before = {k: dict(v.usage) for k, v in engines(self.resources).items()}
            out, counts, stats, extra, rows_in = self.map_shard(task)
        else:
            out, counts, stats, rows_in = self.reduce_partition(task)
            extra = {}
        files, entries, partitions = self.write_outputs(task, out, extra)
        record = TaskRecord(task.name, task.phase, task.index, task.of, self.plan.fingerprint, rows_in, len(out),
                            entries, counts, stats, round(time.time() - started, 2), partitions,
                            (usage_delta(usage_before, self.resources) if task.phase == "map" else {}) or None)
        self.upload(task, files, record)
        if not self.plan.options.keep_work_dir:
            shutil.rmtree(self.task_dir(task), ignore_errors=True)
        return record

    def first_output(self, task: Task) -> list[str]:
        """The names a task's first output file can have (see write_outputs)."""
        from hf_pipeline.run.hub_run import scratch_dir

        if task.phase == "map" and self.plan.stage.reduce is not None:
            return [f"{scratch_dir(self.plan.fingerprint)}/map-{task.index:05d}-of-{task.of:05d}.parquet"]
        return [f"data/{data_file_name(task, 0, 1)}", f"data/{data_file_name(task, 0, 2)}"]

    def existing_record(self, task: Task) -> TaskRecord | None:
        """The task's record when its files and record are already in the PR (checked against each other)."""
        from hf_pipeline.run.hub_run import shard_records, task_started, verify_files

        if not task_started(self.plan.run, self.first_output(task)):
            return None
        mine = [r for r in shard_records(self.plan.run) if r.fingerprint == self.plan.fingerprint and r.task == task.name]
        if not mine:
            return None  # another attempt is committing it, or died halfway: this one commits it whole
        problems, _ = verify_files(self.plan.run, mine[-1:], tuple(sorted({p.split("/", 1)[0] for p in mine[-1].files})))
        return None if problems else mine[-1]

    def task_dir(self, task: Task) -> Path:
        return self.plan.work_dir / task.name

    # ------------------------------------------------------------------ map
    def map_shard(self, task: Task):
        """Map the shard's rows in checkpoint chunks, then run the stage's per-shard finalize on them."""
        import datasets
        import pyarrow as pa
        from tqdm.auto import tqdm

        from hf_pipeline.io.datafiles import FileReader
        from hf_pipeline.io.sharding import plan_chunks

        plan, stage, opts = self.plan, self.plan.stage, self.plan.options
        shard = plan.shards[task.index]
        chunks = plan_chunks(shard, plan.files, opts.chunk_rows)
        shard_dir = self.task_dir(task)
        manifest = {"fingerprint": plan.fingerprint, "chunks": [[list(s.__dict__.values()) for s in c.slices] for c in chunks]}
        manifest_file = shard_dir / "manifest.json"
        if manifest_file.exists() and json.loads(manifest_file.read_text()) != manifest:
            shutil.rmtree(shard_dir)  # chunks of another plan: not reusable
        shard_dir.mkdir(parents=True, exist_ok=True)
        manifest_file.write_text(json.dumps(manifest))

        owned = {s.file for s in shard.slices if s.start == 0 and s.stop == plan.files[s.file].rows}
        readers = [FileReader(ref, plan.files, whole=owned) for ref in plan.part_refs]
        ctx = self.context(task)
        ctx.aligned_rows = self.aligned_reader(task)
        features = features_from_spec(stage.map.columns or stage.output_columns)
        files = [shard_dir / f"chunk-{c.index:05d}.arrow" for c in chunks]
        done_rows = sum(c.rows for c, f in zip(chunks, files) if f.exists())
        bar = tqdm(total=shard.rows, initial=done_rows, unit="row", desc=f"{stage.name} {task.name}")

        def map_fn(batch: dict[str, list]) -> dict[str, list]:
            out = stage.map.batch(batch, ctx)
            bar.update(len(next(iter(batch.values()))) if batch else 0)
            return out

        was_enabled = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()  # one bar for the whole shard, not one per chunk
        try:
            for chunk, path in zip(chunks, files):
                if path.exists():
                    continue
                part = plan.files[chunk.slices[0].file].part if chunk.slices else 0
                ctx.part = plan.parts[part]
                if chunk.rows:
                    table = pa.concat_tables([readers[part].read_slice(s) for s in chunk.slices], promote_options="default")
                    mapped = datasets.Dataset(datasets.table.InMemoryTable(table)).map(
                        map_fn, batched=True, batch_size=opts.batch_size, remove_columns=table.column_names,
                        features=features, keep_in_memory=True, load_from_cache_file=False,
                        new_fingerprint=f"{plan.fingerprint}-{task.name}-{chunk.index}",
                    )
                else:  # an empty shard (an empty input, or fewer rows than shards): no rows, the stage's schema
                    mapped = datasets.Dataset.from_dict({c: [] for c in features}, features=features)
                if set(mapped.column_names) != set(features):
                    raise PipelineError(f"stage {stage.name} returned columns {mapped.column_names}, expected {list(features)}.")
                tmp = path.with_suffix(".tmp")
                with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, mapped.data.table.schema) as writer:
                    writer.write_table(one_batch(mapped.data.table))
                os.replace(tmp, path)  # atomic: a chunk is either whole on disk or absent
        finally:
            bar.close()
            if was_enabled:
                datasets.enable_progress_bars()

        parts = [datasets.Dataset.from_file(str(f)) for f in files]  # memory-mapped
        ds = datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict({}, features=features)
        drops, stats = {}, {}
        if stage.map.finalize is not None:
            ds, drop_counts, *more = stage.map.finalize(ds, ctx)
            drops, stats = {k: int(v) for k, v in drop_counts.items()}, dict(more[0]) if more else {}
        extra = dict(stage.map.shard_outputs(ctx)) if stage.map.shard_outputs is not None else {}
        if stage.reduce is None:
            ds = self.check_output(ds)
        return ds, {"drops": drops, **status_counts(ds)}, stats, extra, shard.rows

    def check_output(self, ds):
        stage = self.plan.stage
        missing = [c for c in stage.output_columns if c not in ds.column_names]
        if missing:
            raise PipelineError(f"stage {stage.name} did not produce output column(s) {missing}.")
        return ds.select_columns(list(stage.output_columns))

    def aligned_reader(self, task: Task):
        """ctx.aligned_rows for this shard: rows of aligned input `which` pointing at given positions, or None."""
        plan = self.plan
        if not plan.aligned:
            return None
        from hf_pipeline.io.datafiles import AlignedReader

        readers = [
            AlignedReader(plan.pinned(spec.ref), files, list(groups), spec.file_column, spec.row_column,
                          list(spec.columns) if spec.columns else None)
            for spec, files, groups in zip(plan.aligned, plan.aligned_files, task.inputs)
        ]

        def aligned_rows(doc_files: list[str], doc_rows: list[int], which: int = 0):
            return readers[which].rows_for(doc_files, doc_rows)

        return aligned_rows

    # ------------------------------------------------------------------ reduce
    def reduce_partition(self, task: Task):
        """The rows of one partition from every shard's scratch file (its row groups only), then the stage's reduce."""
        import datasets
        import pyarrow as pa

        from hf_pipeline.run.hub_run import read_row_groups

        plan, stage = self.plan, self.plan.stage
        tables = list(read_row_groups(plan.run, [(path, list(groups)) for path, groups in task.inputs]))
        features = features_from_spec(stage.map.columns or stage.output_columns)
        if tables:
            table = pa.concat_tables(tables, promote_options="default").drop_columns([PARTITION_COLUMN])
            ds = datasets.Dataset(datasets.table.InMemoryTable(table))
        else:
            ds = datasets.Dataset.from_dict({c: [] for c in features}, features=features)
        rows_in = len(ds)
        ctx = self.context(task)
        ctx.run_stats = plan.run_stats
        ds, drop_counts, *more = stage.reduce.step(ds, ctx)
        ds = self.check_output(ds)
        counts = {"drops": {k: int(v) for k, v in drop_counts.items()}, **status_counts(ds)}
        return ds, counts, dict(more[0]) if more else {}, rows_in

    # ------------------------------------------------------------------ outputs
    def write_outputs(self, task: Task, ds, extra: dict[str, Any]) -> tuple[dict[str, Path], dict[str, dict], dict | None]:
        """({path in repo: local file}, {path in repo: its record entry}, partitions): the task's data files, or
        before a reduce its scratch file with {partition: its row groups}."""
        from hf_pipeline.run.hub_run import file_entry

        plan, opts = self.plan, self.plan.options
        out_dir = self.task_dir(task) / "out"
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.mkdir(parents=True)
        written: dict[str, tuple[Path, int]] = {}
        partitions = None
        if task.phase == "map" and plan.stage.reduce is not None:
            path = out_dir / "map.parquet"
            partitions = write_partitioned(ds, plan.stage.reduce.key, plan.num_partitions, path)
            written[self.first_output(task)[0]] = (path, len(ds))
        else:
            n_files = max(1, math.ceil(len(ds) / opts.rows_per_file))
            for k in range(n_files):
                name = data_file_name(task, k, n_files)
                part = ds.shard(n_files, k, contiguous=True)
                write_parquet(part, out_dir / name)
                written[f"data/{name}"] = (out_dir / name, len(part))
            for config_name, extra_ds in extra.items():
                name = f"{config_name}-{task.index:05d}-of-{task.of:05d}.parquet"
                write_parquet(extra_ds, out_dir / name)
                written[f"data/{name}"] = (out_dir / name, len(extra_ds))
        files = {path: local for path, (local, _) in written.items()}
        return files, {path: file_entry(local, rows) for path, (local, rows) in written.items()}, partitions

    def upload(self, task: Task, files: dict[str, Path], record: TaskRecord) -> None:
        """Commit the task's files and record. The title's progress is the driver's count when it handed the tasks
        out plus what this worker committed since (other workers' commits in between are not counted)."""
        from hf_pipeline.run.hub_run import commit_shard, progress_title

        done, rows_in = self.plan.progress.get(task.phase, (0, 0))
        done, rows_in = done + 1, rows_in + record.rows_in
        self.plan.progress[task.phase] = (done, rows_in)
        what = f"{'shard' if task.phase == 'map' else 'partition'} {task.index + 1} of {task.of}"
        title = progress_title(self.plan.stage.name, what, done, task.of, rows_in, self.plan.run.created_at)
        commit_shard(self.plan.run, files, record, title)


def data_file_name(task: Task, k: int, n_files: int) -> str:
    """The k-th of a task's n_files published data files (a shard's output is split past `rows_per_file`)."""
    suffix = "" if n_files == 1 else f"-part-{k:03d}"
    return f"train-{task.index:05d}-of-{task.of:05d}{suffix}.parquet"


PARTITION_COLUMN = "_partition"


def partition_of(values: list, num_partitions: int) -> list[int]:
    """Stable across machines and Python processes (not `hash()`, which is salted per process)."""
    import hashlib

    return [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "big") % num_partitions for v in values]


def write_partitioned(ds, key: str | None, num_partitions: int, path: Path) -> dict[str, list[int]]:
    """The shard's rows grouped by partition into row groups (input order kept within a partition), streamed: a
    buffer of up to ROW_GROUP_ROWS rows per partition, never the shard in memory. Returns {partition: its row groups,
    in order} for the record, so a reduce task reads just its own."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = ds.features.arrow_schema.append(pa.field(PARTITION_COLUMN, pa.int32()))
    buffers: dict[int, list] = {}
    sizes: dict[int, int] = {}
    groups: dict[str, list[int]] = {}
    with pq.ParquetWriter(str(path), schema) as writer:
        def flush(p: int) -> None:
            table = pa.concat_tables(buffers.pop(p)).cast(schema)
            written = sum(map(len, groups.values()))  # row groups in the file so far: this one's index
            groups.setdefault(str(p), []).append(written)
            writer.write_table(table, row_group_size=table.num_rows)
            sizes[p] = 0

        for batch in ds.with_format("arrow").iter(batch_size=ROW_GROUP_ROWS):
            parts = np.asarray(partition_of(batch[key].to_pylist(), num_partitions) if key is not None
                               else [0] * batch.num_rows, dtype=np.int32)
            batch = batch.append_column(PARTITION_COLUMN, pa.array(parts, pa.int32()))
            for p in np.unique(parts):
                p = int(p)
                rows = batch.filter(pa.array(parts == p))
                buffers.setdefault(p, []).append(rows)
                sizes[p] = sizes.get(p, 0) + rows.num_rows
                if sizes[p] >= ROW_GROUP_ROWS:
                    flush(p)
        for p in sorted(buffers):
            flush(p)
    return groups


def one_batch(table):
    """A chunk's mapped rows as one record batch (map writes one per `batch_size` rows): the chunk files are memory-
    mapped together for finalize, and opening one touches a page around every batch's header (the kernel maps 64 KB
    around each fault), so a batch per map call made the shard's resident memory grow by ~1 MB per chunk."""
    import pyarrow as pa

    try:
        return table.combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowCapacityError):  # a column past 2 GB in one batch: keep the batches
        return table


def write_parquet(ds, path: Path) -> None:
    """A dataset as parquet with row groups of ROW_GROUP_ROWS rows, keeping its features in the schema metadata
    (so `load_dataset` restores them exactly); an empty dataset gives a file with the schema and no row group
    (a row group of 0 rows makes `datasets`' parquet reader fail on the whole split: "BatchSize must be greater
    than 0"), so one shard without rows does not break loading the others."""
    import pyarrow.parquet as pq

    schema = ds.features.arrow_schema
    with pq.ParquetWriter(str(path), schema) as writer:
        for batch in ds.with_format("arrow").iter(batch_size=ROW_GROUP_ROWS):
            writer.write_table(batch.cast(schema), row_group_size=ROW_GROUP_ROWS)
