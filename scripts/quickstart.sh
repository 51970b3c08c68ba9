#!/usr/bin/env bash
# The offline quickstart: set up, start the local Hub, publish the shipped samples, run the whole pipeline on them.
# Extra arguments go to the pipeline command, e.g. `bash scripts/quickstart.sh --sample-size 24`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-vllm  # the quickstart's LLM stages run on transformers (see its config)
export HF_HOME="$PWD/.hub/hf_home" HF_HUB_DISABLE_TELEMETRY=1
# torch's OpenMP threads sleep instead of spinning while they wait: with spinning, SmolLM2 runs ~10x slower as
# soon as another process takes one of 2 cores (the waiting thread burns the core the other thread needs).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
run() { .venv/bin/python scripts/run_stage.py "$@"; }
run hub start
eval "$(run hub env)"
# every stage in order, each publishing a versioned repo on the local Hub (see the config for what runs on what)
run pipeline --config hf_pipeline/configs/quickstart_pipeline.yaml "$@"
echo
echo "The local Hub keeps running so you can load the outputs; in Python, with the same environment:"
echo "  eval \"\$(.venv/bin/python scripts/run_stage.py hub env)\""
echo "  python -c 'from datasets import load_dataset; print(load_dataset(\"local/fineinstructions-sample\", revision=\"TAG\"))'  # TAG as printed above"
echo "Stop it with: .venv/bin/python scripts/run_stage.py hub stop"
