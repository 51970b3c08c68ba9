"""`run_stage.py pipeline --config FILE`: every stage in order, each publishing its own versioned repo.

The YAML names, per stage, the same settings `run_stage.py STAGE` takes (run options and config keys). In any
string value, `{stage_name}` becomes that stage's published `repo@tag`, so a stage reads its inputs exactly as
published; a stage without an `input` reads the previous stage's output. Resuming is per stage and free: a stage
whose inputs and config are unchanged finds its tag already published and is skipped (and a stage killed
mid-way resumes from its checkpoint chunks).

    publish:            # local files published to the Hub first (offline demo data), repo: path
      local/wiki: samples/documents/wikipedia.jsonl
    sample_size: 12     # optional: max_rows for the stage named by sample_stage
    sample_stage: match
    stages:
      collect_queries: {output: local/q, sources: [...]}
      genericize: {output: local/t, llm: {model: packaged:smollm2}}
      ...

An entry is named after its stage, or named freely with `stage:` saying which stage it runs, so one stage can
run twice (e.g. `train_embedder_round2: {stage: train_embedder, round: 2, ...}`). References name entries:
`{entry}` is `repo@tag`, `{entry.repo}` and `{entry.tag}` its parts (for configs that take a model and its
revision separately). Training stages publish model repos and are referenced the same way.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from hf_pipeline.errors import PipelineError
from hf_pipeline.run.config import read_yaml

_REFERENCE = re.compile(r"\{([a-z0-9_]+)(?:\.(repo|tag))?\}")


def substitute(value: Any, published: dict[str, str]) -> Any:
    """Replace `{entry}`, `{entry.repo}`, `{entry.tag}` in every string of `value` by that entry's published
    repo@tag, repo, tag."""
    if isinstance(value, str):
        def ref(m: re.Match) -> str:
            if m.group(1) not in published:
                raise PipelineError(f"pipeline config refers to {{{m.group(1)}}}, which no earlier stage published.")
            repo, tag = published[m.group(1)].rsplit("@", 1)
            return {"repo": repo, "tag": tag}.get(m.group(2), published[m.group(1)])

        return _REFERENCE.sub(ref, value)
    if isinstance(value, list):
        return [substitute(v, published) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, published) for k, v in value.items()}
    return value


def run_pipeline(config_path: str, sample_size: int | None = None) -> dict[str, Any]:
    from hf_pipeline.io.hub import push_local_dataset
    from hf_pipeline.cli.specs import build_spec
    from hf_pipeline.stages import all_stages

    spec = read_yaml(config_path)
    unknown = set(spec) - {"publish", "sample_size", "sample_stage", "stages"}
    if unknown:
        raise PipelineError(f"unknown pipeline key '{sorted(unknown)[0]}' in {config_path} (known: publish, sample_size, sample_stage, stages).")
    stages = all_stages()
    entries = {name: (values or {}).get("stage", name) for name, values in (spec.get("stages") or {}).items()}
    unknown_stages = [stage for stage in entries.values() if stage not in stages]
    if unknown_stages:
        raise PipelineError(f"pipeline config names unknown stage '{unknown_stages[0]}' (stages: {', '.join(stages)}).")
    sample_size = sample_size if sample_size is not None else spec.get("sample_size")

    def settings(name: str, values: dict, published: dict[str, str], previous: str | None) -> dict:
        stage = stages[entries[name]]
        values = substitute({k: v for k, v in (values or {}).items() if k != "stage"}, published)
        if stage.needs_input and "input" not in values and previous:
            values["input"] = previous
        if sample_size is not None and name == spec.get("sample_stage"):
            values["max_rows"] = sample_size
        return values

    # every entry's keys and types checked before the first stage runs (references stand in for what they will be)
    placeholders = {name: f"pipeline/{name}@check" for name in entries}
    previous = None
    for name, values in spec["stages"].items():
        build_spec(entries[name], settings(name, values, placeholders, previous))
        previous = placeholders[name]

    started = time.time()
    for repo, path in (spec.get("publish") or {}).items():
        repo, tag, _ = push_local_dataset(path, repo)
        print(f"input {path} is {repo}@{tag}")
    published: dict[str, str] = {}
    results: dict[str, Any] = {}
    previous = None
    for name, values in spec["stages"].items():
        stage_spec = build_spec(entries[name], settings(name, values, published, previous),
                                argv=["run_stage.py", "pipeline", "--config", str(config_path), f"# entry {name}"])
        print(f"\n=== {name} ===" + (f" ({stage_spec.stage})" if stage_spec.stage != name else ""), flush=True)
        result = run_in_subprocess(stage_spec)
        published[name] = previous = f"{result.repo_id}@{result.tag}"
        results[name] = result
    print_pipeline_summary(results, time.time() - started)
    return results


def _child(spec, conn) -> None:
    """The stage in a new session (its own process group, which the parent can end with every engine it started)."""
    import traceback

    from hf_pipeline.cli.specs import run_spec

    os.setsid()
    try:
        conn.send(("ok", run_spec(spec)))
    except PipelineError as e:
        conn.send(("error", str(e)))
    except BaseException as e:  # noqa: BLE001 - the traceback is shown here, the parent owns the exit code
        traceback.print_exc()
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def run_in_subprocess(spec):
    """One stage in a fresh process: each stage's models (a vLLM engine, an embedder) are freed when it ends, and a
    crash in one stage cannot take the earlier stages' results with it. The typed spec and the result travel over
    a pipe; an engine process that lingers after the result is in is ended with the stage's process group."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, child), daemon=False)
    proc.start()
    child.close()
    message = None
    while message is None and proc.is_alive():
        if parent.poll(0.5):
            message = parent.recv()
    if message is None and parent.poll(0):
        message = parent.recv()
    proc.join(60)
    if proc.is_alive():  # the result is in, but an engine keeps the process alive
        os.killpg(proc.pid, signal.SIGTERM)
        proc.join()
    if message is None:
        raise PipelineError(f"stage {spec.stage} failed (exit code {proc.exitcode}); fix the cause and rerun the pipeline to resume.")
    kind, value = message
    if kind == "error":
        raise PipelineError(f"stage {spec.stage} failed: {value} (fix the cause and rerun the pipeline to resume)")
    return value


