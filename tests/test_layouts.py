"""Published layouts in and out: assemble's `nemotron` config (the layout of `fineinstructions/fineinstructions_nemotron`
as third parties report it: `warc_record_id, template_id, instantiated_instruction, answer, synthetic_token_count,
text, token_count`, the document's text on one row of its pairs), and analyze reading that layout as its only input
(`documents` unset: the rows with text are the documents, the rows with an instruction the pairs; judge scores from
row-aligned `judge-NNNNN-of-NNNNN.json` files beside the data files).

assemble runs on test_assemble's hand-made judged pairs and documents (a word tokenizer: counts visible by eye); the
published-layout sample is synthetic: five documents in two files with their judge files.
"""

from __future__ import annotations

import json

import pytest

from test_assemble import DOCS, PAIRS, assemble_args, inputs, run, word_tokenizer, words  # noqa: F401  (fixtures)

NEMOTRON = ["warc_record_id", "template_id", "instantiated_instruction", "answer", "synthetic_token_count", "text", "token_count"]


def test_assemble_publishes_the_nemotron_layout_beside_default(inputs, word_tokenizer, capsys, tmp_path):  # noqa: F811
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    repo = "local/lay-asm"
    code, _, err = run(capsys, *assemble_args(inputs, word_tokenizer, repo, "n", "--set", "nemotron_layout=true"))
    assert code == 0, err
    fi = load_dataset(repo, revision="n", split="train")
    nem = load_dataset(repo, "nemotron", revision="n", split="train")
    assert nem.column_names == NEMOTRON
    # the same pairs, row for row (test_assemble: d1's one 8-token pair, d2's t4, d5's two 6-token pairs)
    assert nem["warc_record_id"] == fi["doc_id"] == ["d1", "d2", "d5", "d5"]
    assert nem["template_id"] == fi["template_id"] and nem["synthetic_token_count"] == fi["token_count"] == [8, 10, 6, 6]
    by_key = {(p["doc_id"], p["template_id"]): p for p in PAIRS}
    for row, text in zip(nem, fi["text"]):
        pair = by_key[(row["warc_record_id"], row["template_id"])]
        assert (row["instantiated_instruction"], row["answer"]) == (pair["instruction"], pair["answer"])
        assert text == f"Instruction: {row['instantiated_instruction']}\n\nAnswer: {row['answer']}"
    # the document's text and tokens on its first row only
    doc_text = {d["doc_id"]: d["text"] for d in DOCS}
    assert nem["text"] == [doc_text["d1"], doc_text["d2"], doc_text["d5"], ""]
    assert nem["token_count"] == [12, 6, 6, 0]
    card = load_card(repo, "n")
    configs = {c["config_name"]: c["data_files"][0]["path"] for c in card.data.configs}
    assert configs == {"default": "data/train-*", "baseline": "data/baseline-*", "nemotron": "data/nemotron-*"}
    assert "as third parties report it" in card.content and "no judge file" in card.content

    # mixes with the published set: same columns, same types (a third party's file written with plain pyarrow)
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    published = pa.table({
        "warc_record_id": ["<urn:uuid:1>", "<urn:uuid:1>"], "template_id": ["x", "y"],
        "instantiated_instruction": ["What is it?", "Why?"], "answer": ["It is.", "Because."],
        "synthetic_token_count": pa.array([7, 5], pa.int64()), "text": ["The document.", ""],
        "token_count": pa.array([3, 0], pa.int64()),
    })
    pq.write_table(published, tmp_path / "part.parquet")
    theirs = load_dataset("parquet", data_files=str(tmp_path / "part.parquet"), split="train")
    mixed = datasets.concatenate_datasets([theirs, nem])
    assert len(mixed) == 6 and mixed.features == nem.features


