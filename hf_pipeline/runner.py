"""The one runner: load -> shard -> batched map (checkpointed) -> finalize -> check -> push -> tag -> card.

Stages own only their function and config (see `stage.py`). The runner is split so an executor can call
it per shard: `plan_run` pins inputs and decides the tag, `process_shard` maps one shard into checkpoint
chunks on disk, and `publish_run` turns all chunks into one commit + tag + card.

Resume: a shard is mapped in chunks of `chunk_rows` rows; each finished chunk is written to the work dir
atomically (tmp file + rename), so a run killed with SIGKILL and started again redoes only the chunks that
had not been written, and publishes the same rows (chunks are concatenated in input order). Stages that
sample derive their randomness from the row (e.g. a seed plus the doc id), never from chunk boundaries.

Caching: the default tag is `<stage>-<fingerprint>`, the fingerprint hashing the stage, its version, its
config, the content of its prompt files and every input pinned to a commit sha; a rerun that finds that tag
already published is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_pipeline import __version__
from hf_pipeline.config import config_hash, config_to_dict
from hf_pipeline.errors import PipelineError
from hf_pipeline.hub_io import (
    DatasetRef,
    cache_root,
    download_file,
    load_dataset_ref,
    output_tags,
    publish,
    read_card_metadata,
    resolve_dataset,
    token_free_argv,
)
from hf_pipeline.stage import Stage, StageContext

CARDS_DIR = Path(__file__).resolve().parent.parent / "dataset_cards"


@dataclass
class RunOptions:
    """Options of a run that are not the stage's config: where from, where to, how to split the work."""

    input: str | None = None  # org/name[@revision] or a local path
    output: str | None = None  # org/name of the output dataset repo
    tag: str | None = None  # default: <stage>-<fingerprint>
    split: str = "train"
    max_rows: int | None = None  # take only the first N input rows (a sample)
    num_shards: int = 1
    shard_index: int | None = None  # run and publish just this shard
    batch_size: int = 64  # rows per map_batch call
    chunk_rows: int = 1000  # rows per checkpoint chunk: the most work a crash can lose
    rows_per_file: int = 500_000  # rows per published parquet file
    private: bool = False
    work_dir: str | None = None  # default: $HF_PIPELINE_CACHE/runs (~/.cache/hf_pipeline/runs)
    keep_work_dir: bool = False
    executor: str = "local"  # "local" (in this process) or "ray" (see hf_pipeline/ray_executor.py)
    ray_address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); default: a local instance
    num_workers: int | None = None  # Ray actors; default: as many as the cluster's resources fit, at most one per shard
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_shard_retries: int = 2  # Ray: retries of a shard whose worker died or whose map raised


@dataclass
class RunPlan:
    stage: Stage
    options: RunOptions
    config: Any
    inputs: dict[str, DatasetRef]  # ref as written -> pinned; the main input first
    fingerprint: str
    tag: str
    argv: list[str] = field(default_factory=list)

    @property
    def work_dir(self) -> Path:
        base = Path(self.options.work_dir) if self.options.work_dir else cache_root() / "runs"
        return base / f"{self.stage.name}-{self.fingerprint}"

    @property
    def main_input(self) -> DatasetRef | None:
        return self.inputs.get(self.options.input) if self.options.input else None

    def context(self, resources: Any = None) -> StageContext:
        return StageContext(config=self.config, load=self.load, download=self.download, resources=resources)

    def load(self, ref: str, split: str | None = None, name: str | None = None):
        """Load an input exactly as pinned at planning time (a branch that moves mid-run changes nothing)."""
        pinned = self.inputs.get(ref)
        if pinned is None:
            raise PipelineError(f"stage {self.stage.name} loaded '{ref}', which its input_refs did not declare.")
        return load_dataset_ref(pinned, split=split or self.options.split, name=name)

    def download(self, ref: str, filename: str) -> Path:
        """One file of a declared input, at its pinned commit (or from the local folder it names)."""
        pinned = self.inputs.get(ref)
        if pinned is None:
            raise PipelineError(f"stage {self.stage.name} read '{ref}', which its input_refs did not declare.")
        return download_file(pinned, filename)


@dataclass
class RunResult:
    repo_id: str
    tag: str
    commit: str
    rows_in: int
    rows_out: int
    counts: dict[str, dict[str, int]]
    skipped: bool = False  # True when the result was already published

    def load_hint(self) -> str:
        return f'load_dataset("{self.repo_id}", revision="{self.tag}", split="train")'


# ---------------------------------------------------------------- planning


