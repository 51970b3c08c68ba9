"""The driver of a dataset stage's run: plan once -> open the run's pull request -> tasks -> seal.

1. `plan_run` pins every input (the run contract, `contract.py`) and every Hub model the config names, lists the
   mapped inputs' data files at their pinned commits with row counts from the parquet footers (no data read),
   checks every file's columns before any model loads, cuts them into shards (`sharding.py`: a shard is a set of
   files), resolves data-dependent config values, and derives fingerprint and tag.
2. `run_stage` opens the run's pull request with the plan as its manifest (`hub_run.py`). Every later command of
   the same run (a rerun after a crash, a `--shard-index` job, the sealing command, on any machine) finds that PR
   by the command's key and reads the manifest instead of planning: the same pinned inputs, resolved config, shard
   table and model shas, whatever moved on the Hub meanwhile. It hands the tasks not yet in to an executor
   (`executors/`); each worker commits its own output to the PR: no data row passes through the driver.
3. A stage with a `reduce` then runs its partitions the same way, each reading its row groups of every shard.
4. `seal_run` checks the PR's files against the records (content hashes, footers' rows), sums the records into the
   card's counts and stats, builds the stage's artifacts, and merges the pull request: `main` moves in one step,
   and the tag is set on the merge commit. If `main` moved meanwhile, the run's files move to a PR on the new main
   first. A rerun after a seal that died between merge and tag finds the merged PR and only tags it.

`--shard-index i` runs just one shard (a job array's element) and leaves the sealing to a run without it.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import hf_pipeline
from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import InputPart
from hf_pipeline.io.hub import DatasetRef, token_free_argv
from hf_pipeline.io.sharding import DataFile, FileSlice, GroupRange, ShardSpec
from hf_pipeline.run import contract
from hf_pipeline.run.config import add_option_flags, build_config, config_to_dict, option_values
from hf_pipeline.run.executors.base import Executor
from hf_pipeline.run.plan import RunOptions, RunPlan, Task, TaskRecord
from hf_pipeline.stage import AlignedInput, ArtifactContext, Stage, merge_stats

# The Hub keeps < 10k entries per folder: each shard publishes at least one file under data/
MAX_SHARDS = 9_999
MANIFEST_FORMAT = 1


# what a run's manifest fixes: a later command of the same run takes these from it, not from its own options
PLANNED_OPTIONS = ("input", "output", "tag", "split", "max_rows", "num_shards", "rows_per_file", "chunk_rows")


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
            from hf_pipeline.io.hub import load_card

            meta = load_card(self.repo_id, self.tag).data.hf_pipeline
            rows_in, rows_out, drops = meta["rows_in"], meta["rows_out"], meta["counts"].get("drops", {})
        call = self.load_call(self.repo_id, self.tag, rows_out)
        return call if rows_out else f"{call}  # {self.why_empty(rows_in, drops)}"

    def published_summary(self, name: str) -> tuple[list[str], dict]:
        """The pipeline summary's lines for this entry (rows, statuses, the warnings its stats carry: sentences a
        stage's `summarize` adds), from its published card; and the card's metadata."""
        from hf_pipeline.io.hub import load_card

        card = load_card(self.repo_id, self.tag).data.hf_pipeline
        statuses = "; ".join(f"{kind}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
                             for kind, counts in card["counts"].items() if kind != "stats" and counts)
        lines = [f"{name:<16} {self.repo_id}@{self.tag}  ({card['rows_in']} -> {card['rows_out']}"
                 f"{'; ' + statuses if statuses else ''})"]
        return lines + [f"{'':<16} warning: {w}" for w in card["counts"].get("stats", {}).get("warnings", [])], card

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
    """The options' values (a run also needs its output: `DatasetRun.check`)."""
    if not 1 <= options.num_shards <= MAX_SHARDS:
        raise PipelineError(f"--num-shards must be in [1, {MAX_SHARDS}] (the Hub keeps fewer than 10,000 files per folder, "
                            f"and every shard publishes one), got {options.num_shards}.")
    if options.shard_index is not None and not 0 <= options.shard_index < options.num_shards:
        raise PipelineError(f"--shard-index must be in [0, {options.num_shards - 1}], got {options.shard_index}.")
    if options.chunk_rows < 1 or options.batch_size < 1 or options.rows_per_file < 1:
        raise PipelineError("--chunk-rows, --batch-size and --rows-per-file must be at least 1.")


