"""Tulu 3-style n-gram decontamination (hf_pipeline.methods.text.decontamination)."""

import os
import pickle
import subprocess
import sys

from hf_pipeline.methods.text import decontamination
from hf_pipeline.methods.text.decontamination import BenchmarkMatch, NgramIndex, tokenize

# A GSM8K-style benchmark prompt of 20 distinct tokens, so shared n-grams are easy to count.
BENCHMARK = "Natalia sold clips to forty eight friends in April then roughly half as many during May for her school fair"
WORDS = BENCHMARK.split()
assert len(set(WORDS)) == len(WORDS) == 20
FILLER = "purple elephants dance quietly under seven golden umbrellas tonight".split()


def test_defaults_are_tulu3s():
    assert decontamination.DEFAULT_NGRAM_SIZE == 8
    assert decontamination.DEFAULT_OVERLAP_THRESHOLD == 0.5
    assert NgramIndex.from_texts([BENCHMARK]).n == 8


def test_tokenize_lowercases_and_splits_like_the_tulu_analyzer():
    assert tokenize('What\'s 2+2? (Answer-quickly)\n"Now"\\done\tok') == ["what's", "2+2", "answer", "quickly", "now", "done", "ok"]
    assert tokenize(" ,.;:!? ") == []


def test_verbatim_and_embedded_copies_are_contaminated():
    index = NgramIndex.from_texts(["Unrelated prompt about the history of Rome and its emperors", BENCHMARK])
    assert index.best_match(BENCHMARK) == BenchmarkMatch(item=1, ratio=1.0)
    # The ratio is the share of the *benchmark* prompt covered, as in Tulu 3: wrapping the
    # prompt in a longer query does not dilute it.
    assert index.overlap_ratio("Please solve this for me: " + BENCHMARK + " Show every step.") == 1.0
    assert index.is_contaminated(BENCHMARK.upper().replace(" ", ", "))  # case and punctuation do not matter


def query_sharing_first(k: int) -> str:
    """A query repeating the benchmark's first k tokens, then unrelated words."""
    return " ".join(WORDS[:k] + FILLER)


def test_threshold_is_strictly_more_than_half_of_the_benchmark_tokens():
    index = NgramIndex.from_texts([BENCHMARK])
    # Sharing the first 10 tokens gives three shared 8-grams covering tokens 0..9: 10/20.
    assert index.overlap_ratio(query_sharing_first(10)) == 0.5
    assert not index.is_contaminated(query_sharing_first(10))
    assert index.overlap_ratio(query_sharing_first(11)) == 0.55
    assert index.is_contaminated(query_sharing_first(11))
    # A custom threshold moves the boundary.
    assert index.is_contaminated(query_sharing_first(10), threshold=0.45)


def test_fewer_shared_tokens_than_n_do_not_match():
    index = NgramIndex.from_texts([BENCHMARK])
    assert index.best_match(query_sharing_first(7)) is None
    assert index.overlap_ratio(query_sharing_first(8)) == 8 / 20


def test_scattered_shared_grams_are_counted_once_per_token():
    index = NgramIndex.from_texts([BENCHMARK])
    # Tokens 0..7 and 12..19 shared, 8..11 replaced: two disjoint 8-grams cover 16 of 20 tokens.
    query = " ".join(WORDS[:8] + FILLER[:4] + WORDS[12:])
    assert index.overlap_ratio(query) == 16 / 20


def test_overlap_is_measured_per_benchmark_prompt():
    # Each prompt shares 10 of its 22 tokens with the query: under half. The query itself is made
    # entirely of benchmark 8-grams, but no single prompt is mostly covered, so it stays clean
    # (Tulu 3 counts the test tokens matched by the *same* training instance).
    prompt_a = " ".join(WORDS[:10] + FILLER + ["alpha", "beta", "gamma"])
    prompt_b = " ".join(["delta", "epsilon", "zeta", "theta", "iota", "kappa", "lambda", "sigma", "omega", "rho", "tau", "chi"] + WORDS[10:])
    index = NgramIndex.from_texts([prompt_a, prompt_b])
    assert index.best_match(BENCHMARK) == BenchmarkMatch(item=0, ratio=10 / 22)
    assert not index.is_contaminated(BENCHMARK)