def plan_run(stage: Stage, options: RunOptions, config: Any, argv: list[str] | None = None) -> RunPlan:
    """Pin every input to a commit sha and derive the fingerprint and tag. Raises PipelineError on bad input."""
    if not options.output:
        raise PipelineError(f"stage {stage.name} needs --output org/name (the dataset repo to publish to).")
    if options.executor not in ("local", "ray"):
        raise PipelineError(f"--executor must be 'local' or 'ray', got '{options.executor}'.")
    if options.num_shards < 1:
        raise PipelineError("--num-shards must be at least 1.")
    if options.shard_index is not None and not 0 <= options.shard_index < options.num_shards:
        raise PipelineError(f"--shard-index must be in [0, {options.num_shards - 1}], got {options.shard_index}.")
    refs: list[str] = []
    if stage.needs_input:
        if not options.input:
            raise PipelineError(f"stage {stage.name} needs --input (org/name[@revision] or a local path).")
        refs.append(options.input)
    refs += [r for r in stage.input_refs(config) if r not in refs]
    inputs = {ref: resolve_dataset(ref) for ref in refs}
    shard = None if options.shard_index is None else [options.shard_index, options.num_shards]
    prompts = prompt_digests(stage.prompts(config))
    fingerprint = config_hash(
        stage.name, stage.version, config_to_dict(config), [p.pinned for p in inputs.values()], options.split, shard,
        # each absent when unset/empty, so tags of runs without them stay valid
        *([options.max_rows] if options.max_rows is not None else []),
        *([prompts] if prompts else []),
    )
    tag = options.tag or f"{stage.name}-{fingerprint}"
    if shard is not None and not options.tag:
        tag += f"-shard-{shard[0]}-of-{shard[1]}"
    return RunPlan(stage, options, config, inputs, fingerprint, tag, token_free_argv(argv or sys.argv))