def mapped_parts(stage: Stage, options: RunOptions, config: Any) -> list[InputPart]:
    if stage.inputs.parts is not None:
        return list(stage.inputs.parts(config, options))
    if not stage.inputs.needs_input:
        return []
    if not options.input:
        raise PipelineError(f"stage {stage.name} needs --input (org/name[@revision] or a local path).")
    return [InputPart(options.input, options.split)]


def aligned_inputs(stage: Stage, config: Any, options: RunOptions) -> list[AlignedInput]:
    aligned = stage.inputs.aligned(config, options)
    return [] if aligned is None else [aligned] if isinstance(aligned, AlignedInput) else list(aligned)


def check_columns(stage: Stage, part: InputPart, schema, path: str | None = None) -> None:
    """The mapped input has the stage's columns (in every data file): said now, before a model loads or a shard
    starts."""
    names = list(schema.names) if schema is not None else []
    missing = [c for c in stage.inputs.columns if c not in names]
    if missing:
        where = f" (file {path})" if path else ""
        raise PipelineError(
            f"input {part.ref}{where} lacks column '{missing[0]}' required by stage {stage.name} (it has: "
            f"{', '.join(names) or 'no columns'})."
        )


def command_key(stage: Stage, options: RunOptions, config: Any) -> str:
    """What the user asked for, before anything is pinned: stage, config and inputs as written, and the options that
    shape the run. A later command of the same run (a shard job, the seal, a rerun) has the same key however the
    inputs' branches moved meanwhile, and finds the run's PR by it."""
    refs = ([p.ref for p in mapped_parts(stage, options, config)] + list(stage.inputs.side(config))
            + [a.ref for a in aligned_inputs(stage, config, options)])
    prompts = contract.prompt_digests(stage.inputs.prompts(config))
    return contract.fingerprint(stage.name, stage.version, config, refs, "command", options.split, options.max_rows,
                                options.num_shards, options.tag, options.output, prompts or None)


def plan_run(stage: Stage, options: RunOptions, config: Any, argv: list[str] | None = None) -> RunPlan:
    """Pin every input and model, list and check the mapped inputs' files, cut shards, derive fingerprint and tag."""
    from hf_pipeline.io.datafiles import group_ranges, list_files
    from hf_pipeline.io.sharding import align_groups, plan_shards
    from hf_pipeline.optional import check_config

    check_options(stage, options)
    check_config(stage.name, config)  # optional packages the config needs, before any input is read
    key = command_key(stage, options, config)
    parts = mapped_parts(stage, options, config)
    aligned = aligned_inputs(stage, config, options)
    refs = [p.ref for p in parts] + list(stage.inputs.side(config)) + [a.ref for a in aligned]
    inputs = contract.pin_datasets(refs)
    files: list[DataFile] = []
    for k, part in enumerate(parts):
        part_files, schemas = list_files(inputs[part.ref], part.split, part.name, part=k)
        # every file's footer was read: a column missing from the 900th file is said now, not hours in
        for path, schema in _distinct_schemas(part_files, schemas):
            if stage.inputs.check is not None:
                stage.inputs.check(part, schema, config)
            elif stage.inputs.parts is None:
                check_columns(stage, part, schema, path if len(part_files) > 1 else None)
        files += part_files
    config, models = contract.pin_models(config)  # after the columns are checked: every worker loads these commits
    shards = plan_shards(files, options.num_shards, options.max_rows)
    aligned_files, aligned_groups = [], []
    for spec in aligned:
        spec_files, _ = list_files(inputs[spec.ref])
        ranges = group_ranges(inputs[spec.ref], spec_files, spec.file_column, spec.row_column)
        aligned_files.append(spec_files)
        aligned_groups.append(align_groups(shards, files, ranges))
    plan = RunPlan(stage, options, config, inputs, parts, files, shards, key=key, aligned=aligned,
                   aligned_files=aligned_files, aligned_groups=aligned_groups, models=models,
                   package_version=hf_pipeline.__version__, argv=token_free_argv(argv or sys.argv))
    if stage.inputs.resolve_config is not None:  # once, here: the config the fingerprint names and every worker gets
        plan.config = config = stage.inputs.resolve_config(config, plan)
    prompts = contract.prompt_digests(stage.inputs.prompts(config))
    plan.fingerprint = contract.fingerprint(
        stage.name, stage.version, config, [p.pinned for p in inputs.values()], options.split, options.max_rows,
        prompts or None, options.num_shards if stage.map.sharding_changes_output else None,
    )
    plan.tag = options.tag or contract.default_tag(stage.name, plan.fingerprint)
    plan.num_partitions = stage.reduce.partitions(config) if stage.reduce else 1
    return plan