def test_nemotron_layout_per_shard_and_empty(inputs, word_tokenizer, capsys):  # noqa: F811
    """3 shards (test_assemble: d1, d2 | d3 | d4, d5): a file per shard, each document's text on its first row; a
    shard without pairs writes an empty file with the layout's schema."""
    from datasets import load_dataset
    from huggingface_hub import HfApi

    repo = "local/lay-asm3"
    code, _, err = run(capsys, *assemble_args(inputs, word_tokenizer, repo, "s3", "--num-shards", "3", "--set", "nemotron_layout=true"))
    assert code == 0, err
    nem = load_dataset(repo, "nemotron", revision="s3", split="train")
    assert nem["warc_record_id"] == ["d1", "d2", "d5"] and nem["token_count"] == [12, 6, 6] and all(nem["text"])
    files = HfApi().list_repo_files(repo, repo_type="dataset", revision="s3")
    assert sorted(f for f in files if f.startswith("data/nemotron")) == [f"data/nemotron-{i:05d}-of-00003.parquet" for i in range(3)]


def publish_layout(repo: str, files: list[list[dict]], scores: list[list[int]] | None, folder) -> str:
    """A synthetic set in the published layout: data/train-NNNNN-of-NNNNN.parquet and, when given, the row-aligned
    data/judge-NNNNN-of-NNNNN.json lists of integers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.io.hub import publish

    folder.mkdir(parents=True, exist_ok=True)
    n = len(files)
    paths, extra = [], {}
    for i, rows in enumerate(files):
        path = folder / f"train-{i:05d}-of-{n:05d}.parquet"
        table = pa.Table.from_pylist(rows, schema=pa.schema([
            ("warc_record_id", pa.string()), ("template_id", pa.string()), ("instantiated_instruction", pa.string()),
            ("answer", pa.string()), ("synthetic_token_count", pa.int64()), ("text", pa.string()), ("token_count", pa.int64()),
        ]))
        pq.write_table(table, path, row_group_size=2)  # row groups inside a document's rows
        paths.append(path)
        if scores is not None:
            judge = folder / f"judge-{i:05d}-of-{n:05d}.json"
            judge.write_text(json.dumps(scores[i]))
            extra[f"data/judge-{i:05d}-of-{n:05d}.json"] = judge
    card = "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\nsynthetic\n"
    publish(repo, paths, card, "v1", "layout", extra_files=extra)
    return f"{repo}@v1"


def pair(warc, tid, text=""):
    return {"warc_record_id": warc, "template_id": tid, "instantiated_instruction": f"{tid}?", "answer": "yes",
            "synthetic_token_count": 3, "text": text, "token_count": len(text.split())}


# five documents in two files; the document's text on its first row; scores row-aligned per file
LAYOUT = [
    [pair("w1", "tA", "one two three"), pair("w1", "tB"), pair("w1", "tA"), pair("w2", "tA", "four five"), pair("w2", "tC")],
    [pair("w3", "tB", "six"), pair("w4", "tD", "seven eight"), pair("w4", "tB"), pair("w5", "tB", "nine"), pair("w5", "tB")],
]
SCORES = [[5, 4, 2, 4, 3], [5, 1, 4, 5, 5]]


@pytest.fixture(scope="module")
def layout_repo(local_hub, tmp_path_factory) -> str:
    return publish_layout("local/lay-published", LAYOUT, SCORES, tmp_path_factory.mktemp("layout"))


def analyze(repo: str, output: str, *extra: str, capsys=None) -> dict:
    from hf_pipeline.cli import main
    from hf_pipeline.io.hub import load_card

    code = main(["analyze", "--input", repo, "--output", output, "--tag", "t", "--set", "plots=false", *extra])
    assert code == 0, capsys.readouterr().err if capsys else code
    return load_card(output, "t").data.hf_pipeline["counts"]["stats"]


@pytest.mark.parametrize("shards", [1, 2])
def test_analyze_reads_the_published_layout_with_its_judge_files(layout_repo, shards, capsys, monkeypatch):
    """≥ 4: w1 tA(5) tB(4) [tA(2) not], w2 tA(4) [tC(3) not], w3 tB(5), w4 tB(4) [tD(1) not], w5 tB(5) tB(5):
    tA 2 uses in 2 documents, tB 5 uses in 4 documents (w5's two count once there). Chunks, map batches and
    finalize's batches all cut inside documents' rows."""
    from datasets import load_dataset

    from hf_pipeline.stages import analyze as stage

    monkeypatch.setattr(stage, "FINALIZE_BATCH", 3)

    out = f"local/lay-analysis-{shards}"
    stats = analyze(layout_repo, out, "--num-shards", str(shards), "--chunk-rows", "3", "--batch-size", "2", capsys=capsys)
    assert stats["layout"] == "fineinstructions_nemotron"
    assert stats["power_law"]["documents"] == 5 and stats["status"]["documents"]["with_pairs"] == 5
    assert stats["pairs_in"] == 10 and stats["pairs_analysed"] == 7
    assert stats["judge_score"] == {"5": 4, "4": 3, "3": 1, "2": 1, "1": 1}
    usage = {r["template_id"]: (r["uses"], r["documents"]) for r in load_dataset(out, revision="t", split="train")}
    assert usage == {"tA": (2, 2), "tB": (5, 4)}
    assert stats["templates"]["unique_templates"] == 2 and stats["chunk_position"]["excluded"] == {"no_chunk_index": 7}
    assert (stats["power_law"]["curve"][-1]["x"], stats["power_law"]["curve"][-1]["y"]) == (5, 2)


def test_analyze_without_judge_files_or_filter_counts_every_pair(layout_repo, local_hub, tmp_path, capsys):
    from datasets import load_dataset

    plain = publish_layout("local/lay-published-nojudge", LAYOUT, None, tmp_path)
    cases = ((plain, ()), (layout_repo, ("--set", "min_judge_score=null")), (layout_repo, ("--set", "judge_files=false")))
    for k, (repo, extra) in enumerate(cases):
        out = f"local/lay-all-{k}"
        stats = analyze(repo, out, *extra, capsys=capsys)
        assert stats["pairs_analysed"] == 10 and stats["power_law"]["documents"] == 5
        usage = {r["template_id"]: (r["uses"], r["documents"]) for r in load_dataset(out, revision="t", split="train")}
        assert usage == {"tA": (3, 2), "tB": (5, 4), "tC": (1, 1), "tD": (1, 1)}


def test_analyze_of_our_nemotron_config_agrees_with_the_pipeline_layout(inputs, word_tokenizer, capsys):  # noqa: F811
    """The same assembled pairs analysed twice: over the documents with the judged pairs and `assembled`, and over
    assemble's `nemotron` config alone: same pairs, same per-template uses and documents."""
    from datasets import load_dataset

    judged, docs = inputs
    repo = "local/lay-asm-both"
    assert run(capsys, *assemble_args(inputs, word_tokenizer, repo, "n", "--set", "nemotron_layout=true"))[0] == 0
    ours = analyze(f"{repo}@n", "local/lay-an-nem", "--set", "input_config=nemotron", capsys=capsys)
    pipeline = analyze(judged, "local/lay-an-pipe", "--set", f"documents={docs}", "--set", f"assembled={repo}@n", capsys=capsys)
    assert ours["pairs_analysed"] == pipeline["pairs_analysed"] == 4
    assert ours["power_law"]["documents"] == 3  # the documents with a kept pair: the layout holds no other
    usage = [sorted((r["template_id"], r["uses"], r["documents"]) for r in load_dataset(o, revision="t", split="train"))
             for o in ("local/lay-an-nem", "local/lay-an-pipe")]
    assert usage[0] == usage[1]


def test_analyze_says_what_it_needs_without_documents(inputs, capsys):  # noqa: F811
    from hf_pipeline.cli import main

    judged, _ = inputs
    assert main(["analyze", "--input", judged, "--output", "local/lay-bad"]) == 2
    err = capsys.readouterr().err
    assert "needs config key 'documents'" in err and "fineinstructions_nemotron" in err and "lacks column 'warc_record_id'" in err