def prompt_digests(paths: list[Path]) -> dict[str, str]:
    """{file name: sha256 of its content} of a stage's prompt files. Keyed by name, not path, so the same
    prompt gives the same fingerprint in any checkout."""
    digests = {}
    for path in paths:
        try:
            digests[Path(path).name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as e:
            raise PipelineError(f"cannot read the prompt file {path}: {e}") from e
    return digests


def already_published(plan: RunPlan) -> str | None:
    """Commit sha if the output repo already holds this exact run under its tag; error if the tag holds another."""
    tags = output_tags(plan.options.output)
    if plan.tag not in tags:
        return None
    meta = read_card_metadata(plan.options.output, tags[plan.tag]).get("hf_pipeline", {})
    if meta.get("fingerprint") != plan.fingerprint:
        raise PipelineError(
            f"tag '{plan.tag}' of {plan.options.output} already holds a different run "
            f"(fingerprint {meta.get('fingerprint')}, this run {plan.fingerprint}); choose another --tag."
        )
    return tags[plan.tag]


# ---------------------------------------------------------------- mapping


def load_mapped_input(plan: RunPlan, ctx: StageContext):
    """The dataset the stage maps over: the main input, or what the stage's load_input builds."""
    stage = plan.stage
    ds = stage.load_input(ctx) if stage.load_input else plan.load(plan.options.input)
    missing = [c for c in stage.input_columns if c not in ds.column_names]
    if missing:
        what = plan.options.input or "the stage's input"
        raise PipelineError(
            f"input {what} lacks column '{missing[0]}' required by stage {stage.name} "
            f"(it has: {', '.join(ds.column_names)})."
        )
    if plan.options.max_rows is not None and plan.options.max_rows < len(ds):
        ds = ds.select(range(plan.options.max_rows))
    return ds


def _map_features(stage: Stage):
    from hf_pipeline.features import features_from_spec

    return features_from_spec(stage.map_columns or stage.output_columns)


def process_shard(plan: RunPlan, shard_index: int, num_shards: int, resources: Any = None, dataset=None) -> list[Path]:
    """Map one shard of the input into checkpointed parquet chunks; returns the chunk files in order.

    Chunks already on disk from an earlier (crashed) attempt are kept and not recomputed.
    """
    import datasets
    from tqdm.auto import tqdm

    stage, opts = plan.stage, plan.options
    ctx = plan.context(resources)
    if ctx.resources is None and stage.setup is not None:
        ctx.resources = stage.setup(ctx)
    ds = dataset if dataset is not None else load_mapped_input(plan, ctx)
    if num_shards > 1:
        ds = ds.shard(num_shards, shard_index, contiguous=True)
    shard_dir = plan.work_dir / f"shard-{shard_index:05d}-of-{num_shards:05d}"
    manifest = {"rows": len(ds), "chunk_rows": opts.chunk_rows, "fingerprint": plan.fingerprint}
    manifest_file = shard_dir / "manifest.json"
    if manifest_file.exists() and json.loads(manifest_file.read_text()) != manifest:
        shutil.rmtree(shard_dir)  # chunks of another chunking or input: not reusable
    shard_dir.mkdir(parents=True, exist_ok=True)
    manifest_file.write_text(json.dumps(manifest))

    n_chunks = max(1, math.ceil(len(ds) / opts.chunk_rows))
    chunk_files = [shard_dir / f"chunk-{i:05d}.parquet" for i in range(n_chunks)]
    done_rows = sum(min(opts.chunk_rows, len(ds) - i * opts.chunk_rows) for i, f in enumerate(chunk_files) if f.exists())
    features = _map_features(stage)
    bar = tqdm(total=len(ds), initial=done_rows, desc=f"{stage.name} shard {shard_index + 1}/{num_shards}", unit="row")

    def map_fn(batch: dict[str, list]) -> dict[str, list]:
        out = stage.map_batch(batch, ctx)
        bar.update(len(next(iter(batch.values()))) if batch else 0)
        return out

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar for the whole shard, not one per chunk
    try:
        for i, chunk_file in enumerate(chunk_files):
            if chunk_file.exists():
                continue
            chunk = ds.select(range(i * opts.chunk_rows, min((i + 1) * opts.chunk_rows, len(ds))))
            mapped = chunk.map(
                map_fn,
                batched=True,
                batch_size=opts.batch_size,
                remove_columns=chunk.column_names,
                features=features,
                keep_in_memory=True,
                load_from_cache_file=False,
                new_fingerprint=f"{plan.fingerprint}-{shard_index}-{i}",
            )
            if set(mapped.column_names) != set(features):
                raise PipelineError(
                    f"stage {stage.name} returned columns {mapped.column_names}, expected {list(features)}."
                )
            tmp = chunk_file.with_suffix(".tmp")
            mapped.to_parquet(str(tmp))
            os.replace(tmp, chunk_file)  # atomic: a chunk is either whole on disk or absent
    finally:
        bar.close()
        if was_enabled:
            datasets.enable_progress_bars()
    return chunk_files


# ---------------------------------------------------------------- publishing


def read_chunks(chunk_files: list[Path], stage: Stage):
    import datasets

    parts = [datasets.Dataset.from_parquet(str(f), features=_map_features(stage)) for f in chunk_files]
    return datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict({}, features=_map_features(stage))


def publish_run(plan: RunPlan, chunk_files: list[Path], rows_in: int, started: float) -> RunResult:
    """Concatenate the chunks, run the stage's global step, write parquet files, commit, tag, card."""
    import datasets

    stage, opts = plan.stage, plan.options
    ds = read_chunks(chunk_files, stage)
    drops: dict[str, int] = {}
    stats: dict[str, Any] = {}
    ctx = plan.context()  # one context for finalize and artifacts: finalize may leave files' contents in ctx.scratch
    if stage.finalize is not None:
        ds, drop_counts, *more = stage.finalize(ds, ctx)
        drops = {k: int(v) for k, v in drop_counts.items()}
        stats = dict(more[0]) if more else {}
    missing = [c for c in stage.output_columns if c not in ds.column_names]
    if missing:
        raise PipelineError(f"stage {stage.name} did not produce output column(s) {missing}.")
    ds = ds.select_columns(list(stage.output_columns))
    counts = {"drops": drops}
    if stats:
        counts["stats"] = stats
    for column in ds.column_names:  # `status`, `judge_status`, ...: every per-row status is counted in the card
        if column == "status" or column.endswith("_status"):
            counts[column] = dict(Counter(ds[column][:]).most_common())

    out_dir = plan.work_dir / "publish"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "data").mkdir(parents=True)
    n_files = max(1, math.ceil(len(ds) / opts.rows_per_file))
    data_files = []
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        for i in range(n_files):
            path = out_dir / "data" / f"train-{i:05d}-of-{n_files:05d}.parquet"
            ds.shard(n_files, i, contiguous=True).to_parquet(str(path))
            data_files.append(path)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()

    artifacts = {}
    if stage.artifacts is not None:
        (out_dir / "artifacts").mkdir()
        artifacts = {k: Path(v) for k, v in stage.artifacts(ds, ctx, out_dir / "artifacts").items()}
    result = RunResult(opts.output, plan.tag, "", rows_in, len(ds), counts)
    card = render_card(plan, result, ds, time.time() - started, sorted(artifacts))
    result.commit = publish(
        opts.output,
        data_files,
        card,
        plan.tag,
        commit_message=f"{stage.name}: {len(ds)} rows from {rows_in} ({plan.tag})",
        extra_files=artifacts,
        private=opts.private,
    )
    if not opts.keep_work_dir:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
    return result


