"""The driver of a dataset stage's run: plan -> open the run's pull request -> tasks -> seal.

1. `plan_run` pins every input (the run contract, `contract.py`), lists the mapped inputs' data files at their
   pinned commits with row counts from the parquet footers (no data read), checks their columns before any model
   loads, cuts them into shards (`sharding.py`: a shard is a set of files), and derives fingerprint and tag.
2. `run_stage` opens (or, on a rerun, finds) the run's pull request on the output repo (`hub_run.py`), reads which
   tasks are already in, and hands the others to an executor (`executors/`). Each worker commits its own output to
   the pull request: no data row passes through the driver and nothing needs a shared filesystem.
3. A stage with a `reduce` then runs its partitions the same way, each reading its row group of every shard.
4. `seal_run` sums the per-task records into the card's counts and stats, builds the stage's artifacts, and merges
   the pull request: `main` moves in one step, and the tag is set on the merge commit. Until then, another client
   sees `main` and the tags unchanged.

`--shard-index i` runs just one shard (a job array's element) and leaves the sealing to a run without it.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hf_pipeline import contract
from hf_pipeline.datafiles import InputPart
from hf_pipeline.errors import PipelineError
from hf_pipeline.executors.ray import RayOptions
from hf_pipeline.hub_io import DatasetRef, cache_root, download_file, load_dataset_ref, token_free_argv
from hf_pipeline.stage import AlignedInput, ArtifactContext, Stage, StageContext, merge_stats
from hf_pipeline.worker import Task


@dataclass
class RunOptions:
    """Options of a run that are not the stage's config: where from, where to, how to split the work."""

    input: str | None = None  # org/name[@revision] or a local path
    output: str | None = None  # org/name of the output dataset repo
    tag: str | None = None  # default: <stage>-<fingerprint>
    split: str = "train"
    max_rows: int | None = None  # take only the first N input rows (a sample)
    num_shards: int = 1
    shard_index: int | None = None  # run just this shard (commit it to the run's PR; another run seals)
    batch_size: int = 64  # rows per map_batch call
    chunk_rows: int = 1000  # rows per checkpoint chunk: the most work a crash can lose
    rows_per_file: int = 1_000_000  # most rows per published parquet file (a shard's output is split beyond)
    private: bool = False
    work_dir: str | None = None  # default: $HF_PIPELINE_CACHE/runs (~/.cache/hf_pipeline/runs)
    keep_work_dir: bool = False
    executor: str = "local"  # see hf_pipeline/executors
    ray: RayOptions = field(default_factory=RayOptions)


@dataclass
class RunPlan:
    stage: Stage
    options: RunOptions
    config: Any
    inputs: dict[str, DatasetRef]  # ref as written -> pinned; the mapped inputs first
    parts: list[InputPart]
    part_refs: list[DatasetRef]
    files: list  # sharding.DataFile of every part, in read order
    schemas: list  # arrow schema of each part
    shards: list  # sharding.ShardSpec
    fingerprint: str
    tag: str
    num_partitions: int = 1
    aligned: list[AlignedInput] = field(default_factory=list)  # the stage's aligned inputs, in its order
    aligned_files: list = field(default_factory=list)  # per aligned input: its sharding.DataFile list
    aligned_groups: list = field(default_factory=list)  # per aligned input, per shard: sharding.GroupRange to read
    argv: list[str] = field(default_factory=list)
    run: Any = None  # hub_run.RunPR, once opened
    run_stats: dict = field(default_factory=dict)  # the map shards' summed stats, for a reduce

    @property
    def work_dir(self) -> Path:
        base = Path(self.options.work_dir) if self.options.work_dir else cache_root() / "runs"
        return base / f"{self.stage.name}-{self.fingerprint}"

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

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


