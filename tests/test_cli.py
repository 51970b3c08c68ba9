"""The command line: help listings and one clear sentence (no traceback) for each kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf_pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_lists_every_stage_with_a_description():
    out = subprocess.run([sys.executable, "scripts/run_stage.py", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0
    from hf_pipeline.stages import all_stages

    for stage in all_stages().values():
        assert stage.name in out.stdout and stage.description[:40] in out.stdout


def test_stage_help_shows_every_option_and_config_key_with_default(capsys):
    with pytest.raises(SystemExit):
        main(["collect_queries", "--help"])
    out = capsys.readouterr().out
    for flag in ("--input", "--output", "--tag", "--num-shards", "--shard-index", "--config", "--set", "--dry-run"):
        assert flag in out
    assert "max_chars" in out and "default: 8000" in out
    assert "ngram_size" in out and "default: 8" in out
    assert "moderation_model" in out and "default: None" in out


def _source(dataset: str, column: str = "text") -> str:
    return "sources=" + json.dumps([{"name": "t", "dataset": dataset, "column": column}])


@pytest.fixture
def text_repo(local_hub, tmp_path):
    from hf_pipeline.io.hub import push_local_dataset

    path = tmp_path / "d" / "rows.jsonl"
    path.parent.mkdir()
    path.write_text('{"text": "hello there"}\n')
    repo = f"local/cli-{tmp_path.name[-12:]}"
    push_local_dataset(str(path), repo, tag="v1")
    return repo


def test_missing_repo(capsys, local_hub):
    code, _, err = run_cli(capsys, "collect_queries", "--output", "local/x", "--set", _source("local/no-such-repo"))
    assert code == 2
    assert err.strip() == "error: dataset repo local/no-such-repo does not exist (or you have no access) on " + local_hub + "."
    assert "Traceback" not in err


def test_unknown_revision(capsys, text_repo):
    code, _, err = run_cli(capsys, "collect_queries", "--output", "local/x", "--set", _source(text_repo + "@nope"))
    assert code == 2 and err.strip() == f"error: dataset {text_repo} has no revision 'nope'."


def test_missing_column(capsys, text_repo):
    code, _, err = run_cli(capsys, "collect_queries", "--output", "local/x", "--set", _source(text_repo, column="prompt"))
    assert code == 2
    assert err.strip() == f"error: query source 't' ({text_repo}) lacks column 'prompt' named by its mapping (it has: text)."


def test_unknown_config_key(capsys):
    code, _, err = run_cli(capsys, "collect_queries", "--output", "local/x", "--set", "max_charz=3")
    assert code == 2 and err.startswith("error: unknown config key 'max_charz' for CollectQueriesConfig (known keys: ")


def test_unknown_config_key_in_yaml(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("output: local/x\nbogus: 1\n")
    code, _, err = run_cli(capsys, "collect_queries", "--config", str(cfg))
    assert code == 2 and "unknown config key 'bogus'" in err


def test_wrong_type(capsys):
    code, _, err = run_cli(capsys, "collect_queries", "--output", "local/x", "--set", "max_chars=lots")
    assert code == 2 and err.strip() == "error: config key 'max_chars' has value 'lots', which is not of type int."


def test_local_file_that_is_not_a_dataset(capsys, tmp_path, local_hub):
    bogus = tmp_path / "notes.txt"
    bogus.write_text("just some notes")
    code, _, err = run_cli(capsys, "collect_queries", "--output", "local/x", "--set", _source(str(bogus)))
    assert code == 2
    assert err.strip() == f"error: {bogus} is not a dataset: expected a folder saved with Dataset.save_to_disk, or .parquet/.jsonl/.json/.csv files."


def test_debug_shows_traceback(capsys):
    from hf_pipeline.errors import PipelineError

    with pytest.raises(PipelineError):
        main(["collect_queries", "--output", "local/x", "--set", "max_charz=3", "--debug"])


def test_tokens_are_masked_in_recorded_command_lines():
    from hf_pipeline.io.hub import token_free_argv

    token = "hf_" + "aB3" * 12
    assert token_free_argv(["--set", "api_key=sk-123", token, "--config", "hf_pipeline/configs/quickstart.yaml"]) == [
        "--set", "api_key=***", "hf_***", "--config", "hf_pipeline/configs/quickstart.yaml"
    ]


def test_a_missing_optional_package_is_named_with_its_extra_before_anything_runs(capsys, monkeypatch):
    """The config asks for vLLM; without it the run stops at plan time with the extra to install."""
    import hf_pipeline.optional as optional

    real = optional.missing
    monkeypatch.setattr(optional, "missing", lambda module: module == "vllm" or real(module))
    code, _, err = run_cli(capsys, "judge", "--input", "local/nowhere", "--output", "local/never", "--set", "llm.backend=vllm")
    assert code == 2
    assert "stage judge with llm.backend=vllm needs the `vllm` package: pip install 'fineinstructions-pipeline[vllm]'" in err
