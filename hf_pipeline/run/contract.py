"""The run contract every kind of stage keeps, dataset stages and training stages alike (and in one place):

- every input is pinned before anything runs: a dataset to its commit sha (or a local folder to a content hash),
  a model to its commit sha, a local model folder to a content hash, a packaged model to its package version;
- the fingerprint hashes the stage, its version, its config, prompt files and the pinned inputs; the default tag
  is `<stage>-<fingerprint>`;
- a rerun that finds its tag published (with the same fingerprint in the card) is a no-op; a tag holding another
  run is an error;
- the card records the lineage (inputs as asked and as pinned, models, package, config, command, rows) in its
  YAML under `hf_pipeline:` and in the shared `_lineage.md` section;
- the end of a run prints one screen of summary;
- and every run, whatever its kind, is the one sequence `run` below: check -> plan -> published? -> dry run ->
  execute -> card -> publish -> summary. A kind of run (`RunKind`: a dataset run in `runner.py`, a model run in
  `training.py`) implements the steps; nothing else branches on the kind.

Card templates live at the repository root (`dataset_cards/`, `model_cards/`), where people who write cards look
for them, and ship inside the wheel as package data (`io/package_data.py`), so a plain `pip install` publishes the
same cards as a checkout.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from hf_pipeline import __version__
from hf_pipeline.errors import PipelineError
from hf_pipeline.io.hub import DatasetRef, output_tags, read_card_metadata, resolve_dataset, split_ref
from hf_pipeline.io.package_data import package_file
from hf_pipeline.run.config import config_hash, config_to_dict

TINY_RANDOM_PREFIX = "tiny-random:"  # a small random causal LM built from a config (tests, CPU demos)
PACKAGE = f"fineinstructions-pipeline {__version__}"


# ---------------------------------------------------------------- pinning


def pin_datasets(refs: list[str]) -> dict[str, DatasetRef]:
    """ref as written -> pinned, in order; raises PipelineError naming a ref that cannot be resolved."""
    return {ref: resolve_dataset(ref) for ref in dict.fromkeys(refs)}


@dataclass(frozen=True)
class ModelPin:
    """A model pinned to exactly what was loaded: a Hub repo at a commit, a local folder by content hash,
    a packaged model by package version, or a tiny random model by name (its weights follow from the seed)."""

    ref: str  # what the user wrote
    load: str  # what from_pretrained loads
    revision: str | None  # the resolved commit for a Hub repo, else None
    pinned: str  # recorded in the fingerprint and the card

    @property
    def hub_id(self) -> str | None:
        return self.load if self.revision else None


def pin_model(ref: str) -> ModelPin:
    """Resolve `repo[@revision]`, a local folder, a packaged embedder name or `tiny-random:NAME` to a ModelPin.
    Raises PipelineError naming the model when it cannot be found."""
    from hf_pipeline.methods.embedder import packaged_model_path

    if ref.startswith(TINY_RANDOM_PREFIX):
        return ModelPin(ref, ref, None, ref)
    packaged = packaged_model_path(ref)
    if packaged is not None:
        return ModelPin(ref, str(packaged), None, f"{ref}=={importlib.metadata.version(ref)}")
    local = Path(ref).expanduser()
    if local.is_dir():
        digest = hashlib.sha256()
        for f in sorted(p for p in local.rglob("*") if p.is_file()):
            digest.update(f.relative_to(local).as_posix().encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    digest.update(block)
        return ModelPin(ref, str(local.resolve()), None, f"{local.resolve()}#{digest.hexdigest()[:16]}")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    repo, revision = split_ref(ref)
    try:
        sha = HfApi().model_info(repo, revision=revision).sha
    except RevisionNotFoundError:
        raise PipelineError(f"model {repo} has no revision '{revision}'.") from None
    except (RepositoryNotFoundError, HFValidationError):
        raise PipelineError(f"model '{ref}' is neither a local folder nor a model repo on the Hub.") from None
    return ModelPin(ref, repo, sha, f"{repo}@{sha}")


def _hub_model_pin(ref: str) -> ModelPin | None:
    """The pin of `ref` when it names a model on the Hub (repo or repo@revision); None for a local path or file, a
    packaged model (`packaged:NAME`, a packaged embedder) or a tiny random model, which are pinned as they are."""
    if ":" in ref.split("/", 1)[0] or Path(ref).expanduser().exists():  # pin_model knows no packaged LLM or file
        return None
    pin = pin_model(ref)
    return pin if pin.revision else None


def pin_models(config: Any, prefix: str = "") -> tuple[Any, dict[str, str]]:
    """(config with every Hub model it names pinned to its commit sha, {config key: repo@sha}). Done once at plan time:
    every worker then loads that commit, however the model's branch moves during the run, and the sha is part of
    the fingerprint and the card. Models are named by an LLM config's `model` (`repo[@revision]`; a served model,
    backend openai, is the server's) or by a `model` + `model_revision` pair (the embedders)."""
    import dataclasses

    from hf_pipeline.llm.config import LLMConfig

    if not dataclasses.is_dataclass(config):
        return config, {}
    changes: dict[str, Any] = {}
    pins: dict[str, str] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            pinned, inner = pin_models(value, f"{prefix}{f.name}.")
            if inner:
                changes[f.name] = pinned
                pins.update(inner)
    names = {f.name for f in dataclasses.fields(config)}
    model = getattr(config, "model", None)
    if isinstance(config, LLMConfig) and config.backend != "openai" and isinstance(model, str):
        pin = _hub_model_pin(model)
        if pin is not None:
            changes["model"] = f"{pin.load}@{pin.revision}"
            pins[f"{prefix}model"] = pin.pinned
    elif {"model", "model_revision"} <= names and isinstance(model, str):
        revision = getattr(config, "model_revision")
        pin = _hub_model_pin(f"{model}@{revision}" if revision else model)
        if pin is not None:
            changes["model_revision"] = pin.revision
            pins[f"{prefix}model"] = pin.pinned
    return (dataclasses.replace(config, **changes) if changes else config), pins


