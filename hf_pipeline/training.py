"""The runner of training stages: silver data in, a versioned *model* repo out (paper §3.1–3.3, distillation).

The dataset runner (`runner.py`) maps rows; a training stage instead fits a model on a whole dataset. What the
two share is the contract: every input pinned to a commit (the training data and the base model), a
fingerprint over stage, version, config and pinned inputs, a default tag `<stage>-<fingerprint>`, a rerun that
finds its tag published is a no-op, and the result is ONE commit + tag on the Hub with a card that records the
lineage (base model and revision, training data repo and revision, hyper-parameters, final metrics).

A training stage declares only its function (`train`: dataset in, model saved to a folder, metrics out) and
its config. Resume: `train` gets a checkpoint folder inside the run's work dir that survives a crash; the
stages hand it to `Trainer` as `output_dir` and resume from its last checkpoint on a rerun.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hf_pipeline import __version__
from hf_pipeline.config import config_hash, config_to_dict
from hf_pipeline.errors import PipelineError
from hf_pipeline.hub_io import (
    DatasetRef,
    cache_root,
    load_dataset_ref,
    output_tags,
    publish_model,
    read_card_metadata,
    resolve_dataset,
    split_ref,
    token_free_argv,
)
from hf_pipeline.runner import CARDS_DIR, RunOptions

MODEL_CARDS_DIR = CARDS_DIR.parent / "model_cards"
TINY_RANDOM_PREFIX = "tiny-random:"  # a small random causal LM built from a config (tests, CPU demos)


@dataclass(frozen=True)
class ModelPin:
    """A base model pinned to exactly what was loaded: a Hub repo at a commit, a local folder by content hash,
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
    from hf_pipeline.embedder import packaged_model_path

    if ref.startswith(TINY_RANDOM_PREFIX):
        return ModelPin(ref, ref, None, ref)
    packaged = packaged_model_path(ref)
    if packaged is not None:
        package = ref
        return ModelPin(ref, str(packaged), None, f"{ref}=={importlib.metadata.version(package)}")
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


@dataclass
class TrainContext:
    config: Any
    base: ModelPin
    output_dir: Path  # save the trained model here (it is published as is)
    checkpoint_dir: Path  # Trainer's output_dir: survives a crash, so a rerun resumes


@dataclass
class TrainOutcome:
    metrics: dict[str, Any]  # final figures for the card (losses, cosine margins, ...)
    rows_used: int  # training + evaluation rows after the stage's own filtering
    drops: dict[str, int] = field(default_factory=dict)  # rows not used, by reason


@dataclass(frozen=True)
class TrainingStage:
    name: str
    description: str
    config_class: type
    # the base model to start from, as written in the config (pinned by the runner before training)
    base_model: Callable[[Any], str]
    # dataset in, model saved to ctx.output_dir, metrics out
    train: Callable[[Any, TrainContext], TrainOutcome]
    input_columns: tuple[str, ...] = ()
    library_name: str = "transformers"
    pipeline_tag: str | None = None
    version: int = 1
    card_template: str | None = None  # default model_cards/<name>.md
    needs_input: bool = True  # the training data (the pipeline command passes the previous stage's output)


@dataclass
class TrainResult:
    repo_id: str
    tag: str
    commit: str
    rows_in: int
    rows_out: int
    metrics: dict[str, Any]
    skipped: bool = False

    def load_hint(self) -> str:
        return f'"{self.repo_id}@{self.tag}"'


