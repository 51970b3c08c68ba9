"""The pipeline command: every entry's keys checked before the first stage runs; each stage runs in its own process
from a typed spec (no config file written in between) and the next reads its published repo@tag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hf_pipeline.errors import PipelineError
from hf_pipeline.cli.pipeline import run_pipeline


def write_queries(tmp_path: Path) -> Path:
    path = tmp_path / "queries" / "q.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["How do tides work?", "how do tides work", "Why is the sky blue?"]))
    return path


def test_a_bad_key_in_a_later_entry_fails_before_anything_runs(local_hub, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    out = f"local/pipe-bad-{tmp_path.name[-8:]}"
    config = {"stages": {
        "collect_queries": {"output": out, "sources": [{"name": "q", "dataset": str(write_queries(tmp_path)), "column": "text"}]},
        "second": {"stage": "collect_queries", "output": f"{out}-2", "no_such_key": 1, "sources": [{"name": "p", "dataset": "{collect_queries}", "column": "query"}]},
    }}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(PipelineError, match="unknown config key 'no_such_key'"):
        run_pipeline(str(path))
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info(out)  # the first stage never ran


def test_entries_run_in_order_each_reading_the_previous_output(local_hub, tmp_path, capsys):
    from datasets import load_dataset

    out = f"local/pipe-{tmp_path.name[-8:]}"
    config = {"stages": {
        "collect_queries": {"output": out, "dedupe_partitions": 1,
                            "sources": [{"name": "q", "dataset": str(write_queries(tmp_path)), "column": "text"}]},
        # the same stage again, on the first one's published output ({collect_queries} = its repo@tag)
        "again": {"stage": "collect_queries", "output": f"{out}-again", "dedupe": "exact", "dedupe_partitions": 1,
                  "sources": [{"name": "round2", "dataset": "{collect_queries}", "column": "query"}]},
    }}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    results = run_pipeline(str(path))
    first, second = results["collect_queries"], results["again"]
    assert second.rows_in == first.rows_out == 2
    assert load_dataset(second.repo_id, revision=second.tag, split="train")["source"] == ["round2", "round2"]
    printed = capsys.readouterr().out
    assert "===== pipeline done" in printed and f"{out}-again@{second.tag}" in printed
    # a rerun skips both stages: their tags are published
    rerun = run_pipeline(str(path))
    assert rerun["again"].tag == second.tag