@dataclass
class RunResult:
    repo_id: str
    tag: str
    commit: str
    rows_in: int
    rows_out: int
    counts: dict[str, dict]
    skipped: bool = False  # True when the result was already published
    pull_request: str | None = None
    usage: dict = field(default_factory=dict)  # tokens and seconds the stage's engines spent (see run_usage)

    def load_hint(self) -> str:
        """The `load_dataset` call that loads this output as published, with why it is empty when it is (a run found
        already published reads its figures from its card: this result does not hold them)."""
        rows_in, rows_out, drops = self.rows_in, self.rows_out, self.counts.get("drops", {})
        if self.skipped:
            from hf_pipeline.hub_io import load_card

            meta = load_card(self.repo_id, self.tag).data.hf_pipeline
            rows_in, rows_out, drops = meta["rows_in"], meta["rows_out"], meta["counts"].get("drops", {})
        call = self.load_call(self.repo_id, self.tag, rows_out)
        return call if rows_out else f"{call}  # {self.why_empty(rows_in, drops)}"

    @staticmethod
    def load_call(repo_id: str, tag: str, rows: int, config_name: str | None = None) -> str:
        """`load_dataset(...)` for one config of a published output of `rows` rows, as a call that works: `datasets`
        refuses to build a zero-row split without streaming ("corresponds to no data"), a stream loads it."""
        name = f', "{config_name}"' if config_name else ""
        streaming = "" if rows else ", streaming=True"
        return f'load_dataset("{repo_id}"{name}, revision="{tag}", split="train"{streaming})'

    @staticmethod
    def why_empty(rows_in: int, drops: dict[str, int]) -> str:
        """Why an output has no rows, from its run's figures: no input row, or the drops by reason."""
        if not rows_in:
            return "no rows: the input had none"
        dropped = ", ".join(f"{reason} {n}" for reason, n in drops.items())
        return f"no rows out of {rows_in} in" + (f" (dropped: {dropped})" if dropped else "")


# ---------------------------------------------------------------- planning


def check_options(stage: Stage, options: RunOptions) -> None:
    if not options.output:
        raise PipelineError(f"stage {stage.name} needs --output org/name (the dataset repo to publish to).")
    if options.num_shards < 1:
        raise PipelineError("--num-shards must be at least 1.")
    if options.shard_index is not None and not 0 <= options.shard_index < options.num_shards:
        raise PipelineError(f"--shard-index must be in [0, {options.num_shards - 1}], got {options.shard_index}.")
    if options.chunk_rows < 1 or options.batch_size < 1 or options.rows_per_file < 1:
        raise PipelineError("--chunk-rows, --batch-size and --rows-per-file must be at least 1.")


def mapped_parts(stage: Stage, options: RunOptions, config: Any) -> list[InputPart]:
    if stage.inputs is not None:
        return list(stage.inputs(config, options))
    if not stage.needs_input:
        return []
    if not options.input:
        raise PipelineError(f"stage {stage.name} needs --input (org/name[@revision] or a local path).")
    return [InputPart(options.input, options.split)]


def check_columns(stage: Stage, part: InputPart, schema) -> None:
    """The mapped input has the stage's columns: said now, before a model loads or a shard starts."""
    names = list(schema.names) if schema is not None else []
    missing = [c for c in stage.input_columns if c not in names]
    if missing:
        raise PipelineError(
            f"input {part.ref} lacks column '{missing[0]}' required by stage {stage.name} (it has: {', '.join(names) or 'no columns'})."
        )


def plan_run(stage: Stage, options: RunOptions, config: Any, argv: list[str] | None = None) -> RunPlan:
    """Pin every input, list and check the mapped inputs' files, cut shards, derive fingerprint and tag."""
    from hf_pipeline.datafiles import group_ranges, list_files
    from hf_pipeline.sharding import align_groups, plan_shards

    from hf_pipeline.optional import check_config

    check_options(stage, options)
    check_config(stage.name, config)  # optional packages the config needs, before any input is read
    parts = mapped_parts(stage, options, config)
    aligned = stage.aligned(config, options)
    aligned = [] if aligned is None else [aligned] if isinstance(aligned, AlignedInput) else list(aligned)
    refs = [p.ref for p in parts] + list(stage.input_refs(config)) + [a.ref for a in aligned]
    inputs = contract.pin_datasets(refs)
    files, schemas = [], []
    for k, part in enumerate(parts):
        part_files, schema = list_files(inputs[part.ref], part.split, part.name, part=k)
        if stage.check_input is not None:
            stage.check_input(part, schema, config)
        elif stage.inputs is None:
            check_columns(stage, part, schema)
        files += part_files
        schemas.append(schema)
    shards = plan_shards(files, options.num_shards, options.max_rows)
    aligned_files, aligned_groups = [], []
    for spec in aligned:
        spec_files, _ = list_files(inputs[spec.ref])
        ranges = group_ranges(inputs[spec.ref], spec_files, spec.file_column, spec.row_column)
        aligned_files.append(spec_files)
        aligned_groups.append(align_groups(shards, files, ranges))
    plan = RunPlan(
        stage, options, config, inputs, parts, [inputs[p.ref] for p in parts], files, schemas, shards, "", "", 1,
        aligned, aligned_files, aligned_groups, token_free_argv(argv or sys.argv),
    )
    if stage.resolve_config is not None:  # once, here: the config the fingerprint names and every worker gets
        plan.config = config = stage.resolve_config(config, plan)
    prompts = contract.prompt_digests(stage.prompts(config))
    plan.fingerprint = contract.fingerprint(
        stage.name, stage.version, config, [p.pinned for p in inputs.values()], options.split, options.max_rows,
        prompts or None, options.num_shards if stage.sharding_changes_output else None,
    )
    plan.tag = options.tag or contract.default_tag(stage.name, plan.fingerprint)
    plan.num_partitions = stage.partitions(config) if stage.reduce else 1
    return plan


