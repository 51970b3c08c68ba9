"""How a stage is declared: once, with its function and its config. The runner does everything else.

A run of a dataset stage has up to three steps, each where it belongs at a billion rows:

1. `map_batch`, on every shard (a set of the input's files), in checkpointed chunks; then `finalize` on the
   shard's own mapped rows (a filter, per-shard packing). Its output is the shard's data files.
2. `reduce`, only for a stage that truly needs rows of several shards together (a dedupe, a stratified
   selection, per-template totals): the shards' outputs are split into `partitions(config)` partitions by a hash
   of `partition_key`, and each partition is reduced on its own (one partition = one global step, said so).
3. `artifacts`, once, on the driver, from the summed per-shard figures and, where a stage needs them, columns of
   the final data streamed back (e.g. build_index's FAISS index from the `embedding` column).

Figures for the card (`stats`) are summed across shards and partitions (`merge_stats`), so every stat a stage
records must be additive (counts, sums, histograms, or `min_`/`max_` keys); `summarize` derives means, medians
and fits from the sums once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

Batch = dict[str, list]


@dataclass
class StageContext:
    """What a stage's hooks get from the runner besides their config.

    `load(ref, split)` loads a (small) side input by ref exactly as pinned at plan time (benchmark sets, query
    source mappings); a side input that scales with the corpus is read by position instead: `read_rows` (rows of
    one of an input's files, e.g. the documents of a shard's pairs) or `aligned_rows` (the rows of the stage's
    `aligned` input that belong to a batch's documents). `download(ref, filename)` fetches one file of a declared
    input at its pinned commit (a FAISS index). `resources` is what `setup` returned: models loaded once per
    worker. `shard` and `part` say which shard (or partition) and which input part is being mapped.
    """

    config: Any
    load: Callable[..., Any]
    download: Callable[[str, str], Any]
    read_rows: Callable[[str, str, list[int]], Any] | None = None
    # aligned_rows(doc_files, doc_rows, which=0): rows of the stage's aligned input `which` (its index in the list
    # the `aligned` hook returned) pointing at those positions
    aligned_rows: Callable[..., Any] | None = None
    resources: Any = None
    shard: int = 0
    num_shards: int = 1
    part: Any = None  # the InputPart being mapped (its `label` names a query source, for instance)
    # figures of the whole run, summed over its shards: what a reduce or artifacts step may need (e.g. totals)
    run_stats: dict = field(default_factory=dict)
    # shared by finalize and the per-shard extra outputs of one shard (same process)
    scratch: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AlignedInput:
    """A side input whose rows point at rows of the main input (pairs pointing at their documents by `doc_file`,
    `doc_row`): each shard reads only the row groups whose positions fall in its own files, found at plan time
    from the parquet footers' statistics."""

    ref: str
    file_column: str = "doc_file"
    row_column: str = "doc_row"
    columns: tuple[str, ...] | None = None  # what to read (None: every column)


@dataclass(frozen=True)
class Stage:
    name: str
    description: str  # one line, shown by `run_stage.py --help`
    config_class: type
    # output column -> dtype ("string", "int64", "float32", "bool", "list<int64>", ...); checked on every chunk
    output_columns: Mapping[str, str]
    # batched map over a shard's rows: a batch in, a batch out (may change the row count)
    map_batch: Callable[[Batch, StageContext], Batch]
    # columns map_batch produces when they differ from the published ones (e.g. a status that finalize filters on)
    map_columns: Mapping[str, str] | None = None
    input_columns: tuple[str, ...] = ()
    # models etc., loaded once per worker; its result lands in ctx.resources. A shard without rows (an empty input)
    # does not call it: its finalize and shard_outputs then see ctx.resources None
    setup: Callable[[StageContext], Any] | None = None
    # the datasets the stage maps over, in order (default: the --input); e.g. one per query source
    inputs: Callable[[Any, Any], list[Any]] | None = None
    # check_input(part, schema, config): each mapped part's columns checked at plan time, before any model loads
    # (raise PipelineError); default: `input_columns` on the single --input
    check_input: Callable[[Any, Any, Any], None] | None = None
    # resolve_config(config, plan) -> config: once, on the driver, at plan time, after the inputs are pinned and
    # listed and before the fingerprint: checks that need the pinned inputs (a side input's columns) and values that
    # depend on the data (match's `threshold=auto:Q`). The config it returns is the run's: fingerprinted, in the
    # card, and the one every worker gets (shipped with the plan), so every shard uses the same values
    resolve_config: Callable[[Any, Any], Any] | None = None
    # side inputs read per shard by position (see AlignedInput), given (config, run options) like `inputs`: one
    # AlignedInput, a list of them (ctx.aligned_rows(..., which=i) reads the i-th), or None
    aligned: Callable[[Any, Any], AlignedInput | list[AlignedInput] | None] = field(default=lambda config, options: None)
    # a step on one shard's mapped rows (a filter, per-shard packing): returns (dataset, drop counts by reason), or
    # (dataset, drops, stats) where stats are additive figures for the card (see merge_stats)
    finalize: Callable[[Any, StageContext], tuple] | None = None
    # more outputs of a shard besides its rows, {config name: dataset}, from what finalize left in ctx.scratch
    # (published as data/<name>-NNNNN-of-NNNNN.parquet and listed as a config of the card)
    shard_outputs: Callable[[StageContext], Mapping[str, Any]] | None = None
    # a step over the rows of all shards, per partition (see the module docstring); same return as finalize
    reduce: Callable[[Any, StageContext], tuple] | None = None
    partitions: Callable[[Any], int] = field(default=lambda config: 1)
    partition_key: str | None = None  # a column of the shard output; rows with the same value meet in one partition
    # derived figures (means, medians, fits) from the summed stats, once at the end
    summarize: Callable[[dict, Any], dict] | None = None
    # report(stats, config) -> [(label, text)]: lines the end-of-run summary shows from the summarized stats
    report: Callable[[dict, Any], list[tuple[str, str]]] | None = None
    # dataset refs besides the mapped inputs that the stage reads (an index repo, benchmarks, documents): pinned and
    # recorded like the main input
    input_refs: Callable[[Any], list[str]] = field(default=lambda config: [])
    # files published beside the data in the same commit (a FAISS index, plots): called once, on the driver, with
    # (ArtifactContext, folder to write into); returns {path in repo: local file}
    artifacts: Callable[[Any, Any], dict[str, Any]] | None = None
    # more dataset configs of the output: {config name: data files pattern}, beside "default" (data/train-*)
    extra_configs: Callable[[Any], dict[str, str]] = field(default=lambda config: {})
    # model refs (name -> "repo@revision" or path) recorded in the card
    models: Callable[[Any], dict[str, str]] = field(default=lambda config: {})
    # prompt files the stage reads for this config: their content is part of the run's fingerprint
    prompts: Callable[[Any], list[Path]] = field(default=lambda config: [])
    # True when the rows published depend on how the input is cut into shards (assemble's per-shard budgets):
    # the number of shards is then part of the fingerprint
    sharding_changes_output: bool = False
    # bump when the stage's code changes its output for the same config, so caches and tags don't collide
    version: int = 1
    needs_input: bool = True
    # the card's Jinja template; default the package's dataset_cards/<name>.md
    card_template: str | None = None


def merge_stats(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Per-shard figures summed: numbers add, mappings merge key by key, lists of numbers add element-wise
    (histograms), keys starting with `min_`/`max_` keep the smaller/larger, anything else must agree."""
    out = dict(a)
    for key, value in b.items():
        if key not in out or out[key] is None:
            out[key] = value
        elif value is None:
            continue
        elif key.startswith("min_"):
            out[key] = min(out[key], value)
        elif key.startswith("max_"):
            out[key] = max(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_stats(out[key], value)
        elif isinstance(value, bool) or isinstance(value, str):
            if out[key] != value:
                raise ValueError(f"stat {key!r} differs between shards ({out[key]!r} vs {value!r}) and cannot be summed")
        elif isinstance(value, (int, float)):
            out[key] = out[key] + value
        elif isinstance(value, list):
            if len(value) != len(out[key]):
                raise ValueError(f"stat {key!r} has lists of different lengths across shards")
            out[key] = [x + y for x, y in zip(out[key], value)]
        else:
            raise ValueError(f"stat {key!r} of type {type(value).__name__} cannot be summed across shards")
    return out


@dataclass
class ArtifactContext:
    """What a stage's `artifacts` step gets, once, on the driver: its config, the run's summed figures, and the
    final data, read back from the run's pull request a few columns at a time (never all of it in memory).
    `stats` is the card's own dict: figures an artifacts step adds to it (counted while streaming the output, e.g.
    build_index's templates indexed after its global dedupe) are shown in the card, which is rendered after; so is
    `counts`, where a kind of count added (build_index's `indexed` by origin) also shows in the end summaries."""

    config: Any
    stats: dict
    counts: dict
    rows_out: int
    read_output: Callable[..., Any]  # read_output(columns, config_name="train") -> iterator of arrow tables
    download: Callable[[str, str], Any]
