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

import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from hf_pipeline.run import contract
from hf_pipeline.run.contract import TINY_RANDOM_PREFIX, ModelPin, pin_model  # noqa: F401  (the stages' names for them)
from hf_pipeline.errors import PipelineError
from hf_pipeline.io.hub import DatasetRef, cache_root, load_dataset_ref, publish_model, token_free_argv


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
    card_name: str | None = None  # the package's model_cards/<card_name>.md; default the stage's name
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


def split_eval(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded held-out share, at least one row when the fraction asks for any and two exist."""
    if fraction <= 0 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(rows) - 1, max(1, round(fraction * len(rows))))
    held = set(order[:n_eval])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def metrics_sample(rows: list, n: int, seed: int) -> list:
    """At most n rows, seeded: the before/after figures of a big run cost a bounded number of forward passes."""
    return rows if len(rows) <= n else random.Random(seed).sample(rows, n)


def last_checkpoint(folder) -> tuple[str | None, int]:
    """(the newest checkpoint a crashed run left in `folder`, its step), or (None, 0) for a fresh start."""
    from transformers.trainer_utils import get_last_checkpoint

    path = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    return path, int(path.rsplit("-", 1)[1]) if path else 0


# run options that mean something for a training run (the rest are about mapping rows)
TRAIN_OPTIONS = ("input", "output", "tag", "split", "max_rows", "private", "work_dir", "keep_work_dir")


def run_training(stage: TrainingStage, options: Any, config: Any, argv: list[str] | None = None,
                 dry_run: bool = False) -> TrainResult | None:
    """The run contract (pins, fingerprint, tag, published check, card, summary: `contract.py`) around `train`."""
    started = time.time()
    if not options.output:
        raise PipelineError(f"stage {stage.name} needs --output org/name (the model repo to publish to).")
    if not options.input:
        raise PipelineError(f"stage {stage.name} needs --input (the training data: org/name[@revision] or a local path).")
    data = contract.pin_datasets([options.input])[options.input]
    base = pin_model(stage.base_model(config))
    fp = contract.fingerprint(stage.name, stage.version, config, data.pinned, base.pinned, options.split, options.max_rows)
    tag = options.tag or contract.default_tag(stage.name, fp)
    existing = contract.published_commit(options.output, tag, fp, repo_type="model")
    if existing:
        print(f"nothing to do: model {options.output}@{tag} (commit {existing[:12]}) already holds {stage.name} "
              "for this data, base model and config.")
        meta = contract.read_card_metadata(options.output, existing, repo_type="model").get("hf_pipeline", {})
        return TrainResult(options.output, tag, existing, 0, 0, meta.get("metrics", {}), skipped=True)

    # training reads its whole (silver, ~100K-row) dataset: the one stage kind that truly needs every row at once
    ds = load_dataset_ref(data, split=options.split)
    missing = [c for c in stage.input_columns if c not in ds.column_names]
    if missing:
        raise PipelineError(
            f"input {options.input} lacks column '{missing[0]}' required by stage {stage.name} "
            f"(it has: {', '.join(ds.column_names)})."
        )
    if options.max_rows is not None and options.max_rows < len(ds):
        ds = ds.select(range(options.max_rows))
    work_dir = (Path(options.work_dir) if options.work_dir else cache_root() / "runs") / f"{stage.name}-{fp}"
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
    card = render_model_card(stage, config, data, base, fp, tag, result, outcome,
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


def render_model_card(stage: TrainingStage, config: Any, data: DatasetRef, base: ModelPin, fp: str, tag: str,
                      result: TrainResult, outcome: TrainOutcome, argv: list[str], seconds: float, options: Any) -> str:
    """The model card from the package's model_cards/<stage>.md; the lineage section is the one every card shares."""
    from dataclasses import asdict

    from huggingface_hub import ModelCard, ModelCardData

    lineage = contract.lineage(
        stage.name, stage.version, fp, tag, [data.card_dict()], {"base": base.pinned}, config,
        {k: v for k, v in asdict(options).items() if k in TRAIN_OPTIONS}, argv, result.rows_in, result.rows_out,
        base_model={"ref": base.ref, "pinned": base.pinned}, drops=outcome.drops, metrics=outcome.metrics,
    )
    card_data = ModelCardData(
        base_model=base.hub_id,  # only a Hub id is meaningful here; local and random bases are in the lineage
        datasets=[data.repo_id] if data.repo_id else None,
        library_name=stage.library_name,
        pipeline_tag=stage.pipeline_tag,
        tags=["fineinstructions", "hf_pipeline", stage.name],
        hf_pipeline=lineage,
    )
    variables = dict(
        repo_id=result.repo_id, tag=tag, lineage=lineage, inputs=[data], models=lineage["models"], base=base, data=data,
        metrics=outcome.metrics, drops=outcome.drops, rows_in=result.rows_in, rows_out=result.rows_out,
        seconds=round(seconds, 1),
    )
    template = contract.card_template("model", stage.card_name or stage.name)
    return contract.render_card(ModelCard, card_data, template, variables)


def print_training_summary(stage: TrainingStage, data: DatasetRef, base: ModelPin, result: TrainResult,
                           outcome: TrainOutcome, seconds: float) -> None:
    contract.print_summary(stage.name, seconds, [
        ("data", data.pinned),
        ("base", base.pinned),
        ("rows", f"{result.rows_in} in -> {result.rows_out} trained on"),
        ("drops", ", ".join(f"{k}: {v}" for k, v in outcome.drops.items())),
        ("metrics", ", ".join(f"{k}: {v}" for k, v in outcome.metrics.items())),
        ("output", f"model {result.repo_id}@{result.tag} (commit {result.commit[:12]})"),
        ("use with", f"--set llm.model={result.repo_id}@{result.tag}  (or model={result.repo_id} model_revision={result.tag})"),
    ])