def print_pipeline_summary(results: dict[str, Any], seconds: float) -> None:
    """One line per entry from its published card (so a skipped entry shows what it published), with the warnings
    its stats carry (`warnings`: sentences a stage's `summarize` adds, e.g. match's threshold that does not beat
    chance) under it; then how to load the final pairs, or why there are none."""
    lines = ["", f"===== pipeline done in {seconds / 60:.1f} min =====", "stage            output@tag  (rows in -> out; statuses)"]
    cards: dict[str, dict] = {}  # entry -> its dataset card's hf_pipeline metadata, in pipeline order
    for name, r in results.items():
        entry_lines, card = r.published_summary(name)  # from the published card: a skipped stage shows what it published
        lines += entry_lines
        if card is not None:
            cards[name] = card
    print("\n".join(lines))
    if "assemble" in results:
        show_final(results["assemble"], cards)
    if "analyze" in results:
        r = results["analyze"]
        # the figures table always has rows (an empty analysis is figures of zero)
        print(f'\nanalysis: load_dataset("{r.repo_id}", "metrics", revision="{r.tag}", split="train"); plots in the card of '
              f"{r.repo_id}@{r.tag}")


def show_final(final: Any, cards: dict[str, dict], n: int = 3) -> None:
    """The final pairs (the `assemble` entry's result): the calls that load both arms as published (streaming for an
    arm without rows, which `datasets` loads no other way), a few examples, or, without pairs, the entry where the
    rows ran out and why (`cards`: every dataset entry's card metadata, in pipeline order)."""
    from hf_pipeline.io.hub import load_dataset_ref, resolve_dataset
    from hf_pipeline.run.runner import RunResult

    repo_id, tag, meta = final.repo_id, final.tag, cards["assemble"]
    ds = load_dataset_ref(resolve_dataset(f"{repo_id}@{tag}"))  # also reads an output with zero rows
    line = f"\nfinal data: {len(ds)} pairs -> {RunResult.load_call(repo_id, tag, len(ds))}"
    if meta["config"].get("baseline"):
        baseline_rows = meta["counts"].get("stats", {}).get("baseline_documents", 0)
        line += f"; baseline arm: {RunResult.load_call(repo_id, tag, baseline_rows, 'baseline')}"
    print(line)
    if not len(ds):
        name = emptied_at("assemble", cards)
        empty = cards[name]
        print(f"nothing to load: the rows ran out at {name}: {RunResult.why_empty(empty['rows_in'], empty['counts'].get('drops', {}))}")
    for row in ds.select(range(min(n, len(ds)))):
        print("-" * 60 + f"\n[{row['doc_id']}]\n{row['text'][:600]}")


def emptied_at(name: str, cards: dict[str, dict]) -> str:
    """The entry where the rows of entry `name` (which published none) ran out: its inputs that are entries which
    published no rows either, followed back to the first such, the one whose own rows in and drops say why."""
    entries = {(m["run"]["output"], m["tag"]): k for k, m in cards.items()}
    while True:
        upstream = (entries.get((i.get("repo_id"), i.get("revision"))) for i in cards[name]["inputs"])
        empty = next((k for k in upstream if k is not None and not cards[k]["rows_out"]), None)
        if empty is None:
            return name
        name = empty
