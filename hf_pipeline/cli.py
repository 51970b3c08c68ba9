"""`python scripts/run_stage.py STAGE [options]`: the command line over the runner.

Every stage gets the same run options (--input/--output/--tag/sharding/...), `--config file.yaml` and
`--set key=value` for its config dataclass. Mistakes end in one sentence naming the problem and exit 2;
a traceback only with --debug.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Any

from hf_pipeline.run.config import deep_merge, parse_overrides, read_yaml
from hf_pipeline.errors import PipelineError
from hf_pipeline.run.specs import build_spec, is_training, run_option_names, run_spec

# flag -> (run option key, dotted for executor options; help)
RUN_FLAGS = {
    "input": ("input", "input dataset: org/name, org/name@revision, or a local path"),
    "output": ("output", "output dataset repo (org/name) to publish to"),
    "tag": ("tag", "tag for the published revision (default: <stage>-<config hash>)"),
    "split": ("split", "split of the input to read"),
    "max_rows": ("max_rows", "take only the first N rows of the input (a sample)"),
    "num_shards": ("num_shards", "cut the input's files into this many shards (a shard is a set of files)"),
    "shard_index": ("shard_index", "run only this shard and commit it to the run's pull request (a job array); "
                    "the same command without it finishes and seals the run"),
    "batch_size": ("batch_size", "rows per batch given to the stage's function"),
    "chunk_rows": ("chunk_rows", "rows per checkpoint chunk: the most work a crash can lose"),
    "rows_per_file": ("rows_per_file", "most rows per published parquet file"),
    "private": ("private", "create the output repo as private"),
    "work_dir": ("work_dir", "where a worker keeps its checkpoint chunks (default: $HF_PIPELINE_CACHE/runs)"),
    "keep_work_dir": ("keep_work_dir", "keep checkpoint chunks after the shard is on the Hub"),
    "allow_version_change": ("allow_version_change", "finish a run whose pull request another hf_pipeline version "
                             "opened (its shards so far stay as they are)"),
    "executor": ("executor", "'local' (this process) or 'ray' (Ray actors, one task at a time each)"),
    "ray_address": ("ray.address", "Ray: address of an existing cluster ('auto', 'ray://host:10001'); default: a local instance"),
    "num_workers": ("ray.num_workers", "Ray: number of worker actors (default: as many as the cluster fits, at most one per task)"),
    "cpus_per_worker": ("ray.cpus_per_worker", "Ray: CPUs reserved per worker"),
    "gpus_per_worker": ("ray.gpus_per_worker", "Ray: GPUs reserved per worker (fractions share a GPU)"),
    "max_task_retries": ("ray.max_task_retries", "Ray: retries of a task whose worker died or whose map raised"),
    "worker_cache_dir": ("ray.worker_cache_dir", "Ray: give each worker its own work dir and caches under DIR/worker-N"),
}
# boolean config keys that are also a flag (--strict-calibration = --set strict_calibration=true), on the stages
# whose config has the key; the flag's help is the key's
CONFIG_FLAGS = ("strict_calibration",)
FLAG_TYPES = {"max_rows": int, "num_shards": int, "shard_index": int, "batch_size": int, "chunk_rows": int, "rows_per_file": int,
              "num_workers": int, "max_task_retries": int, "cpus_per_worker": float, "gpus_per_worker": float}


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _describe_fields(cls: type, prefix: str = "", instance: Any = None) -> list[str]:
    """Every config key with its type (a Literal's choices), default and help; nested dataclasses as dotted keys,
    with the defaults the enclosing config gives them (e.g. instantiate's `llm.model`)."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if instance is not None:
            default = getattr(instance, f.name)
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None
            )
        doc = f.metadata.get("help", "")
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"  {prefix + f.name}.*{'':<22} {doc}")
            lines += _describe_fields(hints[f.name], prefix=f"{prefix}{f.name}.", instance=default)
            continue
        lines.append(f"  {prefix + f.name:<28} {_type_name(hints[f.name]):<14} default: {default!r}")
        if doc:
            lines.append(f"      {doc}")
    return lines