def render_card(plan: RunPlan, result: RunResult, ds, seconds: float, artifacts: list[str] = ()) -> str:
    """The dataset card from dataset_cards/<stage>.md, with lineage, config and counts filled in."""
    import jinja2
    import yaml
    from huggingface_hub import DatasetCard, DatasetCardData

    stage = plan.stage
    template = Path(stage.card_template) if stage.card_template else CARDS_DIR / f"{stage.name}.md"
    if not template.exists():
        raise PipelineError(f"card template {template} is missing for stage {stage.name}.")
    lineage = {
        "stage": stage.name,
        "stage_version": stage.version,
        "package": f"fineinstructions-pipeline {__version__}",
        "fingerprint": plan.fingerprint,
        "tag": plan.tag,
        "inputs": [p.card_dict() for p in plan.inputs.values()],
        "models": stage.models(plan.config),
        "config": config_to_dict(plan.config),
        "run": asdict(plan.options),
        "command": " ".join(plan.argv),
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "counts": result.counts,
    }
    card_data = DatasetCardData(
        pretty_name=f"{result.repo_id.split('/')[-1]} ({stage.name})",
        tags=["fineinstructions", "hf_pipeline", stage.name],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
        + [{"config_name": n, "data_files": [{"split": "train", "path": p}]} for n, p in stage.extra_configs(plan.config).items()],
        hf_pipeline=lineage,
    )
    variables = dict(
        repo_id=result.repo_id,
        tag=plan.tag,
        lineage=lineage,
        inputs=list(plan.inputs.values()),
        models=lineage["models"],
        config_yaml=yaml.safe_dump(lineage["config"], sort_keys=False).strip(),
        counts=result.counts,
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        seconds=round(seconds, 1),
        examples=[ds[i] for i in range(min(3, len(ds)))],
        load_hint=result.load_hint(),
        artifacts=list(artifacts),
    )
    # the lineage section is shared by every stage's card: rendered once here, placed by `{{ lineage_section }}`
    variables["lineage_section"] = jinja2.Template((CARDS_DIR / "_lineage.md").read_text()).render(**variables)
    card = DatasetCard.from_template(card_data, template_path=str(template), **variables)
    return str(card)


# ---------------------------------------------------------------- the whole run


def run_stage(stage: Stage, options: RunOptions, config: Any, argv: list[str] | None = None, dry_run: bool = False) -> RunResult | None:
    started = time.time()
    plan = plan_run(stage, options, config, argv)
    existing = already_published(plan)
    if existing:
        print(
            f"nothing to do: {options.output}@{plan.tag} (commit {existing[:12]}) already holds {stage.name} "
            f"for these inputs and this config."
        )
        return RunResult(options.output, plan.tag, existing, 0, 0, {}, skipped=True)
    if dry_run:
        print_plan(plan)
        return None
    if options.executor == "ray":
        from hf_pipeline.ray_executor import run_on_ray

        return run_on_ray(plan, started)
    shards = [options.shard_index] if options.shard_index is not None else list(range(options.num_shards))
    ctx = plan.context()
    if stage.setup is not None:
        ctx.resources = stage.setup(ctx)
    ds = load_mapped_input(plan, ctx)
    chunk_files: list[Path] = []
    for i in shards:
        chunk_files += process_shard(plan, i, options.num_shards, resources=ctx.resources, dataset=ds)
    rows_in = len(ds) if options.shard_index is None else len(ds.shard(options.num_shards, options.shard_index, contiguous=True))
    result = publish_run(plan, chunk_files, rows_in, started)
    print_summary(plan, result, time.time() - started)
    return result


def print_plan(plan: RunPlan) -> None:
    ctx = plan.context()
    ds = load_mapped_input(plan, ctx)
    opts = plan.options
    lines = [f"plan for stage {plan.stage.name} (dry run: nothing is written)"]
    for ref, pinned in plan.inputs.items():
        lines.append(f"  input        {ref} -> {pinned.pinned}")
    lines.append(f"  input rows   {len(ds)}")
    shard = f"{opts.shard_index} of {opts.num_shards}" if opts.shard_index is not None else f"all {opts.num_shards}"
    lines.append(f"  shards       {shard}; chunks of {opts.chunk_rows} rows, batches of {opts.batch_size}")
    lines.append(f"  output       {opts.output} tag {plan.tag}")
    lines.append(f"  work dir     {plan.work_dir}")
    print("\n".join(lines))


def print_summary(plan: RunPlan, result: RunResult, seconds: float) -> None:
    lines = [
        "",
        f"== {plan.stage.name} done in {seconds:.1f}s ==",
        *(f"  input     {p.pinned}" for p in plan.inputs.values()),
        f"  rows      {result.rows_in} in -> {result.rows_out} out",
    ]
    for kind, counts in result.counts.items():
        if counts:
            lines.append(f"  {kind:<9} " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    lines += [
        f"  output    {result.repo_id}@{result.tag} (commit {result.commit[:12]})",
        f"  load with {result.load_hint()}",
    ]
    print("\n".join(lines))