# ---------------------------------------------------------------- the whole run


def latest_records(plan: RunPlan) -> dict[str, dict]:
    """task name -> its record on the run's PR (the latest, should a task have been committed twice)."""
    from hf_pipeline.hub_run import shard_records

    records = {}
    for record in shard_records(plan.run):
        if record.get("fingerprint") != plan.fingerprint:
            continue
        expected = plan.options.num_shards if record["phase"] == "map" else plan.num_partitions
        if record["of"] != expected:
            what = "--num-shards" if record["phase"] == "map" else "partitions"
            raise PipelineError(
                f"the run's pull request {plan.run.url} holds tasks of {record['of']} {what}, this run asks for {expected}: "
                f"rerun with the same {what}, or close that pull request to start over."
            )
        records[record["task"]] = record
    return records


def run_stage(stage: Stage, options: RunOptions, config: Any, argv: list[str] | None = None,
              dry_run: bool = False) -> RunResult | None:
    from hf_pipeline.executors import get_executor
    from hf_pipeline.hub_run import open_run

    started = time.time()
    plan = plan_run(stage, options, config, argv)
    existing = contract.published_commit(options.output, plan.tag, plan.fingerprint)
    if existing:
        print(f"nothing to do: {options.output}@{plan.tag} (commit {existing[:12]}) already holds {stage.name} "
              "for these inputs and this config.")
        return RunResult(options.output, plan.tag, existing, 0, 0, {}, skipped=True)
    if dry_run:
        print_plan(plan)
        return None
    executor = get_executor(options.executor, options)
    description = (f"`hf_pipeline` run of stage `{stage.name}` (fingerprint `{plan.fingerprint}`, tag `{plan.tag}`): "
                   f"{plan.rows} input rows in {options.num_shards} shard(s). Workers commit their shards here; the "
                   "run merges when every shard is in.\n\nCommand: `" + " ".join(plan.argv) + "`")
    plan.run, opened = open_run(options.output, stage.name, plan.fingerprint, description, options.private)
    done = latest_records(plan)
    shards = [options.shard_index] if options.shard_index is not None else range(options.num_shards)
    tasks = [Task("map", i, options.num_shards) for i in shards]
    pending = [t for t in tasks if t.name not in done]
    print(f"run {'opened' if opened else 'resumed'}: {plan.run.url} ({len(tasks) - len(pending)} of {len(tasks)} "
          f"shard(s) already in)", flush=True)
    executor.run(plan, pending)
    if options.shard_index is not None:
        print(f"shard {options.shard_index} of {options.num_shards} is in {plan.run.url}; the run is sealed by the same "
              "command without --shard-index once every shard is in.")
        return RunResult(options.output, plan.tag, "", plan.shards[options.shard_index].rows, 0, {},
                         pull_request=plan.run.url)
    done = latest_records(plan)
    if stage.reduce is not None:
        run_reduce(plan, executor, done)
        done = latest_records(plan)
    result = seal_run(plan, done, started)
    print_run_summary(plan, result, time.time() - started)
    return result


def run_reduce(plan: RunPlan, executor, done: dict[str, dict]) -> None:
    """The stage's reduce, one task per partition, each reading its row group of every shard's scratch file."""
    from hf_pipeline.hub_run import scratch_dir

    maps = [done[Task("map", i, plan.options.num_shards).name] for i in range(plan.options.num_shards)]
    plan.run_stats = {"rows_in": sum(r["rows_in"] for r in maps), "rows_out": sum(r["rows_out"] for r in maps)}
    for r in maps:
        plan.run_stats = merge_stats(plan.run_stats, r["stats"])
    inputs: dict[int, list[tuple[str, int]]] = {p: [] for p in range(plan.num_partitions)}
    for r in maps:
        path = f"{scratch_dir(plan.fingerprint)}/map-{r['index']:05d}-of-{r['of']:05d}.parquet"
        for p, group in r["partitions"].items():
            inputs[int(p)].append((path, group))
    tasks = [Task("reduce", p, plan.num_partitions) for p in range(plan.num_partitions)]
    executor.run(plan, [t for t in tasks if t.name not in done], inputs)


