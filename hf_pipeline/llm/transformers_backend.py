"""transformers `generate`, batched with left padding; JSON schemas enforced token by token with xgrammar.

For machines without vLLM and for tests. Rows are sorted by prompt length before batching so a batch pads little.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessorList

from hf_pipeline.llm.base import Completion, Messages, ModelSpec, Sampling, load_path, resolved_dtype
from hf_pipeline.llm.json_output import warn_unbounded_strings


class TransformersBackend:
    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        path, revision = load_path(spec)
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
        self.tokenizer.padding_side = "left"  # generated tokens must follow every prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = getattr(torch, resolved_dtype(spec, on_gpu=self.device == "cuda"))
        self.model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=dtype).to(self.device).eval()
        eos = self.model.generation_config.eos_token_id
        self.end_ids = set(eos if isinstance(eos, list) else [eos]) | {self.tokenizer.pad_token_id}
        self._grammar_compiler = None

    def generate(
        self, messages: list[Messages], sampling: Sampling, json_schema: dict | None = None
    ) -> list[Completion]:
        grammar = None
        if json_schema is not None:
            warn_unbounded_strings(json_schema)
            grammar = self._compile(json_schema)
        prompts = [self.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        for start in range(0, len(order), self.spec.max_batch_size):
            rows = order[start : start + self.spec.max_batch_size]
            for i, completion in zip(rows, self._generate_batch([prompts[i] for i in rows], sampling, grammar)):
                results[i] = completion
        return results

    def _compile(self, schema: dict):
        import xgrammar as xgr

        if self._grammar_compiler is None:
            # the model's vocab can be larger than the tokenizer's (padding rows); the mask must cover all logits
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.model.config.vocab_size)
            self._grammar_compiler = xgr.GrammarCompiler(info)  # caches compiled schemas itself
        return self._grammar_compiler.compile_json_schema(json.dumps(schema))

    def _generate_batch(self, prompts: list[str], sampling: Sampling, grammar) -> list[Completion]:
        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs = dict(max_new_tokens=sampling.max_tokens, pad_token_id=self.tokenizer.pad_token_id)
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
        else:
            kwargs.update(do_sample=False)
        if sampling.stop:
            kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        if grammar is not None:
            from xgrammar.contrib.hf import LogitsProcessor

            # one processor per generate call: it holds per-row matcher state
            kwargs["logits_processor"] = LogitsProcessorList([LogitsProcessor(grammar)])
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)  # transformers samples from the global generator
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        return [self._completion(ids, n, sampling) for ids, n in zip(new_tokens, prompt_tokens)]

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
