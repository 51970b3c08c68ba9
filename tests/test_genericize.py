"""genericize end to end through the runner, with the real SmolLM2 on both local backends: every row comes back
as schema-valid JSON (the string fields' maxLength lets the grammar close them within max_tokens)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from hf_pipeline.cli import main
from hf_pipeline.llm.json_output import parse_json_completion
from hf_pipeline.methods.genericizing import template_schema

QUERIES = [
    {"query_id": "q1", "query": "What is the capital of France?", "source": "test"},
    {"query_id": "q2", "query": "How do I bake sourdough bread at home?", "source": "test"},
    {"query_id": "q3", "query": "Who wrote Pride and Prejudice?", "source": "test"},
]


@pytest.fixture(scope="module")
def query_repo(local_hub, tmp_path_factory):
    from hf_pipeline.io.hub import push_local_dataset

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


# ---------------------------------------------------------------- constrain_format: the query's own words, <fi> spans


def test_template_pattern_is_the_query_with_runs_replaced():
    import re

    from hf_pipeline.methods.genericizing import dropped_words, template_pattern

    query = "What is the capital of France?"
    pattern = re.compile(template_pattern(query))
    variable = "<fi>name of a country</fi>"
    for ok in (f"What is the capital of {variable}?", f"What is the <fi>a fact</fi> of {variable}?",
               "What is <fi>a question about a place</fi>?", f"<fi>a question</fi> of {variable}?",
               "What is the capital <fi>a</fi> <fi>b</fi>?"):  # two variables for a run of two words
        assert pattern.fullmatch(ok) and dropped_words(ok, query) is None, ok
    for bad in (query,  # at least one variable
                f"What is the capital of {variable}",  # punctuation is kept
                f"What was the capital of {variable}?",  # the query's words only
                f"What is the capital of France {variable}?",  # a variable replaces words, it is not added
                "What is the capital of <fi>a very very long description of one country</fi>?",  # 5 words at most
                "What is the capital of <fi></fi>?"):
        assert not pattern.fullmatch(bad), bad
    # the grammar lets a word be left out (a regex quadratic in the query otherwise); the check catches it
    left_out = f"What is capital of {variable}?"
    assert pattern.fullmatch(left_out) and "capital" in dropped_words(left_out, query)
    assert dropped_words("What is the capital <fi>a</fi> <fi>b</fi> <fi>c</fi>?", query)  # more variables than words
    # a word the pattern cannot spell (a quote) can only be replaced; too long a query gets no pattern
    quoted = re.compile(template_pattern('What does "carpe diem" mean?'))
    assert quoted.fullmatch("What does <fi>a Latin phrase</fi> mean?") and not quoted.fullmatch('What does "carpe diem" <fi>x</fi>?')
    assert template_pattern(" ".join(["word"] * 40), max_units=32) is None and template_pattern("?!") is None


def shipped_queries(n: int) -> list[dict]:
    """n distinct queries of the shipped sample, spread over it."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "samples" / "queries" / "chatterbot.jsonl"
    texts = list(dict.fromkeys(json.loads(line)["text"] for line in path.read_text().splitlines()))
    return [{"query_id": f"s{i}", "query": texts[i], "source": "chatterbot"} for i in range(0, len(texts), len(texts) // n)][:n]


def test_constrained_smollm2_writes_templates_of_the_query(local_hub, tmp_path, capsys):
    """SmolLM2 (transformers, one generate call with a grammar per query) on 6 shipped queries: every reply is a
    template whose <fi> variables validate and whose other words are the query's, in order."""
    import re

    from datasets import load_dataset

    from hf_pipeline.io.hub import push_local_dataset
    from hf_pipeline.methods.genericizing import dropped_words, template_pattern
    from hf_pipeline.methods.text.templates import parse_template

    queries = shipped_queries(6)
    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in queries))
    push_local_dataset(str(path), "local/genericize-shipped", tag="v1")
    code = main([
        "genericize", "--input", "local/genericize-shipped@v1", "--output", "local/genericized-constrained", "--tag", "t",
        "--set", "mode=teacher", "--set", "constrain_format=true", "--set", "llm.model=packaged:smollm2",
        "--set", "llm.backend=transformers", "--set", "llm.max_tokens=160", "--set", "max_field_chars=200",
    ])
    assert code == 0, capsys.readouterr().err
    rows = load_dataset("local/genericized-constrained", revision="t", split="train")
    assert rows["query_id"] == [q["query_id"] for q in queries]
    for query, row in zip(queries, rows):
        assert row["status"] in ("ok", "dropped_words"), row
        template = row["template"]
        assert re.fullmatch(template_pattern(query["query"]), template), row  # the query's words, in order
        assert parse_template(template).num_variables == row["num_variables"] >= 1
        assert row["compatible_document_description"]
        assert (dropped_words(template, query["query"]) is None) == (row["status"] == "ok")
    assert rows["status"].count("ok") >= 4, rows["status"]
