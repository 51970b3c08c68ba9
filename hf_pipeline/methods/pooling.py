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

`gaussian_chunk_masks` and `encode_masked_chunks` (end of the module) apply the same kernels at the *input*
attention mask instead, for the silver data of the matcher's second fine-tuning round (§3.2).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Module
from sentence_transformers.sentence_transformer.modules import Pooling
from torch import Tensor

logger = logging.getLogger(__name__)

GAUSSIAN_EMBEDDINGS = "gaussian_embeddings"  # features key holding the (batch, K+1, dim) tensor


def kernel_offsets(mask: Tensor, k: int, sigma: float) -> Tensor:
    """z_{k,t} = (t - c_k) / (σT) for a float (batch, seq) mask -> (batch, K, seq), in the mask's dtype.

    t is a token's 1-based rank among its row's unmasked tokens (padding gets a stale rank: callers mask
    it), T the row's unmasked count and c_k = k/(K+1)·T. Shared by pooling and the round-2 chunk masks, so
    chunk k's mask is exactly the tokens kernel k weights most."""
    T = mask.sum(dim=1, keepdim=True)  # (B, 1) effective length
    t = mask.cumsum(dim=1)  # (B, L)
    rho = torch.arange(1, k + 1, device=mask.device, dtype=mask.dtype) / (k + 1)  # (K,)
    c = rho * T  # (B, K) centres c_k = ρ_k T
    return (t.unsqueeze(1) - c.unsqueeze(2)) / (sigma * T.clamp(min=1.0)).unsqueeze(2)


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

    z = kernel_offsets(mf, k, sigma)  # (B, K, L)
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


# ---------------------------------------------------------------------------------------------
# Masked chunks (paper §3.2, second round of fine-tuning the embedder)
#
# "We create training instances by applying Gaussian weights at the input attention mask and only
# attending to tokens with a weight of ≥ 0.5 and producing K distinct local embeddings with these
# attention masks to retrieve and produce hard negative and hard positive examples once more."
#
# The kernels are Appendix B's (same t, T and c_k as `gaussian_pool`), but *unnormalised*, so the
# threshold reads as "at least half the kernel's peak": |t - c_k| ≤ σT·sqrt(2 ln 2) ≈ 1.18·σT, i.e.
# with σ = 0.05 each chunk spans ≈ 11.8% of the document's tokens around k/(K+1) of it. Chunk k is
# then exactly the set of tokens that kernel k of the Gaussian pooling layer (which round 2 trains)
# weights most, so a chunk label produced here names the pooled vector that the training loss uses.


def gaussian_chunk_masks(
    attention_mask: Tensor,
    k: int = 5,
    sigma: float = 0.05,
    threshold: float = 0.5,
    always_attend: Tensor | None = None,
) -> Tensor:
    """(batch, seq) mask -> (batch, K, seq) bool: the tokens chunk k = 1..K attends to.

    A token is in chunk k when it is unmasked and its unnormalised Gaussian weight
    exp(-½((t - c_k)/(σT))²) is ≥ `threshold`, with t its 1-based rank among the row's unmasked
    tokens, T their number and c_k = k/(K+1)·T (the conventions of `gaussian_pool`, so padding side
    and holes in the mask do not matter). Padding is never attended. Tokens set in `always_attend`
    (batch, seq), e.g. the tokenizer's special tokens, are attended by every chunk when unmasked;
    they still count in t and T, as in `gaussian_pool`. A chunk can be empty when T is small
    (fewer than ~1/(2.4σ) tokens leave gaps between the peaks): callers must check.

    Computed in float64: the mask is small (B·K·L) and a token sitting on the threshold should not
    flip with rounding.
    """
    if k < 1 or sigma <= 0 or not 0.0 < threshold <= 1.0:
        raise ValueError(f"need k >= 1, sigma > 0, 0 < threshold <= 1; got k={k}, sigma={sigma}, threshold={threshold}")
    m = attention_mask.bool()
    mf = m.double()
    z = kernel_offsets(mf, k, sigma)  # (B, K, L)
    chunks = (torch.exp(-0.5 * z.square()) >= threshold) & m.unsqueeze(1)
    if always_attend is not None:
        chunks |= (always_attend.bool() & m).unsqueeze(1)
    return chunks


class MaskedChunks(NamedTuple):
    """What `encode_masked_chunks` returns for n texts and K chunks."""

    embeddings: np.ndarray  # (n, K, dim) float32, L2-normalised; zeros for a chunk without a text token
    spans: np.ndarray  # (n, K, 2) int64: [start, end) characters of the chunk in its text; (0, 0) when empty
    num_tokens: np.ndarray  # (n, K) int64: text tokens in the chunk (special tokens not counted)