# ---------------------------------------------------------------- fingerprint, tag, published check


def prompt_digests(paths: list[Path]) -> dict[str, str]:
    """{file name: sha256 of its content} of a stage's prompt files. Keyed by name, not path, so the same
    prompt gives the same fingerprint in any checkout or install."""
    digests = {}
    for path in paths:
        try:
            digests[Path(path).name] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as e:
            raise PipelineError(f"cannot read the prompt file {path}: {e}") from e
    return digests


def fingerprint(name: str, version: int, config: Any, pinned: list[str], *extra: Any) -> str:
    """The run's identity: stage, version, config and pinned inputs, plus whatever else changes its output (each
    extra part only when set, so tags of runs without it stay valid)."""
    return config_hash(name, version, config_to_dict(config), pinned, *[e for e in extra if e is not None])


def default_tag(name: str, fp: str) -> str:
    return f"{name}-{fp}"


def published_commit(repo_id: str, tag: str, fp: str, repo_type: str = "dataset") -> str | None:
    """Commit sha when `repo_id` already holds this run under `tag`; None when the tag is free; an error when the
    tag holds another run."""
    tags = output_tags(repo_id, repo_type=repo_type)
    if tag not in tags:
        return None
    meta = read_card_metadata(repo_id, tags[tag], repo_type=repo_type).get("hf_pipeline", {})
    if meta.get("fingerprint") != fp:
        raise PipelineError(
            f"tag '{tag}' of {repo_id} already holds a different run "
            f"(fingerprint {meta.get('fingerprint')}, this run {fp}); choose another --tag."
        )
    return tags[tag]


# ---------------------------------------------------------------- cards


def card_template(kind: str, name: str, override: str | None = None) -> str:
    """The text of a card template: `override` (a file path) or the package's `<kind>_cards/<name>.md`."""
    if override:
        path = Path(override)
        if not path.is_file():
            raise PipelineError(f"card template {override} is missing.")
        return path.read_text()
    resource = package_file(f"{kind}_cards", f"{name}.md")
    if not resource.is_file():
        raise PipelineError(f"stage {name} has no card template: add {kind}_cards/{name}.md (every run publishes a card).")
    return resource.read_text()