def test_short_texts_match_only_exactly():
    short_benchmark = "What happens if you eat watermelon seeds?"  # 7 tokens: TruthfulQA
    index = NgramIndex.from_texts([short_benchmark, BENCHMARK])
    assert index.best_match("what happens if you eat watermelon seeds") == BenchmarkMatch(item=0, ratio=1.0)
    # A short benchmark prompt is not matched inside a longer query (a 2-token prompt would
    # otherwise flag every query using those words) ...
    assert index.overlap_ratio("Tell me what happens if you eat watermelon seeds, honestly.") == 0.0
    # ... and a short query cannot cover a long prompt.
    assert index.overlap_ratio("Natalia sold clips") == 0.0


def test_empty_inputs():
    index = NgramIndex.from_texts(["", "?!", BENCHMARK])
    assert len(index) == 3
    assert index.overlap_ratio("") == 0.0
    assert index.best_match("?!") is None
    assert not index.is_contaminated("hello")


def test_index_survives_pickling_into_a_process_with_another_hash_seed():
    index = NgramIndex.from_texts([BENCHMARK])
    script = (
        "import pickle, sys; index = pickle.loads(sys.stdin.buffer.read()); "
        f"print(index.overlap_ratio({query_sharing_first(11)!r}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(index), capture_output=True, env=env, check=True)
    assert float(result.stdout) == 0.55


# --- in the collect_queries stage: the benchmarks are a small side input, loaded once per worker in setup ---------


def _collect_ctx(benchmarks, load):
    from hf_pipeline.io.datafiles import InputPart
    from hf_pipeline.run.config import build_config
    from hf_pipeline.stage import StageContext
    from hf_pipeline.stages.collect_queries import CollectQueriesConfig

    config = build_config(CollectQueriesConfig, {"sources": [{"name": "s", "dataset": "org/queries", "column": "text"}], "benchmarks": benchmarks})
    return StageContext(config=config, load=load, download=None, part=InputPart("org/queries", label="s"))


def test_collect_queries_marks_contaminated_queries_against_the_loaded_benchmarks():
    import datasets

    from hf_pipeline.stages.collect_queries import collect_batch, input_refs, setup

    loaded = []

    def load(ref, split=None, name=None):
        loaded.append((ref, split, name))
        return datasets.Dataset.from_dict({"question": [BENCHMARK, None], "answer": ["72", "x"]})

    ctx = _collect_ctx([{"dataset": "org/gsm8k", "columns": ["question"], "split": "test", "subset": "main"}], load)
    assert input_refs(ctx.config) == ["org/gsm8k"]  # pinned at plan time like any input; the sources are the mapped parts
    ctx.resources = setup(ctx)
    assert loaded == [("org/gsm8k", "test", "main")]
    queries = ["Please solve: " + BENCHMARK, query_sharing_first(10), query_sharing_first(11), "Who wrote Hamlet?"]
    out = collect_batch({"text": queries}, ctx)
    assert out["status"] == ["contaminated", "ok", "contaminated", "ok"]
    assert [bool(k) for k in out["dedup_key"]] == [False, True, False, True]  # only ok rows go on to the dedupe


def test_collect_queries_names_a_benchmark_column_that_is_missing():
    import datasets
    import pytest

    from hf_pipeline.errors import PipelineError
    from hf_pipeline.stages.collect_queries import setup

    ctx = _collect_ctx([{"dataset": "org/bench", "columns": ["prompt"]}], lambda ref, split=None, name=None: datasets.Dataset.from_dict({"question": ["q"]}))
    with pytest.raises(PipelineError, match="benchmark org/bench lacks column 'prompt' \\(it has: question\\)"):
        setup(ctx)