def run_flags(stage) -> dict[str, tuple[str, str]]:
    """The run options a stage's command line takes: all of them, or for a training stage those that apply."""
    if not is_training(stage):
        return RUN_FLAGS
    flags = {name: RUN_FLAGS[name] for name in run_option_names(stage)}
    flags.update(input=("input", "training data: org/name, org/name@revision, or a local path"),
                 output=("output", "output model repo (org/name) to publish to"),
                 work_dir=("work_dir", "where checkpoints live until published (default: $HF_PIPELINE_CACHE/runs); "
                           "a rerun resumes from the last one"))
    return flags


def _add_stage_parser(sub, stage) -> None:
    epilog = "\n".join(
        [f"config keys of {stage.name} (set in --config YAML or with --set key=value):", *_describe_fields(stage.config_class)]
    )
    p = sub.add_parser(
        stage.name,
        help=stage.description,
        description=stage.description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from hf_pipeline.run.runner import RunOptions

    defaults = RunOptions()
    for name, (key, doc) in run_flags(stage).items():
        flag = "--" + name.replace("_", "-")
        default = defaults
        for part in key.split("."):
            default = getattr(default, part)
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", default=None, help=f"{doc} (default: {default})")
        else:
            p.add_argument(flag, type=FLAG_TYPES.get(name, str), default=None, help=f"{doc} (default: {default})")
    config_fields = {f.name: f for f in dataclasses.fields(stage.config_class)}
    for key in CONFIG_FLAGS:
        if key in config_fields:
            p.add_argument("--" + key.replace("_", "-"), action="store_true", default=None,
                           help=f"config key {key}: {config_fields[key].metadata.get('help', '')} (default: {config_fields[key].default})")
    p.add_argument("--config", help="YAML file with run options and config keys (default: none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (input rows, shards, output, tag); change nothing")
    if not is_training(stage):
        p.add_argument(
            "--estimate", nargs="?", const="input", default=None, metavar="ROWS",
            help="(implies --dry-run) print the cost estimate (device-hours, memory, shards) from measured throughputs, "
            "for ROWS input rows (e.g. 1e9, 18M) or, without ROWS, for the input's row count",
        )
        p.add_argument(
            "--estimate-from", default=None, metavar="REPO@TAG",
            help="with --estimate: scale the tokens and engine-seconds measured by a published run of this stage (its "
            "card's hf_pipeline.methods.usage) instead of the built-in figures",
        )
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    from hf_pipeline.stages import all_stages

    stages = all_stages()
    listing = "\n".join(f"  {s.name:<18} {s.description}" for s in stages.values())
    parser = argparse.ArgumentParser(
        prog="run_stage.py",
        description="Run one FineInstructions pipeline stage over a Hub dataset and publish a versioned result.",
        epilog=f"stages:\n{listing}\n  {'pipeline':<18} every stage in order from one YAML config\n"
        f"  {'hub':<18} start/stop/status the local Hub endpoint for offline runs\n\n"
        "Run `run_stage.py STAGE --help` for a stage's options and config keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="STAGE")
    for stage in stages.values():
        _add_stage_parser(sub, stage)
    pipe = sub.add_parser("pipeline", help="run every stage in order from one YAML config, each publishing its own repo")
    pipe.add_argument("--config", required=True, help="pipeline YAML: publish, sample_size, sample_stage, stages")
    pipe.add_argument("--sample-size", type=int, default=None, help="rows taken by the sample stage (default: the config's)")
    pipe.add_argument("--debug", action="store_true", help="show tracebacks")
    hub = sub.add_parser("hub", help="start/stop/status the local Hub endpoint (olah + write endpoints)")
    hub.add_argument("action", choices=["start", "stop", "status", "env", "push"])
    hub.add_argument("path", nargs="?", help="push: a local dataset file or folder (jsonl/json/parquet/csv)")
    hub.add_argument("repo_id", nargs="?", help="push: the dataset repo to publish it to (org/name)")
    hub.add_argument("--tag", default=None, help="push: tag for the published revision (default: v-<content hash>)")
    hub.add_argument("--root", default=".hub", help="where the local Hub keeps its repos (default: .hub)")
    hub.add_argument("--port", type=int, default=None, help="start: port to listen on (default: a free one)")
    hub.add_argument("--host", default="127.0.0.1",
                     help="start: address to listen on (default 127.0.0.1; any other makes it reachable from the network)")
    hub.add_argument("--allowed-host", action="append", default=[],
                     help="start: another name clients reach the Hub by (its Host header); repeatable")
    hub.add_argument("--max-commit-bytes", type=int, default=None, help="start: largest commit payload (default 64 MiB)")
    hub.add_argument("--max-lfs-bytes", type=int, default=None, help="start: largest LFS file (default 50 GiB)")
    hub.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    from hf_pipeline.stages import all_stages

    stage = all_stages()[args.command]
    values: dict[str, Any] = read_yaml(args.config) if args.config else {}
    values = deep_merge(values, parse_overrides(args.set))
    for name, (key, _) in run_flags(stage).items():
        flag_value = getattr(args, name)
        if flag_value is not None:
            values = deep_merge(values, _nested(key, flag_value))
    for key in CONFIG_FLAGS:
        if getattr(args, key, None):
            values = deep_merge(values, {key: True})
    spec = build_spec(stage.name, values, argv=["run_stage.py", *argv], dry_run=args.dry_run)
    if not is_training(stage) and args.estimate is not None:
        from hf_pipeline.run.estimate import estimate_command

        return estimate_command(stage, spec.options, spec.config, args.estimate, argv=spec.argv, estimate_from=args.estimate_from)
    result = run_spec(spec)
    return 0 if result is not None or args.dry_run else 1


def _nested(key: str, value: Any) -> dict[str, Any]:
    """"ray.address", v -> {"ray": {"address": v}}."""
    *parents, leaf = key.split(".")
    node: dict[str, Any] = {leaf: value}
    for p in reversed(parents):
        node = {p: node}
    return node


def hub_command(args: argparse.Namespace) -> int:
    from hf_pipeline.hub import local
    from hf_pipeline.run.optional import require

    if args.action == "start":
        require("olah", "hub", "the local Hub")

    root = Path(args.root).resolve()
    if args.action == "start":
        url = local.start(root, host=args.host, port=args.port, allowed_hosts=tuple(args.allowed_host),
                          max_commit_bytes=args.max_commit_bytes, max_lfs_bytes=args.max_lfs_bytes)
        print(f"local Hub at {url} (repos in {root}; writes need the token `hub env` prints)")
        print(f"point the clients at it: eval \"$(python scripts/run_stage.py hub env --root {args.root})\"")
    elif args.action == "stop":
        print("stopped" if local.stop(root) else f"no local Hub running for {root}")
    elif args.action == "env":
        state = local.status(root)
        if not state:
            raise PipelineError(f"no local Hub is running for {root}; start it with `run_stage.py hub start`.")
        # The default account's token: HF_TOKEN is what the clients send (a token is letters and digits: no quoting).
        print(f"export HF_ENDPOINT={state['url']} HF_HUB_DISABLE_XET=1 HF_TOKEN={local.token(root)}")
    elif args.action == "push":
        from hf_pipeline.io.hub import push_local_dataset

        if not args.path or not args.repo_id:
            raise PipelineError("hub push needs a local dataset PATH and a REPO_ID.")
        repo, tag, commit = push_local_dataset(args.path, args.repo_id, tag=args.tag)
        print(f"published {args.path} to {repo}@{tag} (commit {commit[:12]})")
    else:
        state = local.status(root)
        if not state:
            print(f"no local Hub running for {root}")
            return 1
        print(f"local Hub running at {state['url']} (pid {state['pid']}, repos in {root})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:
        parser.print_help()
        return 2
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        if args.command == "hub":
            return hub_command(args)
        if args.command == "pipeline":
            from hf_pipeline.run.pipeline import run_pipeline

            run_pipeline(args.config, sample_size=args.sample_size)
            return 0
        return run_command(args, argv)
    except PipelineError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; rerun the same command to resume.", file=sys.stderr)
        return 130
    except Exception as e:  # anything unexpected: one line, the traceback behind --debug
        if debug:
            raise
        print(f"error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