def _distinct_schemas(files: list[DataFile], schemas: list) -> list[tuple[str, Any]]:
    """(first file, schema) of each distinct schema among an input's files, in file order."""
    seen: dict[Any, str] = {}
    for f, schema in zip(files, schemas):
        seen.setdefault(schema, f.path)
    return [(path, schema) for schema, path in seen.items()] or [("", None)]


# ---------------------------------------------------------------- the manifest: the plan, written once


def manifest_of(plan: RunPlan) -> dict[str, Any]:
    """The plan as the run's PR keeps it (JSON): what every later command of the run reads instead of planning."""
    aligned = []
    for spec, files, groups in zip(plan.aligned, plan.aligned_files, plan.aligned_groups):
        ranges: dict[tuple, int] = {}
        per_shard = [[ranges.setdefault(dataclasses.astuple(g), len(ranges)) for g in shard] for shard in groups]
        aligned.append({"input": asdict(spec), "files": [_file_row(f) for f in files], "ranges": list(ranges),
                        "shards": per_shard})
    return {
        "format": MANIFEST_FORMAT, "stage": plan.stage.name, "stage_version": plan.stage.version,
        "package_version": plan.package_version, "fingerprint": plan.fingerprint, "tag": plan.tag, "key": plan.key,
        "options": {k: getattr(plan.options, k) for k in PLANNED_OPTIONS},
        "inputs": {ref: p.card_dict() for ref, p in plan.inputs.items()},
        "models": plan.models, "config": config_to_dict(plan.config),
        "parts": [asdict(p) for p in plan.parts], "files": [_file_row(f) for f in plan.files],
        "shards": [[[s.file, s.start, s.stop] for s in shard.slices] for shard in plan.shards],
        "num_partitions": plan.num_partitions, "aligned": aligned, "command": " ".join(plan.argv),
    }


def _file_row(f: DataFile) -> list:
    return [f.path, f.rows, list(f.row_groups), f.part, f.size]


def _data_file(row: list) -> DataFile:
    path, rows, groups, part, size = row
    return DataFile(path, rows, tuple(groups), part, size)


def plan_from_manifest(stage: Stage, options: RunOptions, manifest: dict[str, Any], argv: list[str] | None = None) -> RunPlan:
    """The run's plan as its manifest fixed it (no input pinned, no footer read, no config resolved again); the
    options that do not shape the output (executor, batch size, work dir, shard index) are this command's."""
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("stage") != stage.name:
        raise PipelineError(f"the run's manifest is of format {manifest.get('format')} for stage {manifest.get('stage')}, "
                            f"not format {MANIFEST_FORMAT} for {stage.name}: close its pull request to start over.")
    options = dataclasses.replace(options, **manifest["options"])
    files = [_data_file(row) for row in manifest["files"]]
    shards = [ShardSpec(i, tuple(FileSlice(*s) for s in slices)) for i, slices in enumerate(manifest["shards"])]
    aligned, aligned_files, aligned_groups = [], [], []
    for entry in manifest["aligned"]:
        spec = entry["input"]
        aligned.append(AlignedInput(spec["ref"], spec["file_column"], spec["row_column"],
                                    tuple(spec["columns"]) if spec["columns"] is not None else None))
        aligned_files.append([_data_file(row) for row in entry["files"]])
        ranges = [GroupRange(*r) for r in entry["ranges"]]
        aligned_groups.append([[ranges[i] for i in shard] for shard in entry["shards"]])
    return RunPlan(
        stage, options, build_config(stage.config_class, manifest["config"]),
        {ref: DatasetRef(**d) for ref, d in manifest["inputs"].items()}, [InputPart(**p) for p in manifest["parts"]],
        files, shards, manifest["fingerprint"], manifest["tag"], manifest["key"], manifest["num_partitions"], aligned,
        aligned_files, aligned_groups, manifest["models"], manifest["package_version"], token_free_argv(argv or sys.argv),
    )