def missing_tasks(plan: RunPlan, done: dict[str, dict]) -> list[str]:
    names = [Task("map", i, plan.options.num_shards).name for i in range(plan.options.num_shards)]
    if plan.stage.reduce is not None:
        names += [Task("reduce", p, plan.num_partitions).name for p in range(plan.num_partitions)]
    return [n for n in names if n not in done]


def seal_run(plan: RunPlan, done: dict[str, dict], started: float) -> RunResult:
    """Sum the records, build artifacts and the card, merge the run's PR and tag the merge commit."""
    from hf_pipeline.hub_run import seal

    stage, opts = plan.stage, plan.options
    missing = missing_tasks(plan, done)
    if missing:
        raise PipelineError(f"{len(missing)} task(s) of the run are not in its pull request {plan.run.url} (e.g. {missing[0]}); "
                            "rerun the same command to finish them.")
    records = list(done.values())
    maps = [r for r in records if r["phase"] == "map"]
    data_phase = "reduce" if stage.reduce else "map"  # whose outputs are the published rows
    data = [r for r in records if r["phase"] == data_phase]
    rows_in, rows_out = sum(r["rows_in"] for r in maps), sum(r["rows_out"] for r in data)
    counts: dict[str, Any] = {"drops": {}}
    stats: dict[str, Any] = {}
    for r in records:
        # statuses are counted on the published rows (a reduce stage's partitions); drops come from every step
        counts = merge_stats(counts, {k: v for k, v in r["counts"].items() if k == "drops" or r["phase"] == data_phase})
        stats = merge_stats(stats, r["stats"])
    if stage.summarize is not None:
        stats = stage.summarize(stats, plan.config)
    if stats:
        counts["stats"] = stats
    usage = run_usage(records, rows_in)
    files = sorted(f for r in data for f in r["files"] if f.startswith("data/"))
    out_dir = plan.work_dir / "seal"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    artifacts: dict[str, Path] = {}
    if stage.artifacts is not None:
        actx = ArtifactContext(plan.config, stats, counts, rows_out, output_reader(plan, files), plan.download)
        artifacts = {k: Path(v) for k, v in stage.artifacts(actx, out_dir).items()}
    result = RunResult(opts.output, plan.tag, "", rows_in, rows_out, counts, pull_request=plan.run.url, usage=usage)
    card = render_card(plan, result, examples(plan, files), time.time() - started, sorted(artifacts))
    message = f"{stage.name}: {rows_out} rows from {rows_in} ({plan.tag})"
    result.commit = seal(plan.run, card, artifacts, plan.fingerprint, plan.tag, message)
    if not opts.keep_work_dir:
        shutil.rmtree(plan.work_dir, ignore_errors=True)
    return result


def run_usage(records: list[dict], rows_in: int) -> dict[str, Any]:
    """What the run's engines spent, summed over its shards: `prompt_tokens`, `cached_prompt_tokens`,
    `generated_tokens`, `seconds` (engine time, summed over workers: device-seconds with one device per worker),
    and derived figures per 1,000 input rows; `engines` gives each engine's backend and settings."""
    tokens: dict[str, float] = {}
    engines: dict[str, Any] = {}
    for r in records:
        for key, value in (r.get("usage") or {}).get("tokens", {}).items():
            tokens[key] = tokens.get(key, 0) + value
        engines.update((r.get("usage") or {}).get("engines", {}))
    if not engines:
        return {}
    seconds = tokens.get("seconds", 0.0)
    usage: dict[str, Any] = {k: int(v) for k, v in tokens.items() if k != "seconds"}
    usage["seconds"] = round(seconds, 2)
    usage["worker_seconds"] = round(sum(r.get("seconds", 0.0) for r in records if r["phase"] == "map"), 2)
    if seconds:
        usage["tokens_per_second"] = round((tokens.get("prompt_tokens", 0) + tokens.get("generated_tokens", 0)) / seconds, 1)
        usage["generated_tokens_per_second"] = round(tokens.get("generated_tokens", 0) / seconds, 1)
    if rows_in:
        usage["device_seconds_per_1k_rows"] = round(1000 * seconds / rows_in, 2)
        usage["wall_seconds_per_1k_rows"] = round(1000 * usage["worker_seconds"] / rows_in, 2)
    usage["engines"] = engines
    return usage


