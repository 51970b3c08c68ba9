"""What a dataset run's parts pass each other, typed, in one low module that the runner, the worker and every
executor import: the run's options (`RunOptions`), its plan (`RunPlan`: fixed once, then the run's manifest), a
unit of work (`Task`: a shard to map or a partition to reduce) and what a finished task says of itself
(`TaskRecord`: the JSON in its commit's description on the run's pull request).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import InputPart
from hf_pipeline.io.hub import DatasetRef, cache_root, download_file, load_dataset_ref
from hf_pipeline.io.sharding import DataFile, GroupRange, ShardSpec
from hf_pipeline.stage import AlignedInput, Stage, StageContext


@dataclass
class RunOptions:
    """Options of a dataset run that are not the stage's config: where from, where to, how to split the work, who
    runs the tasks. Each is a flag of `run_stage.py STAGE` (its help below); the executor's own options come from
    the executor (`hf_pipeline/run/executors/`)."""

    input: str | None = field(default=None, metadata={"help": "input dataset: org/name, org/name@revision, or a local path"})
    output: str | None = field(default=None, metadata={"help": "output dataset repo (org/name) to publish to"})
    tag: str | None = field(default=None, metadata={"help": "tag for the published revision (default: <stage>-<config hash>)"})
    split: str = field(default="train", metadata={"help": "split of the input to read"})
    max_rows: int | None = field(default=None, metadata={"help": "take only the first N rows of the input (a sample)"})
    num_shards: int = field(default=1, metadata={"help": "cut the input's files into this many shards (a shard is a set of files)"})
    shard_index: int | None = field(default=None, metadata={
        "help": "run only this shard and commit it to the run's pull request (a job array); the same command without "
                "it finishes and seals the run"})
    batch_size: int = field(default=64, metadata={"help": "rows per batch given to the stage's function"})
    chunk_rows: int = field(default=1000, metadata={"help": "rows per checkpoint chunk: the most work a crash can lose"})
    rows_per_file: int = field(default=1_000_000, metadata={"help": "most rows per published parquet file"})
    private: bool = field(default=False, metadata={"help": "create the output repo as private"})
    work_dir: str | None = field(default=None, metadata={
        "help": "where a worker keeps its checkpoint chunks (default: $HF_PIPELINE_CACHE/runs)"})
    keep_work_dir: bool = field(default=False, metadata={"help": "keep checkpoint chunks after the shard is on the Hub"})
    allow_version_change: bool = field(default=False, metadata={
        "help": "finish a run whose pull request another hf_pipeline version opened (its shards so far stay as they are)"})
    executor: str = field(default="local", metadata={"help": "who runs the tasks: one of hf_pipeline/run/executors"})
    # the executor's options: its options dataclass, or a mapping of its keys (YAML `executor_options:`, its flags)
    executor_options: Any = field(default=None, metadata={"flag": False})


@dataclass(frozen=True)
class Task:
    phase: str  # "map" (a shard of the input) or "reduce" (a partition of the shards' outputs)
    index: int
    of: int
    # what this task alone reads besides its shard, shipped with the task rather than in the plan every worker
    # holds: a map task's row groups of each aligned input; a reduce task's (scratch file, row groups) of each shard
    inputs: tuple = field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        kind = "shard" if self.phase == "map" else "partition"
        return f"{kind}-{self.index:05d}-of-{self.of:05d}"


@dataclass
class TaskRecord:
    """What a finished task says of itself: committed as JSON in the description of its last commit to the run's
    pull request, and summed by the driver into the card."""

    task: str
    phase: str
    index: int
    of: int
    fingerprint: str
    rows_in: int
    rows_out: int
    files: dict[str, dict[str, Any]]  # path in the repo -> {"sha256", "size", "rows"}
    counts: dict[str, Any]  # drops and status counts
    stats: dict[str, Any]  # additive figures (see stage.merge_stats)
    seconds: float = 0.0
    partitions: dict[str, list[int]] | None = None  # before a reduce: partition -> its row groups of the scratch file
    usage: dict[str, Any] | None = None  # tokens and seconds the task's engines spent
    pid: int | None = None  # the worker process (set by an executor; not committed)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and k != "pid"}

    @classmethod
    def from_json(cls, data: Any) -> TaskRecord:
        """The record in a commit's description; ValueError saying why it cannot be used (another package version's,
        or not a record at all)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        kinds = {"task": str, "phase": str, "index": int, "of": int, "fingerprint": str, "rows_in": int,
                 "rows_out": int, "files": dict, "counts": dict, "stats": dict}
        for key, kind in kinds.items():
            if not isinstance(data.get(key), kind):
                raise ValueError(f"no {key!r} ({kind.__name__})")
        if data["phase"] not in ("map", "reduce"):
            raise ValueError(f"phase {data['phase']!r}")
        for path, meta in data["files"].items():
            if not isinstance(meta, dict) or not isinstance(meta.get("sha256"), str) or not isinstance(meta.get("rows"), int):
                raise ValueError(f"file {path!r} without sha256 and rows")
        known = {f.name for f in dataclasses.fields(cls)} - {"pid"}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class RunPlan:
    stage: Stage
    options: RunOptions
    config: Any
    inputs: dict[str, DatasetRef]  # ref as written -> pinned; the mapped inputs first
    parts: list[InputPart]
    files: list[DataFile]  # of every part, in read order
    shards: list[ShardSpec]
    fingerprint: str = ""
    tag: str = ""
    key: str = ""  # the command's identity (before pinning): how every later command of this run finds its PR
    num_partitions: int = 1
    aligned: list[AlignedInput] = field(default_factory=list)  # the stage's aligned inputs, in its order
    aligned_files: list[list[DataFile]] = field(default_factory=list)  # per aligned input: its files
    # per aligned input, per shard: the row groups that shard reads (driver only: each map task carries its own)
    aligned_groups: list[list[list[GroupRange]]] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)  # config key -> pinned model (repo@sha)
    package_version: str = ""  # the hf_pipeline that planned the run
    argv: list[str] = field(default_factory=list)
    run: Any = None  # hub_run.RunPR, once opened
    merged: bool = False  # the run's PR is merged but its tag is missing: the seal died before it
    run_stats: dict = field(default_factory=dict)  # the map shards' summed stats, for a reduce
    strays: list[str] = field(default_factory=list)  # files in the PR's data/ no record names (deleted at the seal)
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)  # phase -> (tasks done, rows in) for titles

    @property
    def part_refs(self) -> list[DatasetRef]:
        return [self.inputs[p.ref] for p in self.parts]

    @property
    def work_dir(self) -> Path:
        base = Path(self.options.work_dir) if self.options.work_dir else cache_root() / "runs"
        return base / f"{self.stage.name}-{self.fingerprint}"

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def for_workers(self) -> RunPlan:
        """The plan every worker holds: without the per-shard aligned row groups, which each task carries."""
        return dataclasses.replace(self, aligned_groups=[])

    def map_task(self, index: int) -> Task:
        return Task("map", index, self.options.num_shards, tuple(tuple(groups[index]) for groups in self.aligned_groups))

    def pinned(self, ref: str) -> DatasetRef:
        pinned = self.inputs.get(ref)
        if pinned is None:
            raise PipelineError(f"stage {self.stage.name} read '{ref}', which it did not declare as an input.")
        return pinned

    def context(self, resources: Any = None) -> StageContext:
        return StageContext(config=self.config, load=self.load, download=self.download, resources=resources)

    def load(self, ref: str, split: str | None = None, name: str | None = None):
        """A small side input, loaded exactly as pinned at plan time (a branch that moves mid-run changes nothing)."""
        return load_dataset_ref(self.pinned(ref), split=split or self.options.split, name=name)

    def download(self, ref: str, filename: str) -> Path:
        """One file of a declared input, at its pinned commit (or from the local folder it names)."""
        return download_file(self.pinned(ref), filename)