def check_version(plan: RunPlan) -> None:
    """A run is finished by the package version that started it: shards of two versions would be merged as one."""
    if plan.package_version != hf_pipeline.__version__ and not plan.options.allow_version_change:
        raise PipelineError(
            f"the run's pull request {plan.run.url} was opened by hf_pipeline {plan.package_version}, this is "
            f"{hf_pipeline.__version__}: finish it with {plan.package_version}, or pass --allow-version-change to finish it "
            "with this version (its shards so far stay as they are), or close that pull request to start over."
        )


# ---------------------------------------------------------------- the whole run


def run_records(plan: RunPlan) -> dict[str, TaskRecord]:
    """task name -> its record on the run's PR (the latest of this account's, should a task have been committed
    twice), for the tasks whose files in the PR are the ones their record names; a task whose files differ (two
    attempts mixed) is left out, so it is redone."""
    from hf_pipeline.run.hub_run import scratch_dir, shard_records, verify_files

    records = {}
    for record in shard_records(plan.run):
        if record.fingerprint != plan.fingerprint:
            continue
        expected = plan.options.num_shards if record.phase == "map" else plan.num_partitions
        if record.of != expected:
            what = "--num-shards" if record.phase == "map" else "partitions"
            raise PipelineError(
                f"the run's pull request {plan.run.url} holds tasks of {record.of} {what}, this run asks for {expected}: "
                f"rerun with the same {what}, or close that pull request to start over."
            )
        records[record.task] = record
    if not records:
        return {}
    problems, plan.strays = verify_files(plan.run, list(records.values()), ("data", scratch_dir(plan.fingerprint)))
    for task, why in sorted(problems.items()):
        print(f"{task} will be redone: its files in {plan.run.url} are not its record's ({why})", file=sys.stderr, flush=True)
        del records[task]
    plan.strays = [p for p in plan.strays if p.startswith("data/")]  # the scratch folder goes whole at the seal
    return records


# ---------------------------------------------------------------- the dataset run: the contract's steps


@dataclass
class DatasetOutcome:
    """What a dataset run's execution left: the tasks' records, and what the seal publishes."""

    records: dict[str, TaskRecord] = field(default_factory=dict)
    partial: bool = False  # one shard of a job array (`--shard-index`): the seal is another command's
    sealed: RunResult | None = None  # the run was merged already (another driver; a seal that died before its tag)
    result: RunResult | None = None  # the figures the card shows (summed records), before the seal's commit
    artifacts: dict[str, Path] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # the published data files