def lineage(name: str, version: int, fp: str, tag: str, inputs: list[dict], models: dict, config: Any,
            run: dict, command: list[str], rows_in: int, rows_out: int, **more: Any) -> dict[str, Any]:
    """What every card records, in its YAML under `hf_pipeline:` and in the lineage section."""
    return {
        "stage": name,
        "stage_version": version,
        "package": PACKAGE,
        "fingerprint": fp,
        "tag": tag,
        "inputs": inputs,
        "models": models,
        "config": config_to_dict(config),
        "run": run,
        "command": " ".join(command),
        "rows_in": rows_in,
        "rows_out": rows_out,
        **more,
    }


def render_card(card_class: type, card_data: Any, template_text: str, variables: dict[str, Any]) -> str:
    """A dataset or model card from its template; `{{ lineage_section }}` is the section every card shares."""
    import jinja2
    import yaml

    variables = dict(variables)
    variables.setdefault("config_yaml", yaml.safe_dump(variables["lineage"]["config"], sort_keys=False).strip())
    variables["lineage_section"] = jinja2.Template(card_template("dataset", "_lineage")).render(**variables)
    return str(card_class.from_template(card_data, template_str=template_text, **variables))


# ---------------------------------------------------------------- summary


def print_summary(title: str, seconds: float, lines: list[tuple[str, str]]) -> None:
    """The one screen a run ends with: a title, then `label  value` lines."""
    print("\n".join(["", f"== {title} done in {seconds:.1f}s =="] + [f"  {k:<9} {v}" for k, v in lines if v]))


# ---------------------------------------------------------------- the run: one sequence for every kind of stage


class RunKind(Protocol):
    """One kind of run: how a stage's work is planned, done and published (a dataset run maps rows through a pull
    request of a dataset repo; a model run trains a model into a model repo). `options_class` is its run options
    dataclass: each field is a flag of `run_stage.py STAGE`, its metadata's help the flag's help."""

    options_class: ClassVar[type]

    def add_arguments(self, parser: Any) -> None:
        """Flags of `run_stage.py STAGE` beyond the options' fields (an executor's, a cost estimate)."""

    def argument_values(self, args: Any) -> dict[str, Any]:
        """The values those flags give, as run option keys."""

    def check_options(self, stage: Any, options: Any) -> Any:
        """The options checked when the command is read (before anything runs), in their final form."""

    def command(self, args: Any, stage: Any, options: Any, config: Any, argv: list[str], dry_run: bool) -> Any:
        """`run_stage.py STAGE ...`: the run (`run` below), or what a flag of this kind asks instead."""

    def check(self, stage: Any, options: Any, config: Any, writing: bool) -> None:
        """What can be said before anything is read: output and input given, write access (when `writing`)."""

    def plan(self, stage: Any, options: Any, config: Any, argv: list[str]) -> Any:
        """Pinned inputs and models, checked columns, fingerprint, tag: everything but the work."""

    def published(self, plan: Any) -> Any | None:
        """The result already published under the plan's tag (said in one line), or None."""

    def print_plan(self, plan: Any) -> None:
        """A dry run's answer: what would run, and where it would be published."""

    def execute(self, plan: Any) -> Any:
        """The work, resumable: its outcome."""

    def card(self, plan: Any, outcome: Any, seconds: float) -> str | None:
        """The card of the outcome (None when there is nothing to publish yet: one shard of many)."""

    def publish(self, plan: Any, outcome: Any, card: str | None) -> Any:
        """One step on the Hub (a merge, a commit) and the tag: the result."""

    def summary(self, plan: Any, result: Any, seconds: float) -> None:
        """The one screen the run ends with."""


def run(kind: RunKind, stage: Any, options: Any, config: Any, argv: list[str] | None = None,
        dry_run: bool = False) -> Any:
    """A stage's run, whatever its kind: the result, the published one when there is nothing to do, or None for a
    dry run."""
    import sys

    from hf_pipeline.io.hub import token_free_argv

    started = time.time()
    kind.check(stage, options, config, writing=not dry_run)
    plan = kind.plan(stage, options, config, token_free_argv(argv or sys.argv))
    done = kind.published(plan)
    if done is not None:
        return done
    if dry_run:
        kind.print_plan(plan)
        return None
    outcome = kind.execute(plan)
    result = kind.publish(plan, outcome, kind.card(plan, outcome, time.time() - started))
    kind.summary(plan, result, time.time() - started)
    return result
