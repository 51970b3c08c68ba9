#!/usr/bin/env bash
# The offline quickstart: set up, start the local Hub, publish the shipped sample, run the pipeline on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HOME="$PWD/.hub/hf_home" HF_HUB_DISABLE_TELEMETRY=1
run() { .venv/bin/python scripts/run_stage.py "$@"; }
run hub start
eval "$(run hub env)"
run hub push samples/queries/chatterbot.jsonl local/chatterbot-queries --tag sample-v1
run collect_queries --config hf_pipeline/configs/quickstart.yaml
# matching (§3.2): the shipped Wikipedia sample against hand-written templates (samples/templates/README.md)
run hub push samples/documents/wikipedia.jsonl local/wikipedia-sample --tag sample-v1
run hub push samples/templates/handmade.jsonl local/handmade-templates --tag sample-v1
run build_index --config hf_pipeline/configs/quickstart_build_index.yaml
run match --config hf_pipeline/configs/quickstart_match.yaml
.venv/bin/python - <<'PY'
from datasets import load_dataset
from hf_pipeline.hub_io import load_card
tag = load_card("local/fi-queries").data.hf_pipeline["tag"]
ds = load_dataset("local/fi-queries", revision=tag, split="train")
print(f"\nloaded {len(ds)} queries with load_dataset('local/fi-queries', revision='{tag}'); first three:")
for row in ds.select(range(3)):
    print(f"  [{row['source']}] {row['query']}")

templates = {r["template_id"]: r["template"] for r in load_dataset("local/handmade-templates", revision="sample-v1", split="train")}
titles = {r["doc_id"]: r["title"] for r in load_dataset("local/wikipedia-sample", revision="sample-v1", split="train")}
tag = load_card("local/fi-matches").data.hf_pipeline["tag"]
pairs = load_dataset("local/fi-matches", revision=tag, split="train")
print(f"\nloaded {len(pairs)} (document, template) pairs with load_dataset('local/fi-matches', revision='{tag}'); a few:")
for row in pairs.select(range(0, len(pairs), max(1, len(pairs) // 5))):
    print(f"  {titles[row['doc_id']][:28]:<28} chunk {row['chunk_index']} cos {row['score']:.2f}  {templates[row['template_id']]}")
PY
echo
echo "The local Hub keeps running so you can load the outputs; in Python, with the same environment:"
echo "  eval \"\$(.venv/bin/python scripts/run_stage.py hub env)\""
echo "  python -c 'from datasets import load_dataset; print(load_dataset(\"local/fi-queries\", revision=\"TAG\"))  # TAG as printed above'"
echo "Stop it with: .venv/bin/python scripts/run_stage.py hub stop"