class DatasetRun:
    """A dataset stage's run (see the module docstring): planned once as the manifest of a pull request of the
    output repo, its tasks committed there by the workers, merged and tagged in one step."""

    options_class = RunOptions

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Every executor's options (`--num-workers`, ...), and the cost estimate."""
        from hf_pipeline.run.executors import executors

        for name, cls in executors().items():
            add_option_flags(parser, cls.Options, help_prefix=f"{name} executor: ")
        parser.add_argument(
            "--estimate", nargs="?", const="input", default=None, metavar="ROWS",
            help="(implies --dry-run) print the cost estimate (device-hours, memory, shards) from measured throughputs, "
            "for ROWS input rows (e.g. 1e9, 18M) or, without ROWS, for the input's row count",
        )
        parser.add_argument(
            "--estimate-from", default=None, metavar="REPO@TAG",
            help="with --estimate: scale the tokens and engine-seconds measured by a published run of this stage (its "
            "card's hf_pipeline.usage) instead of the built-in figures",
        )

    def argument_values(self, args: argparse.Namespace) -> dict[str, Any]:
        from hf_pipeline.run.executors import executors

        given: dict[str, Any] = {}
        for cls in executors().values():
            given.update(option_values(args, cls.Options))
        return {"executor_options": given} if given else {}

    def check_options(self, stage: Stage, options: RunOptions) -> RunOptions:
        """The options checked, the executor's typed: said when the command is read (every pipeline entry before the
        first runs)."""
        from hf_pipeline.run.executors import executor_options

        check_options(stage, options)
        return dataclasses.replace(options, executor_options=executor_options(options.executor, options.executor_options))

    def command(self, args: argparse.Namespace, stage: Stage, options: RunOptions, config: Any, argv: list[str],
                dry_run: bool) -> Any:
        """`run_stage.py STAGE ...`: the run, or with --estimate its cost."""
        from hf_pipeline.run.estimate import estimate_command

        if args.estimate is None:
            return contract.run(self, stage, options, config, argv, dry_run)

        def count_input() -> int:
            plan = plan_run(stage, options, config, argv)
            print_plan(plan)
            return plan.rows

        return estimate_command(stage, args.estimate, count_input, args.estimate_from)

    def check(self, stage: Stage, options: RunOptions, config: Any, writing: bool) -> None:
        from hf_pipeline.run.hub_run import check_write_access

        if not options.output:
            raise PipelineError(f"stage {stage.name} needs --output org/name (the dataset repo to publish to).")
        contract.card_template("dataset", stage.name, stage.card.template)  # said now, not after the work
        check_options(stage, options)
        if writing:
            check_write_access(options.output)  # before planning, calibration or a model load

    def plan(self, stage: Stage, options: RunOptions, config: Any, argv: list[str]) -> RunPlan:
        """The run's open PR, found by the command's key, gives the plan (its manifest); a merged PR of the command
        whose tag is missing (the seal died before it) gives its plan, to be tagged; else the run is planned here."""
        from hf_pipeline.io.hub import output_tags
        from hf_pipeline.run.hub_run import MergeNotTheRun, find_runs, merged_as, read_manifest, run_of

        runs = find_runs(options.output, stage.name, command_key(stage, options, config))
        for found in [r for r in runs if r.status in ("open", "draft")][:1] or [r for r in runs if r.status == "merged"][-1:]:
            manifest = read_manifest(options.output, found.num)
            plan = plan_from_manifest(stage, options, manifest, argv)
            plan.run = run_of(options.output, found.num, manifest, found.created_at)
            if found.status == "merged":
                if manifest["tag"] in output_tags(options.output):
                    break  # that run is done: a new plan says whether there is more to do
                try:
                    merged_as(plan.run)
                except MergeNotTheRun as e:  # main moved while it merged: the run starts over
                    print(f"{e}", file=sys.stderr, flush=True)
                    break
                plan.merged = True
            check_version(plan)
            return plan
        return plan_run(stage, options, config, argv)

    def published(self, plan: RunPlan) -> RunResult | None:
        if plan.run is not None:  # a run in progress, or merged and to be tagged
            return None
        existing = contract.published_commit(plan.options.output, plan.tag, plan.fingerprint)
        if not existing:
            return None
        print(f"nothing to do: {plan.options.output}@{plan.tag} (commit {existing[:12]}) already holds {plan.stage.name} "
              "for these inputs and this config.")
        return RunResult(plan.options.output, plan.tag, existing, 0, 0, {}, skipped=True)

    def print_plan(self, plan: RunPlan) -> None:
        print_plan(plan)

    def execute(self, plan: RunPlan) -> DatasetOutcome:
        """Open the run (unless a command before opened it), run the tasks not yet in (one shard with
        `--shard-index`), then the reduce. Another driver sealing the same run meanwhile ends this one well."""
        from hf_pipeline.run.hub_run import pr_status

        if plan.merged:
            return DatasetOutcome(sealed=merged_run_result(plan))
        opened = plan.run is None
        if opened:
            self._open(plan)
        try:
            return execute_tasks(plan, opened)
        except PipelineError:
            if pr_status(plan.run) != "merged":
                raise
            print(f"another driver sealed the run {plan.run.url} meanwhile.", flush=True)
            return DatasetOutcome(sealed=merged_run_result(plan))

    @staticmethod
    def _open(plan: RunPlan) -> None:
        """The run's pull request, opened with the plan as its manifest; another driver's, opened first, wins: its
        manifest becomes this plan (in place: the later steps hold this object)."""
        from hf_pipeline.run.hub_run import open_run

        opts = plan.options
        description = (f"`hf_pipeline` run of stage `{plan.stage.name}` (fingerprint `{plan.fingerprint}`, tag "
                       f"`{plan.tag}`): {plan.rows} input rows in {opts.num_shards} shard(s). Workers commit their shards "
                       "here; the run merges when every shard is in. The plan is in this PR's manifest.\n\nCommand: `"
                       + " ".join(plan.argv) + "`")
        run, manifest, mine = open_run(opts.output, plan.stage.name, plan.key, manifest_of(plan), description, opts.private)
        if not mine:
            adopted = plan_from_manifest(plan.stage, opts, manifest, plan.argv)
            for f in dataclasses.fields(plan):
                setattr(plan, f.name, getattr(adopted, f.name))
        plan.run = run

    def card(self, plan: RunPlan, outcome: DatasetOutcome, seconds: float) -> str | None:
        """The records summed (checked against the footers first), the stage's artifacts built, the card rendered."""
        if outcome.partial or outcome.sealed is not None:
            return None
        if outcome.result is None:
            summarize_run(plan, outcome)
        outcome.result.pull_request = plan.run.url
        return render_card(plan, outcome.result, examples(plan, outcome.files), seconds, sorted(outcome.artifacts))

    def publish(self, plan: RunPlan, outcome: DatasetOutcome, card: str | None) -> RunResult:
        """The seal: merge and tag (moving the run onto main's head first if main moved)."""
        from hf_pipeline.run.hub_run import MainMoved, pr_status, rebase_run, seal

        if outcome.partial:
            shard = plan.options.shard_index
            print(f"shard {shard} of {plan.options.num_shards} is in {plan.run.url}; the run is sealed by the same command "
                  "without --shard-index once every shard is in.")
            return RunResult(plan.options.output, plan.tag, "", plan.shards[shard].rows, 0, {}, pull_request=plan.run.url)
        if outcome.sealed is not None:
            return outcome.sealed
        result, message = outcome.result, f"{plan.stage.name}: {outcome.result.rows_out} rows from {outcome.result.rows_in} ({plan.tag})"
        for _ in range(3):  # main may move again while the run moves onto it
            try:
                result.commit = seal(plan.run, card, outcome.artifacts, plan.fingerprint, plan.tag, message, plan.strays)
                break
            except MainMoved:
                plan.run, _ = rebase_run(plan.run, plan.stage.name, plan.key, manifest_of(plan), list(outcome.records.values()),
                                         f"`hf_pipeline` run of stage `{plan.stage.name}` (fingerprint `{plan.fingerprint}`).")
                if missing_tasks(plan, run_records(plan)):
                    raise PipelineError(f"the run's files did not all reach {plan.run.url}; rerun the same command.") from None
                card = self.card(plan, outcome, 0.0)
            except PipelineError:
                # merged, but a later step failed (the tag) or another driver merged it: the merge is checked and
                # tagged again, once; anything else is the run's error
                if pr_status(plan.run) != "merged":
                    raise
                print(f"the run {plan.run.url} is merged: finishing its seal.", flush=True)
                return merged_run_result(plan)
        else:
            raise PipelineError(f"main of {plan.options.output} kept moving while the run was sealed; rerun the same command.")
        if not plan.options.keep_work_dir:
            shutil.rmtree(plan.work_dir, ignore_errors=True)
        return result

    def summary(self, plan: RunPlan, result: RunResult, seconds: float) -> None:
        if result.commit:
            print_run_summary(plan, result, seconds)