def trainer_arguments(config: Any, checkpoint_dir: Path) -> dict[str, Any]:
    """The `TrainingArguments` every training stage shares, from its config's common keys: checkpoints in the
    run's work dir (resume), bf16 only on a GPU, seeded data order, no reporting integrations."""
    import torch

    on_gpu = torch.cuda.is_available()
    return dict(
        output_dir=str(checkpoint_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        warmup_steps=float(config.warmup_ratio),  # transformers 5: a float in [0, 1) is a ratio of the steps
        bf16=config.bf16 and on_gpu,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        report_to=[],
        seed=config.seed,
        data_seed=config.seed,
        use_cpu=not on_gpu,
    )


# RunOptions fields that mean something for a training run (the rest are about mapping rows)
TRAIN_OPTIONS = ("input", "output", "tag", "split", "max_rows", "private", "work_dir", "keep_work_dir")


def run_training(stage: TrainingStage, options: RunOptions, config: Any, argv: list[str] | None = None,
                 dry_run: bool = False) -> TrainResult | None:
    started = time.time()
    if not options.output:
        raise PipelineError(f"stage {stage.name} needs --output org/name (the model repo to publish to).")
    if not options.input:
        raise PipelineError(f"stage {stage.name} needs --input (the training data: org/name[@revision] or a local path).")
    data = resolve_dataset(options.input)
    base = pin_model(stage.base_model(config))
    fingerprint = config_hash(
        stage.name, stage.version, config_to_dict(config), data.pinned, base.pinned, options.split,
        *([options.max_rows] if options.max_rows is not None else []),
    )
    tag = options.tag or f"{stage.name}-{fingerprint}"
    tags = output_tags(options.output, repo_type="model")
    if tag in tags:
        meta = read_card_metadata(options.output, tags[tag], repo_type="model").get("hf_pipeline", {})
        if meta.get("fingerprint") != fingerprint:
            raise PipelineError(
                f"tag '{tag}' of model {options.output} already holds a different run "
                f"(fingerprint {meta.get('fingerprint')}, this run {fingerprint}); choose another --tag."
            )
        print(f"nothing to do: model {options.output}@{tag} (commit {tags[tag][:12]}) already holds {stage.name} "
              "for this data, base model and config.")
        return TrainResult(options.output, tag, tags[tag], 0, 0, meta.get("metrics", {}), skipped=True)

    ds = load_dataset_ref(data, split=options.split)
    missing = [c for c in stage.input_columns if c not in ds.column_names]
    if missing:
        raise PipelineError(
            f"input {options.input} lacks column '{missing[0]}' required by stage {stage.name} "
            f"(it has: {', '.join(ds.column_names)})."
        )
    if options.max_rows is not None and options.max_rows < len(ds):
        ds = ds.select(range(options.max_rows))
    work_dir = (Path(options.work_dir) if options.work_dir else cache_root() / "runs") / f"{stage.name}-{fingerprint}"
    if dry_run:
        print("\n".join([
            f"plan for training stage {stage.name} (dry run: nothing is written)",
            f"  data         {options.input} -> {data.pinned} ({len(ds)} rows)",
            f"  base model   {base.ref} -> {base.pinned}",
            f"  output       model {options.output} tag {tag}",
            f"  work dir     {work_dir}",
        ]))
        return None

    output_dir = work_dir / "model"
    if output_dir.exists():
        shutil.rmtree(output_dir)  # a half-saved model from a crash; checkpoints are elsewhere
    ctx = TrainContext(config, base, output_dir, work_dir / "checkpoints")
    outcome = stage.train(ds, ctx)
    if not (output_dir / "config.json").exists():
        raise PipelineError(f"stage {stage.name} saved no model to {output_dir}.")
    result = TrainResult(options.output, tag, "", len(ds), outcome.rows_used, outcome.metrics)
    card = render_model_card(stage, config, data, base, fingerprint, tag, result, outcome,
                             token_free_argv(argv or sys.argv), time.time() - started, options)
    result.commit = publish_model(
        options.output, output_dir, card, tag,
        commit_message=f"{stage.name}: trained on {outcome.rows_used} rows of {data.pinned} ({tag})",
        private=options.private,
    )
    if not options.keep_work_dir:
        shutil.rmtree(work_dir, ignore_errors=True)
    print_training_summary(stage, data, base, result, outcome, time.time() - started)
    return result


def render_model_card(stage: TrainingStage, config: Any, data: DatasetRef, base: ModelPin, fingerprint: str, tag: str,
                      result: TrainResult, outcome: TrainOutcome, argv: list[str], seconds: float,
                      options: RunOptions) -> str:
    """The model card from model_cards/<stage>.md; the lineage section is the one dataset cards share."""
    from dataclasses import asdict

    import jinja2
    import yaml
    from huggingface_hub import ModelCard, ModelCardData

    template = Path(stage.card_template) if stage.card_template else MODEL_CARDS_DIR / f"{stage.name}.md"
    if not template.exists():
        raise PipelineError(f"model card template {template} is missing for stage {stage.name}.")
    lineage = {
        "stage": stage.name,
        "stage_version": stage.version,
        "package": f"fineinstructions-pipeline {__version__}",
        "fingerprint": fingerprint,
        "tag": tag,
        "inputs": [data.card_dict()],
        "base_model": {"ref": base.ref, "pinned": base.pinned},
        "models": {"base": base.pinned},
        "config": config_to_dict(config),
        "run": {k: v for k, v in asdict(options).items() if k in TRAIN_OPTIONS},
        "command": " ".join(argv),
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "drops": outcome.drops,
        "metrics": outcome.metrics,
    }
    card_data = ModelCardData(
        base_model=base.hub_id,  # only a Hub id is meaningful here; local and random bases are in the lineage
        datasets=[data.repo_id] if data.repo_id else None,
        library_name=stage.library_name,
        pipeline_tag=stage.pipeline_tag,
        tags=["fineinstructions", "hf_pipeline", stage.name],
        hf_pipeline=lineage,
    )
    variables = dict(
        repo_id=result.repo_id,
        tag=tag,
        lineage=lineage,
        inputs=[data],
        models=lineage["models"],
        base=base,
        data=data,
        config_yaml=yaml.safe_dump(lineage["config"], sort_keys=False).strip(),
        metrics=outcome.metrics,
        drops=outcome.drops,
        rows_in=result.rows_in,
        rows_out=result.rows_out,
        seconds=round(seconds, 1),
    )
    variables["lineage_section"] = jinja2.Template((CARDS_DIR / "_lineage.md").read_text()).render(**variables)
    return str(ModelCard.from_template(card_data, template_path=str(template), **variables))


def print_training_summary(stage: TrainingStage, data: DatasetRef, base: ModelPin, result: TrainResult,
                           outcome: TrainOutcome, seconds: float) -> None:
    lines = [
        "",
        f"== {stage.name} done in {seconds:.1f}s ==",
        f"  data      {data.pinned}",
        f"  base      {base.pinned}",
        f"  rows      {result.rows_in} in -> {result.rows_out} trained on",
    ]
    if outcome.drops:
        lines.append("  drops     " + ", ".join(f"{k}: {v}" for k, v in outcome.drops.items()))
    lines.append("  metrics   " + ", ".join(f"{k}: {v}" for k, v in outcome.metrics.items()))
    lines += [
        f"  output    model {result.repo_id}@{result.tag} (commit {result.commit[:12]})",
        f"  use with  --set llm.model={result.repo_id}@{result.tag}  (or model={result.repo_id} model_revision={result.tag})",
    ]
    print("\n".join(lines))
