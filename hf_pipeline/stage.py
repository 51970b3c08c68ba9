"""How a stage is declared: once, with its function and its config. The runner does everything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

Batch = dict[str, list]


@dataclass
class StageContext:
    """What a stage's hooks get from the runner besides their config.

    `load(ref, split)` loads a dataset input by ref and records its pinned revision in the card's lineage,
    so side inputs (an index repo, benchmark sets, query sources) are versioned like the main input.
    `download(ref, filename)` fetches one file of a declared input repo at its pinned commit (e.g. a FAISS index).
    `resources` is what `setup` returned: models loaded once per process/worker.
    """

    config: Any
    load: Callable[..., Any]
    download: Callable[[str, str], Any]
    resources: Any = None
    # shared by finalize and artifacts of one publish (same process): what finalize computed for the files
    scratch: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stage:
    name: str
    description: str  # one line, shown by `run_stage.py --help`
    config_class: type
    # output column -> dtype ("string", "int64", "float32", "bool", "list<int64>", ...); checked on every chunk
    output_columns: Mapping[str, str]
    # batched map over the (possibly sharded) input: a batch in, a batch out (may change the row count)
    map_batch: Callable[[Batch, StageContext], Batch]
    # columns map_batch produces when they differ from the published ones (e.g. a status that finalize filters on)
    map_columns: Mapping[str, str] | None = None
    input_columns: tuple[str, ...] = ()
    # models etc., loaded once per process/worker; its result lands in ctx.resources
    setup: Callable[[StageContext], Any] | None = None
    # builds the mapped dataset itself (for stages whose inputs come from their config); default: the --input ref
    load_input: Callable[[StageContext], Any] | None = None
    # a global step after all shards are mapped (dedupe, filter); returns (dataset, drop counts by reason), or
    # (dataset, drops, stats) where stats are other JSON-able figures for the card (e.g. documents truncated)
    finalize: Callable[[Any, StageContext], tuple[Any, Mapping[str, int]]] | None = None
    # dataset refs besides --input that the stage reads (query sources, an index repo, benchmarks): pinned and
    # recorded like the main input, and loaded through ctx.load
    input_refs: Callable[[Any], list[str]] = field(default=lambda config: [])
    # files published beside the data in the same commit (a FAISS index, sampling weights): called after
    # finalize with the final dataset and a folder to write into; returns {path in repo: local file}
    artifacts: Callable[[Any, StageContext, Any], dict[str, Any]] | None = None
    # more dataset configs in the same commit, {config name: data files path in repo, e.g. "data/baseline-*"};
    # listed in the card's `configs` beside "default" (data/train-*), so load_dataset(repo, name) reads them.
    # Their files are published by `artifacts` (under data/, so the next commit replaces them).
    extra_configs: Callable[[Any], dict[str, str]] = field(default=lambda config: {})
    # model refs (name -> "repo@revision" or path) recorded in the card
    models: Callable[[Any], dict[str, str]] = field(default=lambda config: {})
    # prompt files the stage reads for this config: their content is part of the run's fingerprint, so editing a
    # prompt makes a new tag instead of a rerun that finds the old output and is wrongly a no-op
    prompts: Callable[[Any], list[Path]] = field(default=lambda config: [])
    # bump when the stage's code changes its output for the same config, so caches and tags don't collide
    version: int = 1
    needs_input: bool = True
    # the card's Jinja template; default dataset_cards/<name>.md
    card_template: str | None = None