DATASET_RUN = DatasetRun()


def run_stage(stage: Stage, options: RunOptions, config: Any, argv: list[str] | None = None,
              dry_run: bool = False) -> RunResult | None:
    """A dataset stage's run (the contract's sequence, `contract.run`)."""
    return contract.run(DATASET_RUN, stage, options, config, argv, dry_run)


def merged_run_result(plan: RunPlan) -> RunResult:
    """The result of a run whose PR is merged: its merge commit, checked to hold exactly the run's files, tagged if it
    is not yet, with the figures of its card."""
    from hf_pipeline.io.hub import read_card_metadata
    from hf_pipeline.run.hub_run import merged_as, tag_commit

    sha = merged_as(plan.run)
    tag_commit(plan.run.repo_id, plan.tag, sha, f"{plan.stage.name} ({plan.tag})")
    meta = read_card_metadata(plan.run.repo_id, sha).get("hf_pipeline", {})
    print(f"the run {plan.run.url} is merged as {sha[:12]}, tagged {plan.tag}.")
    return RunResult(plan.run.repo_id, plan.tag, sha, meta.get("rows_in", 0), meta.get("rows_out", 0),
                     meta.get("counts", {}), pull_request=plan.run.url, usage=meta.get("usage", {}))


def execute_tasks(plan: RunPlan, opened: bool) -> DatasetOutcome:
    """The tasks not yet in (one shard with `--shard-index`), then the reduce."""
    from hf_pipeline.run.executors import get_executor

    opts = plan.options
    executor = get_executor(opts.executor, opts.executor_options)
    done = {} if opened else run_records(plan)  # a PR opened just now holds no record yet
    shards = [opts.shard_index] if opts.shard_index is not None else range(opts.num_shards)
    tasks = [plan.map_task(i) for i in shards]
    pending = [t for t in tasks if t.name not in done]
    print(f"run {'opened' if opened else 'resumed'}: {plan.run.url} ({len(tasks) - len(pending)} of {len(tasks)} shard(s) "
          "already in)", flush=True)
    plan.progress = progress(done)
    executor.run(plan, pending)
    if opts.shard_index is not None:
        return DatasetOutcome(partial=True)
    done = run_records(plan)
    if plan.stage.reduce is not None:
        run_reduce(plan, executor, done)
        done = run_records(plan)
    return DatasetOutcome(done)


