"""The cost model behind `--dry-run --estimate` and docs/SCALING.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_pipeline.cli import main
from hf_pipeline.errors import PipelineError
from hf_pipeline.run.estimate import MEASURED, estimate_stage, markdown_table, parse_rows, stage_details
from hf_pipeline.stages import all_stages

ROOT = Path(__file__).resolve().parent.parent


def test_parse_rows():
    assert parse_rows("1e9") == parse_rows("1B") == parse_rows("1,000,000,000") == 1e9
    assert parse_rows("18M") == 18e6 and parse_rows("2500") == 2500
    with pytest.raises(PipelineError):
        parse_rows("lots")


def test_estimates_scale_with_rows_and_label_their_figures():
    stages = all_stages()
    one, two = estimate_stage(stages["match"], 1e9), estimate_stage(stages["match"], 2e9)
    assert two.device_hours == pytest.approx(2 * one.device_hours)
    assert two.num_shards >= 2 * one.num_shards - 1
    assert not one.measured and "ESTIMATE" in one.rate_label  # no GPU here: GPU figures say so
    assert estimate_stage(stages["collect_queries"]).measured and estimate_stage(stages["assemble"]).measured
    assert all(f.measured and f.device for f in MEASURED.values())


def test_cli_dry_run_estimate_for_a_given_size(capsys):
    assert main(["match", "--dry-run", "--estimate", "1B"]) == 0
    out = capsys.readouterr().out
    assert "estimate for match over 1.0B documents" in out
    assert "--num-shards" in out and "GPU-h" in out and "unmeasured" in out


def test_scaling_md_holds_the_generated_table():
    doc = (ROOT / "docs" / "SCALING.md").read_text()
    stages = list(all_stages().values())
    assert markdown_table(stages) in doc, "regenerate: python scripts/update_scaling_doc.py"
    assert stage_details(stages) in doc, "regenerate: python scripts/update_scaling_doc.py"
    costed = [s.name for s in stages if s.cost is not None]
    assert len(costed) == 8 and all(f"| {name} |" in doc for name in costed)  # every stage with a cost model


def test_cli_estimate_counts_the_input_rows(local_hub, tmp_path, capsys):
    import json

    from hf_pipeline.io.hub import push_local_dataset

    data = tmp_path / "q" / "q.jsonl"
    data.parent.mkdir(parents=True)
    data.write_text("".join(json.dumps({"text": f"question {i}?"}) + "\n" for i in range(7)))
    repo = f"local/est-{tmp_path.name[-12:]}"
    push_local_dataset(str(data), repo, tag="v1")
    source = json.dumps([{"name": "test", "dataset": f"{repo}@v1", "column": "text"}])
    code = main(["collect_queries", "--output", f"{repo}-out", "--set", f"sources={source}", "--dry-run", "--estimate"])
    out = capsys.readouterr().out
    assert code == 0
    assert "input rows   7" in out and "estimate for collect_queries over 7 raw user queries" in out


def test_estimate_from_a_published_run_scales_its_measured_usage(local_hub, tmp_path, capsys):
    """A stage whose engine reports usage publishes it in its card; --estimate-from scales it to N rows."""
    import json
    from dataclasses import dataclass

    from hf_pipeline.io.hub import load_card, push_local_dataset
    from hf_pipeline.run.estimate import estimate_command, estimate_from_run
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stage import Card, Inputs, Map, Stage

    class Engine:  # accounts like an LLM backend: 100 prompt tokens (40 cached), 10 generated, 0.5 s per row
        def __init__(self):
            self.usage = {"prompt_tokens": 0, "cached_prompt_tokens": 0, "generated_tokens": 0, "seconds": 0.0, "requests": 0}

        def settings(self):
            return {"backend": "fake", "model": "none"}

        def run(self, n):
            for key, per_row in (("prompt_tokens", 100), ("cached_prompt_tokens", 40), ("generated_tokens", 10), ("seconds", 0.5), ("requests", 1)):
                self.usage[key] += per_row * n

    @dataclass
    class Config:
        pass

    def work(batch, ctx):
        ctx.resources["llm"].run(len(batch["id"]))
        return {"id": batch["id"]}

    stage = Stage(
        name="match",
        description="a stand-in measured stage",
        config_class=Config,
        output_columns={"id": "int64"},
        inputs=Inputs(columns=("id",)),
        map=Map(
            batch=work,
            setup=lambda ctx: {"llm": Engine()},
        ),
        card=Card(template=str(Path(__file__).parent / "cards" / "slow_upper.md")),
    )
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"id": i}) + "\n" for i in range(40)))
    push_local_dataset(str(src), "local/est-in", tag="v1")
    result = run_stage(stage, RunOptions(input="local/est-in@v1", output="local/est-run", num_shards=2), Config())
    usage = load_card("local/est-run", result.tag).data.hf_pipeline["usage"]
    assert (usage["prompt_tokens"], usage["cached_prompt_tokens"], usage["generated_tokens"]) == (4000, 1600, 400)
    assert usage["seconds"] == 20.0 and usage["device_seconds_per_1k_rows"] == 500.0

    estimate = estimate_from_run(stage, 1e6, f"local/est-run@{result.tag}")
    assert estimate.device_hours == pytest.approx(1e6 * 0.5 / 3600) and estimate.measured
    assert estimate_command(stage, "1M", lambda: 0, estimate_from=f"local/est-run@{result.tag}") == 0
    out = capsys.readouterr().out
    assert "measured on local/est-run@" in out and "0.10B prompt tokens (0.04B from the prefix cache)" in out
