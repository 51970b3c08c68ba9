"""The index repo's files: build_index writes them, match and match_labels read them (at a pinned commit).

    index/templates.faiss           the FAISS index (absent from an empty index: `index_is_empty`)
    index/id_map.parquet            FAISS id i = row i: template_id, num_variables, template,
                                    compatible_document_description (`IdMap`)
    index/complexity_weights.json   sampling weight per number of <fi> variables (hf_pipeline/methods/matching.py)
    index/info.json                 embedding model, dimension, the index chosen and why, counts (`index_info`)

What each holds and how it is built: hf_pipeline/stages/build_index.py. `open_index` loads the embedder the index
was built with and the FAISS index, for a stage whose config names the index and its model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hf_pipeline.errors import PipelineError
from hf_pipeline.methods.embedder import load_embedder, model_ref
from hf_pipeline.methods.matching import template_keys
from hf_pipeline.stage import StageContext

INDEX_FILE = "index/templates.faiss"
ID_MAP_FILE = "index/id_map.parquet"
WEIGHTS_FILE = "index/complexity_weights.json"
INFO_FILE = "index/info.json"


def index_is_empty(info: dict) -> bool:
    """An index build_index published without templates (see build_index's write_empty_index)."""
    return bool(info.get("empty")) or info.get("ntotal") == 0


def index_info(ctx: StageContext, stage: str) -> dict:
    """The index's info.json (no model loaded), checked against the stage's embedder: a model other than the
    index's is refused (template and document vectors must share one space)."""
    config = ctx.config
    info = json.loads(ctx.download(config.index, INFO_FILE).read_text())
    if (info.get("model"), info.get("model_revision")) != (config.model, config.model_revision):
        raise PipelineError(
            f"index {config.index} was built with model {model_ref(info.get('model'), info.get('model_revision'))}, "
            f"but {stage} is configured with {model_ref(config.model, config.model_revision)}; set config keys "
            f"'model'/'model_revision' to the index's model (template and document vectors must share one space)."
        )
    return info


def open_index(ctx: StageContext, stage: str) -> tuple[Any, Any]:
    """(the embedder that built `ctx.config.index`, with its own pooling; the FAISS index, search parameters set,
    on the GPU when asked and present). Shared by match and match_labels: both config classes have the keys
    index, model, model_revision, max_seq_length, use_gpu, search_params. A model other than the index's is
    refused: template and document vectors must share one space."""
    import faiss
    import torch

    from hf_pipeline.methods.faiss_index import set_search_params, to_gpu

    config = ctx.config
    info = index_info(ctx, stage)
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

        from hf_pipeline.io.hub import cache_root

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
