"""How a model's work reaches the card: every model a stage loads is an *engine*, an object with a `usage` dict
(`prompt_tokens`, `cached_prompt_tokens`, `generated_tokens`, `seconds`, `requests`, cumulative) and a JSON-able
`settings()`.

The LLM backends (`hf_pipeline.llm.base.Backend`) are engines and count their own tokens. A model that is not a
backend is wrapped in a `ModelUsage`: `EmbedderUsage` (hf_pipeline/methods/embedder.py), which the embedding stages feed
with the tokens they embed, or `TextClassifier` below, which counts as it is called. The worker finds the engines
in whatever a stage's `setup` returned, at any depth (`worker.engines`), and refuses a torch model there that no
engine accounts for: a stage cannot load a model whose work its card leaves out.
"""

from __future__ import annotations

import time
from typing import Any

from hf_pipeline.llm.base import empty_usage


class ModelUsage:
    """A loaded model (`model`, named `ref` in the card) and its work so far, accounted the way the LLM backends
    account theirs: `prompt_tokens` = tokens the model read, `seconds` = time spent running it, `requests` = texts."""

    def __init__(self, model: Any, ref: str):
        self.model, self.ref = model, ref
        self.usage = empty_usage()

    def add(self, tokens: int, seconds: float, texts: int) -> None:
        self.usage["prompt_tokens"] += int(tokens)
        self.usage["seconds"] = round(self.usage["seconds"] + seconds, 3)
        self.usage["requests"] += texts

    def settings(self) -> dict[str, Any]:
        return {"model": self.ref}


class TextClassifier(ModelUsage):
    """A transformers text-classification pipeline (e.g. collect_queries' moderation model), called as the pipeline
    is: `classifier(texts)` -> its scores per text, with the tokens it read (after truncation) and the time taken
    accounted."""

    def __call__(self, texts: list[str]) -> list:
        if not texts:
            return []
        started = time.perf_counter()
        scores = self.model(texts)
        seconds = time.perf_counter() - started
        # the pipeline was built with truncation=True: it read at most the model's max length per text
        ids = self.model.tokenizer(texts, truncation=True, return_attention_mask=False)["input_ids"]
        self.add(sum(len(row) for row in ids), seconds, len(texts))
        return scores

    def settings(self) -> dict[str, Any]:
        return {"backend": "transformers-pipeline", "task": self.model.task, "model": self.ref, "device": str(self.model.device)}