def run_reduce(plan: RunPlan, executor: Executor, done: dict[str, TaskRecord]) -> None:
    """The stage's reduce, one task per partition, each reading its row groups of every shard's scratch file."""
    missing = missing_tasks(plan, done, phases=("map",))
    if missing:
        raise PipelineError(f"{len(missing)} shard(s) of the run are not in its pull request {plan.run.url} (e.g. "
                            f"{missing[0]}); rerun the same command to finish them.")
    maps = [done[Task("map", i, plan.options.num_shards).name] for i in range(plan.options.num_shards)]
    plan.run_stats = {"rows_in": sum(r.rows_in for r in maps), "rows_out": sum(r.rows_out for r in maps)}
    for r in maps:
        plan.run_stats = merge_stats(plan.run_stats, r.stats)
    inputs: dict[int, list[tuple[str, tuple[int, ...]]]] = {p: [] for p in range(plan.num_partitions)}
    for r in maps:
        (path,) = r.files
        for p, groups in (r.partitions or {}).items():
            inputs[int(p)].append((path, tuple(groups)))
    tasks = [Task("reduce", p, plan.num_partitions, tuple(inputs[p])) for p in range(plan.num_partitions)]
    plan.progress = progress(done)
    executor.run(plan, [t for t in tasks if t.name not in done])


def progress(done: dict[str, TaskRecord]) -> dict[str, tuple[int, int]]:
    """phase -> (tasks in, their input rows): where the shard commits' progress titles start counting."""
    out: dict[str, tuple[int, int]] = {}
    for r in done.values():
        n, rows = out.get(r.phase, (0, 0))
        out[r.phase] = (n + 1, rows + r.rows_in)
    return out


def missing_tasks(plan: RunPlan, done: dict[str, TaskRecord], phases: tuple[str, ...] = ("map", "reduce")) -> list[str]:
    names = [Task("map", i, plan.options.num_shards).name for i in range(plan.options.num_shards)] if "map" in phases else []
    if plan.stage.reduce is not None and "reduce" in phases:
        names += [Task("reduce", p, plan.num_partitions).name for p in range(plan.num_partitions)]
    return [n for n in names if n not in done]


