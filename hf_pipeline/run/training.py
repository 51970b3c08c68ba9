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

import argparse
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.hub import DatasetRef, cache_root, load_dataset_ref, publish_model
from hf_pipeline.run import contract
from hf_pipeline.run.contract import TINY_RANDOM_PREFIX, ModelPin, pin_model  # noqa: F401  (the stages' names for them)

if TYPE_CHECKING:
    from hf_pipeline.run.estimate import CostModel


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
    cost: CostModel | None = None  # its cost at scale (see run/estimate.py); none declared yet


@dataclass
class TrainResult:
    repo_id: str
    tag: str
    commit: str
    rows_in: int
    rows_out: int
    metrics: dict[str, Any]
    skipped: bool = False
    drops: dict[str, int] = field(default_factory=dict)  # rows not trained on, by reason

    def load_hint(self) -> str:
        return f'"{self.repo_id}@{self.tag}"'

    def published_summary(self, name: str) -> tuple[list[str], None]:
        """The pipeline summary's line for this entry, from the model card: rows and the final losses and margins."""
        from hf_pipeline.io.hub import load_card

        card = load_card(self.repo_id, self.tag, repo_type="model").data.hf_pipeline
        figures = ", ".join(f"{k} {v}" for k, v in card["metrics"].items() if "loss" in k or "margin" in k)
        return [f"{name:<16} model {self.repo_id}@{self.tag}  ({card['rows_in']} rows -> {card['rows_out']} trained on; "
                f"{figures})"], None


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


@dataclass
class TrainOptions:
    """Options of a model run that are not the stage's config; each is a flag of `run_stage.py STAGE`."""

    input: str | None = field(default=None, metadata={"help": "training data: org/name, org/name@revision, or a local path"})
    output: str | None = field(default=None, metadata={"help": "output model repo (org/name) to publish to"})
    tag: str | None = field(default=None, metadata={"help": "tag for the published revision (default: <stage>-<config hash>)"})
    split: str = field(default="train", metadata={"help": "split of the training data to read"})
    max_rows: int | None = field(default=None, metadata={"help": "train on only the first N rows (a sample)"})
    private: bool = field(default=False, metadata={"help": "create the output repo as private"})
    work_dir: str | None = field(default=None, metadata={
        "help": "where checkpoints live until published (default: $HF_PIPELINE_CACHE/runs); a rerun resumes from the last one"})
    keep_work_dir: bool = field(default=False, metadata={"help": "keep the checkpoints after the model is published"})


@dataclass
class TrainPlan:
    stage: TrainingStage
    options: TrainOptions
    config: Any
    data: DatasetRef  # the training data, pinned
    base: ModelPin  # the base model, pinned
    fingerprint: str
    tag: str
    argv: list[str]

    @property
    def work_dir(self) -> Path:
        base = Path(self.options.work_dir) if self.options.work_dir else cache_root() / "runs"
        return base / f"{self.stage.name}-{self.fingerprint}"

    def dataset(self):
        """The whole training set (a silver set of ~100K rows: the one stage kind that truly needs every row at once),
        its columns checked, cut to `max_rows`."""
        ds = load_dataset_ref(self.data, split=self.options.split)
        missing = [c for c in self.stage.input_columns if c not in ds.column_names]
        if missing:
            raise PipelineError(
                f"input {self.options.input} lacks column '{missing[0]}' required by stage {self.stage.name} "
                f"(it has: {', '.join(ds.column_names)})."
            )
        if self.options.max_rows is not None and self.options.max_rows < len(ds):
            ds = ds.select(range(self.options.max_rows))
        return ds


@dataclass
class TrainRun:
    """What a model run's training left: the rows it read, the model folder, the stage's outcome."""

    rows_in: int
    output_dir: Path
    outcome: TrainOutcome


