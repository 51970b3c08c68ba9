"""transformers `generate`, batched with left padding; JSON schemas enforced token by token with xgrammar.

For machines without vLLM and for tests. Rows are sorted by prompt length before batching so a batch pads little
(no prefix cache here, so nothing is gained by keeping a document's rows together). With a schema per row, one
`generate` call decodes the whole batch, each row under its own grammar (xgrammar's HF logits processor takes one
compiled grammar per batch row). Grammars are compiled without free whitespace (`any_whitespace=False`): a small
model can otherwise spend its whole `max_tokens` on whitespace between JSON tokens.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from hf_pipeline.llm.base import Backend, Completion, Messages, Sampling, chat_token_ids, load_path, resolve_model, resolved_dtype, split_too_long
from hf_pipeline.llm.config import LLMConfig

# compiled grammars kept for reuse; with a schema per row (instantiate's constrain_format) most are used once
GRAMMAR_CACHE_BYTES = 256 * 2**20


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, config: LLMConfig):
        super().__init__(config)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        path, revision = load_path(config)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        self.tokenizer.padding_side = "left"  # generated tokens must follow every prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.dtype = resolved_dtype(config, on_gpu=self.device == "cuda")
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=getattr(torch, self.dtype))
        self.model = model.to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.end_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        self.context_length = resolve_model(config).max_model_len or getattr(self.model.config, "max_position_embeddings", None)
        self._grammar_compiler = None

    def settings(self) -> dict:
        return {
            **super().settings(),
            "device": self.device,
            "dtype": self.dtype,
            "max_model_len": self.context_length,
            "max_batch_size": self.config.max_batch_size,
            "prefix_caching": False,
            "structured_outputs": {"library": "xgrammar", "any_whitespace": False, "per_row_grammars_per_call": True},
        }

    def _generate(self, messages: list[Messages], sampling: Sampling, schemas: list[dict] | None) -> list[Completion]:
        token_ids = chat_token_ids(self.tokenizer, messages)
        fit, refused = split_too_long(token_ids, self.context_length)
        results: list[Completion | None] = [refused.get(i) for i in range(len(messages))]
        grammars = self._compile_rows(schemas, fit) if schemas is not None else None
        order = sorted(fit, key=lambda i: len(token_ids[i]))
        for start in range(0, len(order), self.config.max_batch_size):
            rows = order[start : start + self.config.max_batch_size]
            row_grammars = [grammars[i] for i in rows] if grammars is not None else None
            for i, completion in zip(rows, self._generate_batch([token_ids[i] for i in rows], sampling, row_grammars)):
                results[i] = completion
        return results

    def _compile_rows(self, schemas: list[dict], rows: list[int]) -> dict[int, object]:
        """{row: compiled grammar}, each distinct schema compiled once."""
        import xgrammar as xgr

        if self._grammar_compiler is None:
            # the model's vocab can be larger than the tokenizer's (padding rows); the mask must cover all logits
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self._grammar_compiler = xgr.GrammarCompiler(info, cache_limit_bytes=GRAMMAR_CACHE_BYTES)
        compiled: dict[str, object] = {}
        grammars = {}
        for i in rows:
            key = json.dumps(schemas[i], sort_keys=True)
            if key not in compiled:
                compiled[key] = self._grammar_compiler.compile_json_schema(key, any_whitespace=False)
            grammars[i] = compiled[key]
        return grammars

    def _generate_batch(self, token_ids: list[list[int]], sampling: Sampling, grammars: list | None) -> list[Completion]:
        batch = self.tokenizer.pad({"input_ids": token_ids}, padding=True, return_tensors="pt").to(self.device)
        longest = max(len(ids) for ids in token_ids)
        max_new = sampling.max_tokens if self.context_length is None else min(sampling.max_tokens, self.context_length - longest)
        kwargs = dict(max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if grammars is not None:
            from xgrammar.contrib.hf import LogitsProcessor

            # one processor per generate call (it holds per-row matcher state), one grammar per batch row
            kwargs["logits_processor"] = LogitsProcessorList([LogitsProcessor(list(grammars))])
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # transformers samples from the global generator
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
        return [self._completion(new, len(ids), sampling) for new, ids in zip(new_tokens, token_ids)]

    def _completion(self, ids: list[int], prompt_tokens: int, sampling: Sampling) -> Completion:
        # a finished row ends with EOS, then padding; a row that never ended ran to max_tokens
        end = next((k for k, t in enumerate(ids) if t in self.end_ids), None)
        text = self.tokenizer.decode(ids if end is None else ids[:end], skip_special_tokens=True)
        finish = "length" if end is None else "stop"
        cuts = [text.find(s) for s in sampling.stop if s in text]
        if cuts:
            text, finish = text[: min(cuts)], "stop"
        n = len(ids) if end is None else end + 1
        return Completion(text=text, finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=n)