def summarize_run(plan: RunPlan, outcome: DatasetOutcome) -> None:
    """The records checked (every task in, the footers holding the rows they recorded) and summed into the outcome's
    result; the stage's artifacts built from the output."""
    from hf_pipeline.run.hub_run import count_rows

    stage, opts = plan.stage, plan.options
    missing = missing_tasks(plan, outcome.records)
    if missing:
        raise PipelineError(f"{len(missing)} task(s) of the run are not in its pull request {plan.run.url} (e.g. {missing[0]}); "
                            "rerun the same command to finish them.")
    records = list(outcome.records.values())
    data_phase = "reduce" if stage.reduce else "map"  # whose outputs are the published rows
    data = [r for r in records if r.phase == data_phase]
    wrong = count_rows(plan.run, data)
    if wrong:
        task, why = min(wrong.items())
        raise PipelineError(f"{len(wrong)} task(s) of {plan.run.url} published other rows than they recorded, e.g. {task}: "
                            f"{why}. Redo it: `--shard-index {int(task.split('-')[1])}` (or close the pull request).")
    maps = [r for r in records if r.phase == "map"]
    rows_in, rows_out = sum(r.rows_in for r in maps), sum(r.rows_out for r in data)
    counts: dict[str, Any] = {"drops": {}}
    stats: dict[str, Any] = {}
    for r in records:
        # statuses are counted on the published rows (a reduce stage's partitions); drops come from every step
        counts = merge_stats(counts, {k: v for k, v in r.counts.items() if k == "drops" or r.phase == data_phase})
        stats = merge_stats(stats, r.stats)
    if stage.card.summarize is not None:
        stats = stage.card.summarize(stats, plan.config)
    if stats:
        counts["stats"] = stats
    outcome.files = sorted(f for r in data for f in r.files if f.startswith("data/"))
    out_dir = plan.work_dir / "seal"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    if stage.card.artifacts is not None:
        actx = ArtifactContext(plan.config, stats, counts, rows_out, output_reader(plan, outcome.files), plan.download)
        outcome.artifacts = {k: Path(v) for k, v in stage.card.artifacts(actx, out_dir).items()}
    outcome.result = RunResult(opts.output, plan.tag, "", rows_in, rows_out, counts, usage=run_usage(records, rows_in))


def run_usage(records: list[TaskRecord], rows_in: int) -> dict[str, Any]:
    """What the run's engines spent, summed over its shards: `prompt_tokens`, `cached_prompt_tokens`,
    `generated_tokens`, `seconds` (engine time, summed over workers: device-seconds with one device per worker),
    and derived figures per 1,000 input rows; `engines` gives each engine's backend and settings."""
    tokens: dict[str, float] = {}
    engines: dict[str, Any] = {}
    for r in records:
        for key, value in (r.usage or {}).get("tokens", {}).items():
            tokens[key] = tokens.get(key, 0) + value
        engines.update((r.usage or {}).get("engines", {}))
    if not engines:
        return {}
    seconds = tokens.get("seconds", 0.0)
    usage: dict[str, Any] = {k: int(v) for k, v in tokens.items() if k != "seconds"}
    usage["seconds"] = round(seconds, 2)
    usage["worker_seconds"] = round(sum(r.seconds for r in records if r.phase == "map"), 2)
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
        from hf_pipeline.run.hub_run import read_row_groups

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
        stage.inputs.models(plan.config), plan.config, asdict(plan.options), plan.argv, result.rows_in, result.rows_out,
        counts=result.counts, shards=plan.options.num_shards, pull_request=result.pull_request,
        **({"usage": result.usage} if result.usage else {}),
    )
    card_data = DatasetCardData(
        pretty_name=f"{result.repo_id.split('/')[-1]} ({stage.name})",
        tags=["fineinstructions", "hf_pipeline", stage.name],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
        + [{"config_name": n, "data_files": [{"split": "train", "path": p}]} for n, p in stage.card.extra_configs(plan.config).items()],
        hf_pipeline=lineage,
    )
    variables = dict(
        repo_id=result.repo_id, tag=plan.tag, lineage=lineage, inputs=list(plan.inputs.values()), models=lineage["models"],
        counts=result.counts, rows_in=result.rows_in, rows_out=result.rows_out, seconds=round(seconds, 1),
        examples=rows, load_hint=result.load_hint(), artifacts=list(artifacts), usage=result.usage,
    )
    template = contract.card_template("dataset", stage.name, stage.card.template)
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
    if plan.stage.card.report is not None and result.counts.get("stats"):
        lines += plan.stage.card.report(result.counts["stats"], plan.config)
    if result.usage:
        u = result.usage
        lines.append(("tokens", f"{u.get('prompt_tokens', 0):,} prompt ({u.get('cached_prompt_tokens', 0):,} from the prefix "
                                f"cache), {u.get('generated_tokens', 0):,} generated; {u.get('tokens_per_second', 0):,} tok/s; "
                                f"{u.get('device_seconds_per_1k_rows', 0)} engine-s per 1k rows"))
    lines += [("output", f"{result.repo_id}@{result.tag} (commit {result.commit[:12]}, merged from {result.pull_request})"),
              ("load with", result.load_hint())]
    contract.print_summary(plan.stage.name, seconds, lines)