class ModelRun:
    """A training stage's run: the contract's steps around `train` (pins, fingerprint, tag, published check, card,
    summary: `contract.py`), one commit + tag of a model repo."""

    options_class = TrainOptions

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """A model run has no flag beyond its options."""

    def argument_values(self, args: argparse.Namespace) -> dict[str, Any]:
        return {}

    def check_options(self, stage: TrainingStage, options: TrainOptions) -> TrainOptions:
        return options

    def command(self, args: argparse.Namespace, stage: TrainingStage, options: TrainOptions, config: Any,
                argv: list[str], dry_run: bool) -> TrainResult | None:
        return contract.run(self, stage, options, config, argv, dry_run)

    def check(self, stage: TrainingStage, options: TrainOptions, config: Any, writing: bool) -> None:
        if not options.output:
            raise PipelineError(f"stage {stage.name} needs --output org/name (the model repo to publish to).")
        if not options.input:
            raise PipelineError(f"stage {stage.name} needs --input (the training data: org/name[@revision] or a local path).")
        contract.card_template("model", stage.card_name or stage.name)  # said now, not after the training

    def plan(self, stage: TrainingStage, options: TrainOptions, config: Any, argv: list[str]) -> TrainPlan:
        data = contract.pin_datasets([options.input])[options.input]
        base = pin_model(stage.base_model(config))
        fp = contract.fingerprint(stage.name, stage.version, config, data.pinned, base.pinned, options.split, options.max_rows)
        return TrainPlan(stage, options, config, data, base, fp, options.tag or contract.default_tag(stage.name, fp), argv)

    def published(self, plan: TrainPlan) -> TrainResult | None:
        existing = contract.published_commit(plan.options.output, plan.tag, plan.fingerprint, repo_type="model")
        if not existing:
            return None
        print(f"nothing to do: model {plan.options.output}@{plan.tag} (commit {existing[:12]}) already holds "
              f"{plan.stage.name} for this data, base model and config.")
        meta = contract.read_card_metadata(plan.options.output, existing, repo_type="model").get("hf_pipeline", {})
        return TrainResult(plan.options.output, plan.tag, existing, 0, 0, meta.get("metrics", {}), skipped=True)

    def print_plan(self, plan: TrainPlan) -> None:
        print("\n".join([
            f"plan for training stage {plan.stage.name} (dry run: nothing is written)",
            f"  data         {plan.options.input} -> {plan.data.pinned} ({len(plan.dataset())} rows)",
            f"  base model   {plan.base.ref} -> {plan.base.pinned}",
            f"  output       model {plan.options.output} tag {plan.tag}",
            f"  work dir     {plan.work_dir}",
        ]))

    def execute(self, plan: TrainPlan) -> TrainRun:
        ds = plan.dataset()
        output_dir = plan.work_dir / "model"
        if output_dir.exists():
            shutil.rmtree(output_dir)  # a half-saved model from a crash; checkpoints are elsewhere
        outcome = plan.stage.train(ds, TrainContext(plan.config, plan.base, output_dir, plan.work_dir / "checkpoints"))
        if not (output_dir / "config.json").exists():
            raise PipelineError(f"stage {plan.stage.name} saved no model to {output_dir}.")
        return TrainRun(len(ds), output_dir, outcome)

    def card(self, plan: TrainPlan, trained: TrainRun, seconds: float) -> str:
        return render_model_card(plan, trained, seconds)

    def publish(self, plan: TrainPlan, trained: TrainRun, card: str | None) -> TrainResult:
        outcome = trained.outcome
        commit = publish_model(
            plan.options.output, trained.output_dir, card, plan.tag,
            commit_message=f"{plan.stage.name}: trained on {outcome.rows_used} rows of {plan.data.pinned} ({plan.tag})",
            private=plan.options.private,
        )
        if not plan.options.keep_work_dir:
            shutil.rmtree(plan.work_dir, ignore_errors=True)
        return TrainResult(plan.options.output, plan.tag, commit, trained.rows_in, outcome.rows_used, outcome.metrics,
                           drops=outcome.drops)

    def summary(self, plan: TrainPlan, result: TrainResult, seconds: float) -> None:
        contract.print_summary(plan.stage.name, seconds, [
            ("data", plan.data.pinned),
            ("base", plan.base.pinned),
            ("rows", f"{result.rows_in} in -> {result.rows_out} trained on"),
            ("drops", ", ".join(f"{k}: {v}" for k, v in result.drops.items())),
            ("metrics", ", ".join(f"{k}: {v}" for k, v in result.metrics.items())),
            ("output", f"model {result.repo_id}@{result.tag} (commit {result.commit[:12]})"),
            ("use with", f"--set llm.model={result.repo_id}@{result.tag}  (or model={result.repo_id} model_revision={result.tag})"),
        ])


MODEL_RUN = ModelRun()


def render_model_card(plan: TrainPlan, trained: TrainRun, seconds: float) -> str:
    """The model card from the package's model_cards/<stage>.md; the lineage section is the one every card shares."""
    from dataclasses import asdict

    from huggingface_hub import ModelCard, ModelCardData

    stage, outcome, data, base = plan.stage, trained.outcome, plan.data, plan.base
    lineage = contract.lineage(
        stage.name, stage.version, plan.fingerprint, plan.tag, [data.card_dict()], {"base": base.pinned}, plan.config,
        asdict(plan.options), plan.argv, trained.rows_in, outcome.rows_used,
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
        repo_id=plan.options.output, tag=plan.tag, lineage=lineage, inputs=[data], models=lineage["models"], base=base,
        data=data, metrics=outcome.metrics, drops=outcome.drops, rows_in=trained.rows_in, rows_out=outcome.rows_used,
        seconds=round(seconds, 1),
    )
    template = contract.card_template("model", stage.card_name or stage.name)
    return contract.render_card(ModelCard, card_data, template, variables)
