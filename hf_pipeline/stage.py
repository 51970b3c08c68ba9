"""How a stage is declared: once, with its function and its config. The runner does everything else.

A run of a dataset stage has up to three steps, each where it belongs at a billion rows:

1. `Map.batch`, on every shard (a set of the input's files), in checkpointed chunks; then `Map.finalize` on the
   shard's own mapped rows (a filter, per-shard packing). Its output is the shard's data files.
2. `Reduce.step`, only for a stage that truly needs rows of several shards together (a dedupe, a stratified
   selection, per-template totals): the shards' outputs are split into `partitions(config)` partitions by a hash
   of `Reduce.key`, and each partition is reduced on its own (one partition = one global step, said so).
3. `Card.artifacts`, once, on the driver, from the summed per-shard figures and, where a stage needs them, columns of
   the final data streamed back (e.g. build_index's FAISS index from the `embedding` column).

Figures for the card (`stats`) are summed across shards and partitions (`merge_stats`), so every stat a stage
records must be additive (counts, sums, histograms, or `min_`/`max_` keys); `Card.summarize` derives means,
medians and fits from the sums once, at the end.

A stage module reads as a declaration: `STAGE = Stage(name, description, config_class, output_columns, map=Map(...),
inputs=Inputs(...), reduce=Reduce(...), card=Card(...), cost=CostModel(...))`, each group holding one concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from hf_pipeline.run.estimate import CostModel

Batch = dict[str, list]


def add_row(batch: Batch, **values: Any) -> None:
    """Append one output row to a batch being built, a value per column."""
    for column, value in values.items():
        batch[column].append(value)


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
class Inputs:
    """What a stage reads, and what is checked and fixed about it at plan time, before any model loads."""

    columns: tuple[str, ...] = ()  # columns the --input must have (checked in every data file's footer)
    needs_input: bool = True  # False: the stage maps over datasets its config names (`parts`)
    # parts(config, options) -> [InputPart]: the datasets the stage maps over, in order (default: the --input); e.g.
    # one per query source
    parts: Callable[[Any, Any], list[Any]] | None = None
    # check(part, schema, config): each mapped part's columns checked at plan time (raise PipelineError); default:
    # `columns` on the single --input
    check: Callable[[Any, Any, Any], None] | None = None
    # side(config) -> refs: datasets besides the mapped inputs that the stage reads (an index repo, benchmarks,
    # documents), pinned and recorded like the main input
    side: Callable[[Any], list[str]] = field(default=lambda config: [])
    # aligned(config, options): side inputs read per shard by position (see AlignedInput): one, a list of them
    # (ctx.aligned_rows(..., which=i) reads the i-th), or None
    aligned: Callable[[Any, Any], AlignedInput | list[AlignedInput] | None] = field(default=lambda config, options: None)
    # resolve_config(config, plan) -> config: once, on the driver, after the inputs are pinned and listed and before
    # the fingerprint: checks that need the pinned inputs (a side input's columns, the pairs' lineage) and values
    # that depend on the data (match's `threshold=auto:Q`). The config it returns is the run's: fingerprinted, in the
    # card, in the manifest every later command and every worker reads
    resolve_config: Callable[[Any, Any], Any] | None = None
    # models(config) -> {name: "repo@revision" or path}: recorded in the card (Hub models are pinned to a sha first)
    models: Callable[[Any], dict[str, str]] = field(default=lambda config: {})
    # prompts(config) -> files the stage reads: their content is part of the run's fingerprint
    prompts: Callable[[Any], list[Path]] = field(default=lambda config: [])


@dataclass(frozen=True)
class Map:
    """The step on every shard: a batched function, in checkpointed chunks, then an optional per-shard step."""

    # batch(batch, ctx) -> batch: a batch in, a batch out (may change the row count)
    batch: Callable[[Batch, StageContext], Batch]
    # columns `batch` produces when they differ from the published ones (e.g. a status that finalize filters on)
    columns: Mapping[str, str] | None = None
    # setup(ctx) -> resources: models etc., loaded once per worker (ctx.resources). A shard without rows (an empty
    # input) does not call it: its finalize and shard_outputs then see ctx.resources None
    setup: Callable[[StageContext], Any] | None = None
    # finalize(dataset, ctx): a step on one shard's mapped rows (a filter, per-shard packing): (dataset, drop counts
    # by reason), or (dataset, drops, stats) where stats are additive figures for the card (see merge_stats)
    finalize: Callable[[Any, StageContext], tuple] | None = None
    # shard_outputs(ctx) -> {config name: dataset}: more outputs of a shard besides its rows, from what finalize left
    # in ctx.scratch (published as data/<name>-NNNNN-of-NNNNN.parquet and listed as a config of the card)
    shard_outputs: Callable[[StageContext], Mapping[str, Any]] | None = None
    # True when the rows published depend on how the input is cut into shards (assemble's per-shard budgets): the
    # number of shards is then part of the fingerprint
    sharding_changes_output: bool = False


@dataclass(frozen=True)
class Reduce:
    """A step over the rows of all shards, for a stage that truly needs them together (see the module docstring)."""

    # step(dataset, ctx): one partition's rows; same return as Map.finalize
    step: Callable[[Any, StageContext], tuple]
    partitions: Callable[[Any], int] = field(default=lambda config: 1)
    key: str | None = None  # a column of the shard output; rows with the same value meet in one partition


@dataclass(frozen=True)
class Card:
    """What the published card and the end summary show beyond the counts every card has."""

    # summarize(stats, config) -> stats: derived figures (means, medians, fits) from the summed stats, once at the end
    summarize: Callable[[dict, Any], dict] | None = None
    # report(stats, config) -> [(label, text)]: lines the end-of-run summary shows from the summarized stats
    report: Callable[[dict, Any], list[tuple[str, str]]] | None = None
    # artifacts(ArtifactContext, folder) -> {path in repo: local file}: files published beside the data in the same
    # commit (a FAISS index, plots), made once, on the driver
    artifacts: Callable[[Any, Any], dict[str, Any]] | None = None
    # extra_configs(config) -> {config name: data files pattern}: dataset configs beside "default" (data/train-*)
    extra_configs: Callable[[Any], dict[str, str]] = field(default=lambda config: {})
    template: str | None = None  # the card's Jinja template; default the package's dataset_cards/<name>.md


@dataclass(frozen=True)
class Stage:
    """A dataset stage, declared by concern: what it reads, what it does on each shard, what (if anything) it does
    over all shards, what its card shows, and what it costs at scale."""

    name: str
    description: str  # one line, shown by `run_stage.py --help`
    config_class: type
    # output column -> dtype ("string", "int64", "float32", "bool", "list<int64>", ...); checked on every chunk
    output_columns: Mapping[str, str]
    map: Map
    inputs: Inputs = Inputs()
    reduce: Reduce | None = None
    card: Card = Card()
    cost: CostModel | None = None  # its cost for `--estimate` and docs/SCALING.md (see run/estimate.py)
    # bump when the stage's code changes its output for the same config, so caches and tags don't collide
    version: int = 1

    @property
    def needs_input(self) -> bool:
        return self.inputs.needs_input


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
