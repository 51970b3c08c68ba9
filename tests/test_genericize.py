"""genericize end to end through the runner, with the real SmolLM2 on both local backends: every row comes back
as schema-valid JSON (the string fields' maxLength lets the grammar close them within max_tokens)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from hf_pipeline.cli import main
from hf_pipeline.llm.json_output import parse_json_completion
from hf_pipeline.stages.genericize import template_schema

QUERIES = [
    {"query_id": "q1", "query": "What is the capital of France?", "source": "test"},
    {"query_id": "q2", "query": "How do I bake sourdough bread at home?", "source": "test"},
    {"query_id": "q3", "query": "Who wrote Pride and Prejudice?", "source": "test"},
]


@pytest.fixture(scope="module")
def query_repo(local_hub, tmp_path_factory):
    from hf_pipeline.hub_io import push_local_dataset

    path = tmp_path_factory.mktemp("q") / "queries.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    push_local_dataset(str(path), "local/genericize-queries", tag="v1")
    return "local/genericize-queries@v1"


@pytest.mark.parametrize(
    "backend",
    [
        "transformers",
        pytest.param("vllm", marks=pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")),
    ],
)
def test_genericize_gives_schema_valid_json_for_every_row(backend, query_repo, capsys):
    from datasets import load_dataset

    from hf_pipeline.llm.base import Completion

    out_repo = f"local/genericized-{backend}"
    code = main([
        "genericize", "--input", query_repo, "--output", out_repo, "--tag", "t", "--set", "mode=teacher",
        "--set", "llm.model=packaged:smollm2", "--set", f"llm.backend={backend}", "--set", "llm.max_tokens=96",
        "--set", "max_field_chars=80",
    ])
    assert code == 0, capsys.readouterr().err
    rows = load_dataset(out_repo, revision="t", split="train")
    assert rows["query_id"] == ["q1", "q2", "q3"]
    schema = template_schema(80)
    for row in rows:
        # every reply parsed: either its template is valid, or only the <fi> grammar check failed, never the JSON
        assert row["status"] not in ("unparseable", "length", "schema_mismatch", "error"), row
        if row["status"] != "ok":
            assert row["status"] in ("no_variables", "nested_tag", "unbalanced_tag", "empty_variable")
            _, status, _ = parse_json_completion(Completion(row["raw_output"], "stop"), schema)
            assert status == "ok"
        else:
            assert row["template_id"] and row["num_variables"] >= 1 and "<fi>" in row["template"]