def output_reader(plan: RunPlan, files: list[str]):
    """read_output(columns, config_name="train"): the final data files, a row group at a time, from the run's PR."""

    def read_output(columns: list[str] | None = None, config_name: str = "train"):
        from hf_pipeline.hub_run import read_row_groups

        wanted = [(path, None) for path in files if path.startswith(f"data/{config_name}-")]
        yield from read_row_groups(plan.run, wanted, columns)

    return read_output


def examples(plan: RunPlan, files: list[str], n: int = 3) -> list[dict]:
    """The first rows of the output, for the card (the first row group that has any)."""
    for table in output_reader(plan, files)():
        if table.num_rows:
            return table.slice(0, n).to_pylist()
    return []


def render_card(plan: RunPlan, result: RunResult, rows: list[dict], seconds: float, artifacts: list[str] = ()) -> str:
    """The dataset card from the package's dataset_cards/<stage>.md, with lineage, config and counts filled in."""
    from huggingface_hub import DatasetCard, DatasetCardData

    stage = plan.stage
    lineage = contract.lineage(
        stage.name, stage.version, plan.fingerprint, plan.tag, [p.card_dict() for p in plan.inputs.values()],
        stage.models(plan.config), plan.config, asdict(plan.options), plan.argv, result.rows_in, result.rows_out,
        counts=result.counts, shards=plan.options.num_shards, pull_request=result.pull_request,
        **({"usage": result.usage} if result.usage else {}),
    )
    card_data = DatasetCardData(
        pretty_name=f"{result.repo_id.split('/')[-1]} ({stage.name})",
        tags=["fineinstructions", "hf_pipeline", stage.name],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
        + [{"config_name": n, "data_files": [{"split": "train", "path": p}]} for n, p in stage.extra_configs(plan.config).items()],
        hf_pipeline=lineage,
    )
    variables = dict(
        repo_id=result.repo_id, tag=plan.tag, lineage=lineage, inputs=list(plan.inputs.values()), models=lineage["models"],
        counts=result.counts, rows_in=result.rows_in, rows_out=result.rows_out, seconds=round(seconds, 1),
        examples=rows, load_hint=result.load_hint(), artifacts=list(artifacts), usage=result.usage,
    )
    template = contract.card_template("dataset", stage.name, stage.card_template)
    return contract.render_card(DatasetCard, card_data, template, variables)


def print_plan(plan: RunPlan) -> None:
    opts = plan.options
    lines = [f"plan for stage {plan.stage.name} (dry run: nothing is written)"]
    for ref, pinned in plan.inputs.items():
        lines.append(f"  input        {ref} -> {pinned.pinned}")
    sizes = [s.rows for s in plan.shards]
    lines.append(f"  input rows   {plan.rows} in {len(plan.files)} file(s)")
    lines.append(f"  shards       {opts.num_shards} (rows per shard {min(sizes)}..{max(sizes)}); chunks of {opts.chunk_rows} "
                 f"rows, batches of {opts.batch_size}" + (f"; running only shard {opts.shard_index}" if opts.shard_index is not None else ""))
    if plan.stage.reduce is not None:
        lines.append(f"  reduce       {plan.num_partitions} partition(s)")
    lines.append(f"  output       {opts.output} tag {plan.tag}, through a pull request of that repo")
    lines.append(f"  work dir     {plan.work_dir}")
    print("\n".join(lines))


def print_run_summary(plan: RunPlan, result: RunResult, seconds: float) -> None:
    lines = [("input", ", ".join(p.pinned for p in plan.inputs.values())),
             ("rows", f"{result.rows_in} in -> {result.rows_out} out ({plan.options.num_shards} shard(s))")]
    for kind, counts in result.counts.items():
        if counts and kind != "stats":
            lines.append((kind, ", ".join(f"{k}: {v}" for k, v in counts.items())))
    if plan.stage.report is not None and result.counts.get("stats"):
        lines += plan.stage.report(result.counts["stats"], plan.config)
    if result.usage:
        u = result.usage
        lines.append(("tokens", f"{u.get('prompt_tokens', 0):,} prompt ({u.get('cached_prompt_tokens', 0):,} from the prefix "
                                f"cache), {u.get('generated_tokens', 0):,} generated; {u.get('tokens_per_second', 0):,} tok/s; "
                                f"{u.get('device_seconds_per_1k_rows', 0)} engine-s per 1k rows"))
    lines += [("output", f"{result.repo_id}@{result.tag} (commit {result.commit[:12]}, merged from {result.pull_request})"),
              ("load with", result.load_hint())]
    contract.print_summary(plan.stage.name, seconds, lines)
