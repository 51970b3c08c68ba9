"""Chat examples -> token ids with the loss on the assistant turn only (supervised fine-tuning of the students).

The genericizer and instantiator are fine-tuned on conversations whose last message is the teacher's reply
(paper §3.1, §3.3). Only that reply is learned: the prompt (the query, or the template + document, which is
most of the tokens) carries no loss. We build the ids exactly as generation sees them: the chat template
rendered up to the generation prompt, tokenized, then the reply, tokenized on its own and appended. Tokenizing
the two halves separately (rather than the whole text once) is what makes the boundary exact: at inference
the model continues from the prompt's own tokens, and a BPE merge across the seam could otherwise move it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IGNORE_INDEX = -100  # labels with this value carry no loss (torch CrossEntropyLoss's ignore_index)


@dataclass
class ChatTokens:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX over the prompt, the token ids over the assistant reply
    prompt_tokens: int


class ChatExampleError(ValueError):
    """A conversation that cannot be a training example; `reason` is its drop reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def tokenize_chat(tokenizer: Any, messages: list[dict], max_length: int) -> ChatTokens:
    """Token ids and labels for one conversation whose last message is the assistant's reply.

    Raises ChatExampleError with reason `no_assistant_turn`, `empty_reply`, `template_mismatch` (the chat
    template renders the prompt differently once the reply is appended, so the seam is unknown) or
    `too_long` (over `max_length` tokens: dropped and counted, never cut, since a cut reply teaches the model
    to stop mid-answer).
    """
    if not messages or messages[-1].get("role") != "assistant":
        raise ChatExampleError("no_assistant_turn", "the last message is not the assistant's reply")
    if not (messages[-1].get("content") or "").strip():
        raise ChatExampleError("empty_reply", "the assistant's reply is empty")
    prompt_text = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ChatExampleError("template_mismatch", "the chat template renders the prompt differently with the reply appended")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(reply_ids) > max_length:
        raise ChatExampleError("too_long", f"{len(prompt_ids) + len(reply_ids)} tokens > max_length {max_length}")
    return ChatTokens(prompt_ids + reply_ids, [IGNORE_INDEX] * len(prompt_ids) + reply_ids, len(prompt_ids))


def pad_batch(rows: list[dict], pad_token_id: int) -> dict[str, Any]:
    """Right-pad `input_ids`/`labels` rows into tensors with an attention mask (labels padded with IGNORE_INDEX)."""
    import torch

    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        input_ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
