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

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.config import add_option_flags, deep_merge, option_values, parse_overrides, read_yaml
from hf_pipeline.cli.specs import build_spec, run_kind

# boolean config keys that are also a flag (--strict-calibration = --set strict_calibration=true), on the stages
# whose config has the key; the flag's help is the key's
CONFIG_FLAGS = ("strict_calibration",)


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
    kind = run_kind(stage)
    add_option_flags(p, kind.options_class)
    kind.add_arguments(p)
    config_fields = {f.name: f for f in dataclasses.fields(stage.config_class)}
    for key in CONFIG_FLAGS:
        if key in config_fields:
            p.add_argument("--" + key.replace("_", "-"), action="store_true", default=None,
                           help=f"config key {key}: {config_fields[key].metadata.get('help', '')} (default: {config_fields[key].default})")
    p.add_argument("--config", help="YAML file with run options and config keys (default: none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config key (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the plan (input rows, shards, output, tag); change nothing")
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
    kind = run_kind(stage)
    values: dict[str, Any] = read_yaml(args.config) if args.config else {}
    values = deep_merge(values, parse_overrides(args.set))
    values = deep_merge(values, option_values(args, kind.options_class))
    values = deep_merge(values, kind.argument_values(args))
    for key in CONFIG_FLAGS:
        if getattr(args, key, None):
            values = deep_merge(values, {key: True})
    spec = build_spec(stage.name, values, argv=["run_stage.py", *argv], dry_run=args.dry_run)
    result = kind.command(args, stage, spec.options, spec.config, spec.argv, spec.dry_run)
    return 0 if result is not None or args.dry_run else 1


def hub_command(args: argparse.Namespace) -> int:
    from hf_pipeline.hub import local
    from hf_pipeline.optional import require

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
            from hf_pipeline.cli.pipeline import run_pipeline

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

