"""Gaussian pooling (paper §3.2, Appendix B): one forward pass, K+1 embeddings per document.

Mean pooling gives one vector for the whole document, so retrieval favours templates about its
overall topic. Gaussian pooling keeps that global mean and adds K "local" vectors, each a
Gaussian-weighted mean of the token embeddings around a fixed fraction k/(K+1) of the text, so a
long document can also retrieve templates about its beginning, middle and end. Defaults are the
paper's: K = 5, σ = 0.05, α = 1.0.

Appendix B, as implemented by `gaussian_pool`:

    h̄      = Σ_t m_t h_t / Σ_t m_t                                   global mean
    c_k     = k/(K+1) · T,  k = 1..K                                   kernel centres
    w_{k,t} = m_t exp(-½((t - c_k)/(σT))²) / Σ_t' (same with t')       weights, normalised per row
    h̃_k    = Σ_t w_{k,t} h_t                                          chunk-local embeddings
    h*_k    = (1 - α) h̄ + α h̃_k                                       blend with the global mean
    E       = [h̄, h*_1, …, h*_K]                                      shape (K+1, d)

Where the appendix is silent we chose:
- T is the effective length Σ_t m_t, and t runs over the *unmasked* tokens only, as their 1-based
  rank (t = 1..T, the appendix's sums run from 1). A token's position is its rank among unmasked
  tokens, not its index in the padded row, so left padding, right padding and holes in the mask
  give the same vectors. Positions are the integers t themselves, not cell centres t - ½: that is
  the formula as written. (For K = 1 the kernel sits at T/2, half a token left of the exact middle
  (T+1)/2; with σT ≈ 0.05·T tokens of width this is immaterial for documents.)
- Special tokens ([CLS], [SEP], <s>, </s>) count like any unmasked token, as they do in
  sentence-transformers' mean pooling: the global vector must equal the stock model's.

`GaussianPooling` is the sentence-transformers module: `sentence_embedding` stays the global mean,
so `model.encode` is unchanged, and the (batch, K+1, dim) tensor goes to
`features["gaussian_embeddings"]`, which `encode_gaussian` reads.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module
from sentence_transformers.sentence_transformer.modules import Pooling
from torch import Tensor

logger = logging.getLogger(__name__)

GAUSSIAN_EMBEDDINGS = "gaussian_embeddings"  # features key holding the (batch, K+1, dim) tensor


def gaussian_pool(
    token_embeddings: Tensor,
    attention_mask: Tensor,
    k: int = 5,
    sigma: float = 0.05,
    alpha: float = 1.0,
) -> Tensor:
    """Appendix B pooling: (batch, seq, dim) tokens and (batch, seq) mask -> (batch, K+1, dim).

    Row 0 is the global mean, rows 1..K the blended chunk-local vectors. Computed in float32
    whatever the input dtype (bf16 sums over thousands of tokens lose precision) and returned in
    the input dtype. A row with no unmasked token pools to zeros.
    """
    dtype = token_embeddings.dtype
    h = token_embeddings.float()
    m = attention_mask.bool()
    mf = m.float()
    T = mf.sum(dim=1, keepdim=True)  # (B, 1) effective length
    T1 = T.clamp(min=1.0)  # guards the divisions on empty rows

    mean = torch.bmm(mf.unsqueeze(1), h).squeeze(1) / T1  # (B, D)

    t = mf.cumsum(dim=1)  # (B, L): 1-based rank among unmasked tokens (padding gets a stale rank, masked below)
    rho = torch.arange(1, k + 1, device=h.device, dtype=torch.float32) / (k + 1)  # (K,)
    c = rho * T  # (B, K) centres c_k = ρ_k T
    z = (t.unsqueeze(1) - c.unsqueeze(2)) / (sigma * T1).unsqueeze(2)  # (B, K, L)
    # Normalising exp(-½z²)·m_t over t is a softmax over the unmasked tokens; softmax subtracts the
    # row max first, so a narrow kernel (σT ≪ 1) does not underflow to 0/0.
    logits = (-0.5 * z.square()).masked_fill(~m.unsqueeze(1), float("-inf"))
    w = torch.softmax(logits, dim=-1).masked_fill((T == 0).unsqueeze(2), 0.0)  # empty row: NaN -> 0
    local = torch.bmm(w, h)  # (B, K, D)

    blended = (1.0 - alpha) * mean.unsqueeze(1) + alpha * local
    return torch.cat([mean.unsqueeze(1), blended], dim=1).to(dtype)


def _unflatten(token_embeddings: Tensor, cu_seq_lens: Tensor) -> tuple[Tensor, Tensor]:
    """Re-pad flash-attention "unpadded" output (1, total, D) to (B, L, D) plus its mask.

    sentence-transformers packs a batch into one flat sequence when the backbone runs FlashAttention-2
    (the bf16 GPU set-up for BGE-M3); Gaussian weights need each row's own positions, so we rebuild
    the padded layout, which is cheap next to the transformer.
    """
    flat = token_embeddings.squeeze(0)
    lengths = cu_seq_lens[1:] - cu_seq_lens[:-1]
    rows = torch.repeat_interleave(torch.arange(len(lengths), device=flat.device), lengths)
    cols = torch.arange(flat.shape[0], device=flat.device) - cu_seq_lens[:-1][rows]
    padded = flat.new_zeros(len(lengths), int(lengths.max()), flat.shape[-1])
    padded[rows, cols] = flat
    mask = torch.zeros(padded.shape[:2], dtype=torch.bool, device=flat.device)
    mask[rows, cols] = True
    return padded, mask


class GaussianPooling(Module):
    """sentence-transformers pooling module for Appendix B Gaussian pooling.

    Sets `features["sentence_embedding"]` to the global mean (so the model stays a plain mean-pooled
    embedder) and `features["gaussian_embeddings"]` to the (batch, K+1, dim) tensor
    `[h̄, h*_1 … h*_K]`. It has no weights: the module only stores its configuration.
    """

    config_keys = ["embedding_dimension", "k", "sigma", "alpha"]

    def __init__(self, embedding_dimension: int, k: int = 5, sigma: float = 0.05, alpha: float = 1.0) -> None:
        super().__init__()
        if k < 1 or sigma <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"need k >= 1, sigma > 0, 0 <= alpha <= 1; got k={k}, sigma={sigma}, alpha={alpha}")
        self.embedding_dimension = embedding_dimension
        self.k = k
        self.sigma = sigma
        self.alpha = alpha

    def forward(self, features: dict[str, Tensor | Any], **kwargs) -> dict[str, Tensor | Any]:
        token_embeddings = features["token_embeddings"]
        if "cu_seq_lens_q" in features:
            token_embeddings, attention_mask = _unflatten(token_embeddings, features["cu_seq_lens_q"])
        else:
            attention_mask = features["attention_mask"]
        pooled = gaussian_pool(token_embeddings, attention_mask, self.k, self.sigma, self.alpha)
        features["sentence_embedding"] = pooled[:, 0]
        features[GAUSSIAN_EMBEDDINGS] = pooled
        return features

    def get_embedding_dimension(self) -> int:
        # sentence-transformers >= 6 asks modules for `get_embedding_dimension`; the model's
        # `get_sentence_embedding_dimension` is a deprecated alias that forwards to it.
        return self.embedding_dimension

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)  # config.json with config_keys; `Module.load` reads it back


def with_gaussian_pooling(
    model: SentenceTransformer, k: int = 5, sigma: float = 0.05, alpha: float = 1.0
) -> SentenceTransformer:
    """Swap `model`'s pooling module for `GaussianPooling`, in place, and return `model`.

    Any encoder can then produce the K+1 retrieval vectors without retraining (the pipeline's round-1
    matcher, the packaged MiniLM). An existing `GaussianPooling` is replaced, to change k/σ/α. The
    global vector is Appendix B's mean: identical to the model's own output when it mean-pools
    (MiniLM), different when it pools otherwise (stock BGE-M3 uses [CLS]), which we log.
    """
    for name, module in model.named_children():
        if isinstance(module, (Pooling, GaussianPooling)):
            if isinstance(module, Pooling) and module.pooling_mode != "mean":
                logger.warning(
                    "replacing %r pooling with Gaussian pooling: the global vector becomes the token mean",
                    module.pooling_mode,
                )
            # Both modules keep the token embedding size as `embedding_dimension`.
            setattr(model, name, GaussianPooling(module.embedding_dimension, k=k, sigma=sigma, alpha=alpha))
            return model
    raise ValueError(f"no Pooling module to replace in {[type(m).__name__ for m in model.children()]}")


def _gaussian_module(model: SentenceTransformer) -> GaussianPooling:
    for module in model.children():
        if isinstance(module, GaussianPooling):
            return module
    raise ValueError("model has no GaussianPooling module; wrap it with with_gaussian_pooling(model) first")


def encode_gaussian(
    model: SentenceTransformer,
    texts: list[str],
    batch_size: int = 32,
    normalize: bool = True,
    **encode_kwargs: Any,
) -> np.ndarray:
    """Encode `texts` to a float32 array (n, K+1, dim): [global mean, K chunk-local vectors] per text.

    One forward pass per batch gives all K+1 vectors. `model.encode` does the batching (it sorts by
    length so that padding stays small, and restores the input order); we only ask it for our
    features key. ST's own `normalize_embeddings` would normalise along dim 1 (across the K+1 vectors),
    so we L2-normalise each vector ourselves. `encode_kwargs` go to `model.encode` (device, prompt, …).
    For non-default outputs ST keeps every row on the model's device until the call returns, so call
    this per map batch, not on a whole corpus at once.
    """
    pooling = _gaussian_module(model)
    rows = model.encode(
        texts,
        batch_size=batch_size,
        output_value=GAUSSIAN_EMBEDDINGS,
        normalize_embeddings=False,
        **encode_kwargs,
    )
    if not len(rows):
        return np.zeros((0, pooling.k + 1, pooling.get_embedding_dimension()), dtype=np.float32)
    out = torch.stack(rows).float()
    if normalize:
        out = torch.nn.functional.normalize(out, p=2, dim=-1)
    return out.cpu().numpy()


def truncated_mask(model: SentenceTransformer, texts: list[str]) -> np.ndarray:
    """Boolean array, True where `model.encode` would cut the text at `model.max_seq_length` tokens.

    Tokenizes with the model's own tokenizer (special tokens included, as encode does) but stops at
    max_seq_length + 1 tokens: one token past the limit is enough to know, and keeps the ids small
    for long documents. `truncated_mask(model, texts).sum()` counts truncated documents.
    """
    limit = model.max_seq_length
    ids = model.tokenizer(texts, truncation=True, max_length=limit + 1, return_attention_mask=False)["input_ids"]
    return np.array([len(row) > limit for row in ids], dtype=bool)