def encode_masked_chunks(
    model: SentenceTransformer,
    texts: list[str],
    k: int = 5,
    sigma: float = 0.05,
    threshold: float = 0.5,
    batch_size: int = 32,
) -> MaskedChunks:
    """K local embeddings per text, each from a forward pass that attends only to its chunk's tokens.

    Each text is tokenized once as the model sees it (its tokenizer, special tokens, truncation at
    `model.max_seq_length`); `gaussian_chunk_masks` picks each chunk's tokens. Special tokens
    ([CLS]/[SEP], <s>/</s>) stay attended in every chunk: the encoder was only ever trained on
    sequences framed by them, and a [CLS]-pooling model reads its embedding off [CLS]. So chunk k's
    sequence is [CLS] + its tokens + [SEP], exactly what the tokenizer makes of the chunk alone.

    The forward pass runs on that sequence packed on its own, not on the full-length row with the
    chunk as attention mask: attention sees the same tokens either way, but the packed sequence
    counts positions from the chunk's start, as when the chunk is encoded alone. That is what we
    want: the template index holds standalone texts encoded from position 0, so a chunk vector is
    in the same space; a chunk of a long document would otherwise sit at positions the model only
    sees after thousands of unattended tokens. It also costs ≈ 0.6·T tokens per document with the
    paper's K = 5, σ = 0.05, instead of K full-length passes (5·T tokens, quadratic attention).

    Pooling is the model's own (mean pooling for MiniLM and the pipeline's fine-tuned matchers; a
    `GaussianPooling` module's sentence embedding is its global mean), over the chunk's sequence,
    so a chunk's vector equals `model.encode` of the chunk's tokens alone. Vectors are L2-normalised.
    `spans` are character offsets from the tokenizer's offset mapping (a fast tokenizer is needed),
    from the first text token's start to the last one's end, so `text[start:end]` shows the chunk.
    """
    n = len(texts)
    dim = int(model.get_embedding_dimension())
    embeddings = np.zeros((n, k, dim), dtype=np.float32)
    spans = np.zeros((n, k, 2), dtype=np.int64)
    num_tokens = np.zeros((n, k), dtype=np.int64)
    if not n:
        return MaskedChunks(embeddings, spans, num_tokens)
    tokenizer = model.tokenizer
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("encode_masked_chunks needs a fast tokenizer (character offsets of the chunks)")
    enc = tokenizer(
        texts,
        truncation=True,
        max_length=model.max_seq_length,
        padding=True,
        return_tensors="pt",
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
    )
    attention = enc["attention_mask"].bool()
    special = enc["special_tokens_mask"].bool() & attention  # the tokenizer flags padding as special too
    chunks = gaussian_chunk_masks(attention, k=k, sigma=sigma, threshold=threshold, always_attend=special)
    text_tokens = chunks & ~special.unsqueeze(1)  # (n, K, L)
    num_tokens[:] = text_tokens.sum(dim=-1).numpy()
    offsets = enc["offset_mapping"]  # (n, L, 2)
    has_types = "token_type_ids" in enc

    sequences: list[dict[str, list[int]]] = []
    where: list[tuple[int, int]] = []
    for i in range(n):
        for j in range(k):
            if not num_tokens[i, j]:
                continue
            positions = text_tokens[i, j].nonzero().squeeze(1)
            spans[i, j] = (int(offsets[i, positions[0], 0]), int(offsets[i, positions[-1], 1]))
            keep = chunks[i, j]
            seq = {"input_ids": enc["input_ids"][i][keep].tolist()}
            if has_types:
                seq["token_type_ids"] = enc["token_type_ids"][i][keep].tolist()
            sequences.append(seq)
            where.append((i, j))

    # longest first, as sentence-transformers' encode does: padding stays small within a batch
    order = sorted(range(len(sequences)), key=lambda s: -len(sequences[s]["input_ids"]))
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        features = tokenizer.pad([sequences[s] for s in rows], return_tensors="pt")
        features = {name: value.to(model.device) for name, value in features.items()}
        with torch.inference_mode():
            vectors = model(features)["sentence_embedding"].float()
        vectors = torch.nn.functional.normalize(vectors, p=2, dim=-1).cpu().numpy()
        for s, vector in zip(rows, vectors):
            embeddings[where[s]] = vector
    return MaskedChunks(embeddings, spans, num_tokens)
