#!/usr/bin/env python
"""Benchmark: our LLM backends vs. the raw library call doing the same work, side by side in one run.

    .venv/bin/python scripts/bench_generate.py [--prompts 32] [--max-tokens 128] [--repeats 2]
                                               [--backends transformers vllm openai constrained]
                                               [--constrained-rows 8] [--constrained-max-tokens 120]

Model: SmolLM2-135M-Instruct (the offline default, float32 on CPU). The same chat prompts, greedy, per backend:
  transformers  ours: TransformersBackend.generate (one batch of --prompts rows)
                raw:  apply_chat_template + left-padded model.generate on the same model object
  vllm          ours: VLLMBackend.generate      raw: LLM.chat on the same engine
  openai        ours: OpenAIBackend.generate (max_concurrency = --prompts) against a local vLLM server
                raw:  the `openai` client's AsyncOpenAI, all requests at once, against the same server
  constrained   instantiate-like constrained decoding on transformers: --constrained-rows (document, template) pairs
                in teacher mode with constrain_format, so every row has its own grammar; one batched generate call
                vs one call per row, same rows, greedy; grammars compiled beforehand (cold compile time printed)
Each timing is the best of --repeats after a short warm-up call each; ours and raw alternate. Prints generated tokens/s
for both and ours as a share of raw. The load average is printed too: on a shared machine, other processes'
load changes every figure (ratios, taken in the same minutes, suffer less).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

TOPICS = ["a lighthouse", "the moon", "a lost key", "bread", "rain", "a violin", "a fox", "the sea"]


def prompts(n: int) -> list[list[dict]]:
    return [
        [{"role": "user", "content": f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]} (version {i})."}]
        for i in range(n)
    ]


WARMUP_TOKENS = 8


def compare(name: str, ours, raw, max_tokens: int, repeats: int) -> None:
    """`ours(limit)` and `raw(limit)` generate up to `limit` tokens per row and return how many they generated."""
    ours(WARMUP_TOKENS)  # short warm-ups, then alternate so both see the same machine load
    raw(WARMUP_TOKENS)
    times = {"ours": [], "raw": []}
    tokens = {}
    for repeat in range(repeats):
        pair = [("ours", ours), ("raw", raw)]
        for label, run in pair if repeat % 2 == 0 else pair[::-1]:  # neither always runs first
            start = time.perf_counter()
            tokens[label] = run(max_tokens)
            times[label].append(time.perf_counter() - start)
    ours_tps = tokens["ours"] / min(times["ours"])
    raw_tps = tokens["raw"] / min(times["raw"])
    print(
        f"{name:13s} ours {ours_tps:7.1f} tok/s   raw {raw_tps:7.1f} tok/s   ours/raw {ours_tps / raw_tps:5.2f}"
        f"   (tokens {tokens['ours']} vs {tokens['raw']}, load {os.getloadavg()[0]:.1f})",
        flush=True,
    )


def bench_transformers(messages, max_tokens: int, repeats: int) -> None:
    import torch

    from hf_pipeline.llm import Sampling, default_offline_model, load_backend

    backend = load_backend(default_offline_model("transformers", max_batch_size=len(messages)))
    model, tokenizer = backend.model, backend.tokenizer

    def ours(limit: int) -> int:
        return sum(c.completion_tokens for c in backend.generate(messages, Sampling(max_tokens=limit)))

    def raw(limit: int) -> int:
        texts = [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **batch, max_new_tokens=limit, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        new = out[:, batch["input_ids"].shape[1] :]
        # tokens up to and including each row's first EOS/pad, as ours counts them
        ended = (new == tokenizer.pad_token_id).int()
        first_end = torch.where(ended.any(1), ended.argmax(1) + 1, torch.full_like(ended[:, 0], new.shape[1]))
        return int(first_end.sum())

    compare("transformers", ours, raw, max_tokens, repeats)


def bench_vllm(messages, max_tokens: int, repeats: int) -> None:
    from vllm import SamplingParams

    from hf_pipeline.llm import Sampling, default_offline_model, load_backend

    backend = load_backend(default_offline_model("vllm"))

    def ours(limit: int) -> int:
        return sum(c.completion_tokens for c in backend.generate(messages, Sampling(max_tokens=limit)))

    def raw(limit: int) -> int:
        outs = backend.llm.chat(messages, SamplingParams(max_tokens=limit, temperature=0.0), use_tqdm=False)
        return sum(len(o.outputs[0].token_ids) for o in outs)

    try:
        compare("vllm", ours, raw, max_tokens, repeats)
    finally:
        backend.close()


def bench_openai(messages, max_tokens: int, repeats: int) -> None:
    from openai import AsyncOpenAI

    from hf_pipeline.llm import LLMConfig, Sampling, default_offline_model, load_backend
    from hf_pipeline.llm.vllm_server import VLLMServer

    log_path = Path(tempfile.mkdtemp(prefix="bench_generate_")) / "server.log"
    server = VLLMServer(default_offline_model("vllm"), "smollm2", log_path)
    started = time.perf_counter()
    url = server.start()
    print(f"{'':13s} (vLLM server healthy after {time.perf_counter() - started:.0f} s; log {log_path})", flush=True)
    try:
        config = LLMConfig(backend="openai", model="smollm2", base_url=f"{url}/v1", max_concurrency=len(messages))
        backend = load_backend(config)

        def ours(limit: int) -> int:
            return sum(c.completion_tokens for c in backend.generate(messages, Sampling(max_tokens=limit)))

        async def raw_async(limit: int) -> int:
            async with AsyncOpenAI(base_url=f"{url}/v1", api_key="unused") as client:
                calls = [
                    client.chat.completions.create(model="smollm2", messages=m, max_tokens=limit, temperature=0.0)
                    for m in messages
                ]
                return sum(r.usage.completion_tokens for r in await asyncio.gather(*calls))

        compare("openai", ours, lambda n: asyncio.run(raw_async(n)), max_tokens, repeats)
    finally:
        server.stop()


def constrained_rows(n: int, max_tokens: int):
    """n instantiate rows (teacher prompt, constrain_format) over the sample documents and templates, a document's
    rows adjacent (two templates per document): (messages, one schema per row, the stage config)."""
    import json

    from hf_pipeline.llm.config import LLMConfig
    from hf_pipeline.llm.json_output import nullable
    from hf_pipeline.methods.pairs import user_message
    from hf_pipeline.stages.instantiate import InstantiateConfig, pair_schema

    samples = Path(__file__).resolve().parent.parent / "samples"
    documents = [json.loads(line)["text"] for line in (samples / "documents" / "wikipedia.jsonl").open()]
    templates = [json.loads(line)["template"] for line in (samples / "templates" / "handmade.jsonl").open()]
    config = InstantiateConfig(
        documents="d", mode="teacher", max_document_chars=600, constrain_format=True,
        max_variable_words=4, llm=LLMConfig(model="packaged:smollm2", backend="transformers", max_tokens=max_tokens),
    )
    messages, schemas = [], []
    for i in range(n):
        document, template = documents[i // 2][: config.max_document_chars], templates[i]
        schemas.append(nullable(pair_schema(config, template, document)))
        messages.append([{"role": "user", "content": user_message(template, document, "teacher")}])
    assert len({json.dumps(s) for s in schemas}) == n, "every row should have its own grammar"
    return messages, schemas, config


def bench_constrained(rows: int, max_tokens: int, repeats: int) -> None:
    from collections import Counter

    from hf_pipeline.llm import Sampling, default_offline_model, load_backend, parse_json_completion

    messages, schemas, _ = constrained_rows(rows, max_tokens)
    backend = load_backend(default_offline_model("transformers", max_batch_size=rows))
    started = time.perf_counter()
    backend._compile_rows(schemas, list(range(rows)))  # cold compile; both runs below reuse the cached grammars
    compile_s = time.perf_counter() - started
    sampling = Sampling(max_tokens=max_tokens)

    def batched():
        return backend.generate(messages, sampling, schemas)

    def per_row():
        return [backend.generate([m], sampling, s)[0] for m, s in zip(messages, schemas)]

    backend.generate(messages[:1], Sampling(max_tokens=WARMUP_TOKENS), schemas[:1])
    times, results = {"batched": [], "per_row": []}, {}
    for repeat in range(repeats):
        pair = [("batched", batched), ("per_row", per_row)]
        for label, run in pair if repeat % 2 == 0 else pair[::-1]:
            start = time.perf_counter()
            results[label] = run()
            times[label].append(time.perf_counter() - start)
    print(f"constrained   {rows} rows, {rows} grammars (cold compile {compile_s:.1f} s), max_tokens {max_tokens}, greedy, "
          f"best of {repeats}", flush=True)
    for label in ("batched", "per_row"):
        done = results[label]
        tokens = sum(c.completion_tokens for c in done)
        statuses = Counter(parse_json_completion(c, s)[1] for c, s in zip(done, schemas))
        print(f"{'':13s} {label:8s} {min(times[label]):6.1f} s   {tokens} tokens   {tokens / min(times[label]):6.1f} tok/s"
              f"   statuses {dict(statuses)}", flush=True)
    print(f"{'':13s} per_row / batched time: {min(times['per_row']) / min(times['batched']):.2f}x"
          f"   (load {os.getloadavg()[0]:.1f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm", "openai"],
                        choices=["transformers", "vllm", "openai", "constrained"])
    parser.add_argument("--constrained-rows", type=int, default=8)
    parser.add_argument("--constrained-max-tokens", type=int, default=120)
    args = parser.parse_args()
    messages = prompts(args.prompts)
    benches = {"transformers": bench_transformers, "vllm": bench_vllm, "openai": bench_openai}
    if set(args.backends) & set(benches):
        print(f"{args.prompts} prompts x {args.max_tokens} max tokens, greedy, best of {args.repeats}", flush=True)
    for name in args.backends:
        if name == "constrained":
            bench_constrained(args.constrained_rows, args.constrained_max_tokens, args.repeats)
        else:
            benches[name](messages, args.max_tokens, args.repeats)


if __name__ == "__main__":  # vLLM starts worker processes that re-import this file
    main()
