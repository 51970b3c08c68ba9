"""train_genericizer, train_instantiator — the distilled student models (paper §3.1, §3.3).

"We train the efficient Query Genericizer Model by fine-tuning a Llama-3.2 1B Instruct model on the generated
synthetic data" (§3.1); "We create ~100K silver-standard examples and train a distilled model to instantiate
instruction templates and generate answers by fine-tuning Llama-3.2 3B Instruct" (§3.3).

Both are the same run: a causal-LM `Trainer` on the silver data's `messages` column (the student contract, as
`genericizer_silver` / `instantiator_silver` write it), the loss on the assistant turn only (`chat_sft`). The
saved model carries its tokenizer, chat template and generation config, so `genericize`/`instantiate` take it
as `--set llm.model=ORG/NAME@TAG mode=student` with no code change. The paper gives no hyper-parameters; the
defaults are ordinary full fine-tuning values for 1B–3B instruct models.

Offline, `base_model: tiny-random:smollm2` builds a 2-layer random Llama with SmolLM2's real tokenizer and chat
template (from the packaged GGUF), so the whole path runs on a CPU in seconds.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.training import (
    TINY_RANDOM_PREFIX,
    ModelPin,
    TrainContext,
    TrainingStage,
    TrainOutcome,
    last_checkpoint,
    metrics_sample,
    split_eval,
    trainer_arguments,
)


@dataclass
class CausalLMTrainConfig:
    base_model: str = field(
        default="meta-llama/Llama-3.2-1B-Instruct",
        metadata={"help": "Hub id[@revision], local folder, or tiny-random:smollm2 (offline tests and demos)"},
    )
    messages_column: str = field(default="messages", metadata={"help": "chat column; its last message is learned"})
    max_length: int = field(default=2048, metadata={"help": "longer examples are dropped (counted), never cut"})
    learning_rate: float = 1e-5
    num_train_epochs: float = 2.0
    max_steps: int = field(default=-1, metadata={"help": "overrides num_train_epochs when > 0"})
    per_device_train_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share for the card's eval loss (0 = none)"})
    metrics_rows: int = field(default=1000, metadata={"help": "training rows sampled for the card's before/after loss"})
    gradient_checkpointing: bool = False
    bf16: bool = field(default=True, metadata={"help": "bf16 mixed precision when a GPU is present (CPU: float32)"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps (a rerun resumes from the last)"})
    logging_steps: int = 10
    seed: int = 0


@dataclass
class TrainGenericizerConfig(CausalLMTrainConfig):
    base_model: str = field(
        default="meta-llama/Llama-3.2-1B-Instruct",
        metadata={"help": "Hub id[@revision], local folder, or tiny-random:smollm2 (offline tests and demos)"},
    )
    max_length: int = field(default=1024, metadata={"help": "longer examples are dropped (counted), never cut"})


@dataclass
class TrainInstantiatorConfig(CausalLMTrainConfig):
    base_model: str = field(
        default="meta-llama/Llama-3.2-3B-Instruct",
        metadata={"help": "Hub id[@revision], local folder, or tiny-random:smollm2 (offline tests and demos)"},
    )
    # a template + a document of up to instantiate's 20,000 characters (~5k tokens) + the answer
    max_length: int = field(default=8192, metadata={"help": "longer examples are dropped (counted), never cut"})


def tiny_random_causal_lm(name: str, seed: int):
    """(model, tokenizer) for `tiny-random:smollm2`: SmolLM2's tokenizer and chat template on a 2-layer Llama with
    random weights (about 3.3M parameters, nearly all in the shared embedding)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hf_pipeline.llm.base import load_path
    from hf_pipeline.llm.smollm2 import default_offline_model

    if name != "smollm2":
        raise PipelineError(f"unknown tiny random model '{TINY_RANDOM_PREFIX}{name}' (known: {TINY_RANDOM_PREFIX}smollm2).")
    source, _ = load_path(default_offline_model("transformers"))
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def load_base(pin: ModelPin, seed: int):
    """(model, tokenizer) to fine-tune, float32 (mixed precision comes from the Trainer); never remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if pin.load.startswith(TINY_RANDOM_PREFIX):
        return tiny_random_causal_lm(pin.load[len(TINY_RANDOM_PREFIX):], seed)
    tokenizer = AutoTokenizer.from_pretrained(pin.load, revision=pin.revision)
    model = AutoModelForCausalLM.from_pretrained(pin.load, revision=pin.revision, dtype="float32")
    return model, tokenizer


def tokenize_examples(ds, tokenizer, column: str, max_length: int) -> tuple[list[dict], dict[str, int]]:
    """Every conversation as {input_ids, labels}; the ones that cannot be examples are counted by reason."""
    from hf_pipeline.methods.chat_sft import ChatExampleError, tokenize_chat

    rows, drops = [], Counter()
    for messages in ds[column]:
        try:
            t = tokenize_chat(tokenizer, messages or [], max_length)
        except ChatExampleError as e:
            drops[e.reason] += 1
            continue
        rows.append({"input_ids": t.input_ids, "labels": t.labels})
    return rows, dict(drops)


def train_causal_lm(ds, ctx: TrainContext) -> TrainOutcome:
    import datasets
    from transformers import Trainer, TrainingArguments

    from hf_pipeline.methods.chat_sft import IGNORE_INDEX, pad_batch

    config: CausalLMTrainConfig = ctx.config
    if config.messages_column not in ds.column_names:
        raise PipelineError(f"the training data lacks column '{config.messages_column}' (it has: {', '.join(ds.column_names)}).")
    model, tokenizer = load_base(ctx.base, config.seed)
    rows, drops = tokenize_examples(ds, tokenizer, config.messages_column, config.max_length)
    if not rows:
        raise PipelineError(f"none of the {len(ds)} training rows is a usable example (dropped: {drops}).")
    train_rows, eval_rows = split_eval(rows, config.eval_fraction, config.seed)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    args = TrainingArguments(
        **trainer_arguments(config, ctx.checkpoint_dir),
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        activation_checkpointing=config.gradient_checkpointing,
        remove_unused_columns=False,  # the collator needs `labels`, which the model's signature hides
    )
    as_dataset = lambda rs: datasets.Dataset.from_list(rs)  # noqa: E731
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=as_dataset(train_rows),
        data_collator=lambda batch: pad_batch(batch, pad_id),
    )
    # The loss the Trainer reports is the mean cross-entropy over label tokens, i.e. over the replies alone.
    measured = {
        "train": as_dataset(metrics_sample(train_rows, config.metrics_rows, config.seed)),
        **({"eval": as_dataset(eval_rows)} if eval_rows else {}),
    }
    before = {name: trainer.evaluate(split, metric_key_prefix=name)[f"{name}_loss"] for name, split in measured.items()}
    checkpoint, resumed_from = last_checkpoint(ctx.checkpoint_dir)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    after = {name: trainer.evaluate(split, metric_key_prefix=name)[f"{name}_loss"] for name, split in measured.items()}
    trainer.save_model(str(ctx.output_dir))
    tokenizer.save_pretrained(str(ctx.output_dir))
    model.generation_config.save_pretrained(str(ctx.output_dir))

    reply_tokens = sum(sum(1 for x in r["labels"] if x != IGNORE_INDEX) for r in rows)
    prompt_tokens = sum(len(r["labels"]) for r in rows) - reply_tokens
    metrics: dict[str, Any] = {
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "steps": int(output.global_step),
        "resumed_from_step": resumed_from,
        "training_loss": _round(output.training_loss),
        **{f"{name}_loss_before": _round(v) for name, v in before.items()},
        **{f"{name}_loss_after": _round(v) for name, v in after.items()},
        "reply_tokens": reply_tokens,  # tokens with loss
        "prompt_tokens": prompt_tokens,  # tokens without
    }
    return TrainOutcome(metrics=metrics, rows_used=len(rows), drops=drops)


def _round(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def causal_lm_stage(name: str, description: str, config_class: type) -> TrainingStage:
    return TrainingStage(
        name=name,
        description=description,
        config_class=config_class,
        base_model=lambda config: config.base_model,
        train=train_causal_lm,
        library_name="transformers",
        pipeline_tag="text-generation",
        card_name="causal_lm",
    )


STAGE_GENERICIZER = causal_lm_stage(
    "train_genericizer",
    "fine-tune the query genericizer on genericizer_silver data, loss on the reply only (§3.1)",
    TrainGenericizerConfig,
)
STAGE_INSTANTIATOR = causal_lm_stage(
    "train_instantiator",
    "fine-tune the template instantiator on instantiator_silver data, loss on the reply only (§3.3)",
    TrainInstantiatorConfig,
)
