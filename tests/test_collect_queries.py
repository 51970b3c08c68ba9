"""collect_queries as a run: sources as input parts, per-row checks in the map, drops per shard, and the dedupe as a
partitioned reduce whose published set does not depend on the number of shards or partitions."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from hf_pipeline.run.runner import RunOptions, plan_run, run_stage
from hf_pipeline.stages.collect_queries import STAGE, CollectQueriesConfig

BENCHMARK = "Natalia sold clips to forty eight friends in April then roughly half as many during May for her school fair"


def conversation(text):
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]


# Source "chat" (a Hub repo, 3 parquet files) and source "plain" (a local folder, 2 jsonl files). Duplicates sit in
# different files, so a 3-shard run puts their occurrences in different shards: the first file holds the first
# occurrences, the last files the repeats.
CHAT_FILES = [
    [  # file 0
        "What is the capital of France?",
        "How do I bake sourdough bread?",
        "Explain photosynthesis simply.",
        "   ",
        "Who wrote Hamlet?",
    ],
    [  # file 1
        "what is the capital of france",  # normalised duplicate of file 0
        BENCHMARK,  # contaminated
        "Tell me a joke about cats.",
        "x" * 300,  # too long
        None,  # no user turn (conversation of the assistant only)
    ],
    [  # file 2
        "Explain photosynthesis simply.",  # exact duplicate of file 0
        "Which planet is closest to the sun?",
        "Who wrote  Hamlet ?",  # normalised duplicate
        "How do I bake sourdough bread?",  # exact duplicate
    ],
]
PLAIN_FILES = [
    [  # file 0 of the second source
        {"text": "Tell me a joke about cats.", "lang": "en"},  # exact duplicate across sources: chat's wins
        {"text": "Name three prime numbers.", "lang": "en"},
        {"text": "Nenne drei Primzahlen.", "lang": "de"},  # not selected
    ],
    [
        {"text": "name three prime numbers!", "lang": "en"},  # normalised duplicate within the source
        {"text": "WHICH planet is closest to the Sun", "lang": "en"},  # normalised duplicate of chat's
        {"text": "How far away is the Moon?", "lang": "en"},
        {"text": None, "lang": "en"},  # missing
    ],
]


@pytest.fixture(scope="module")
def sources(local_hub, tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    folder = tmp_path_factory.mktemp("cq")
    chat = folder / "chat" / "data"
    chat.mkdir(parents=True)
    for k, texts in enumerate(CHAT_FILES):
        rows = [conversation(t) if t is not None else [{"role": "assistant", "content": "hi"}] for t in texts]
        pq.write_table(pa.table({"conversation": rows, "n": list(range(len(rows)))}), chat / f"train-{k:05d}-of-00003.parquet")
    api = HfApi()
    api.create_repo("local/cq-chat", repo_type="dataset", exist_ok=True)
    api.upload_folder(repo_id="local/cq-chat", repo_type="dataset", folder_path=str(folder / "chat"))
    api.create_tag("local/cq-chat", tag="v1", repo_type="dataset")
    plain = folder / "plain"
    plain.mkdir()
    for k, rows in enumerate(PLAIN_FILES):
        (plain / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bench = folder / "bench.jsonl"
    bench.write_text(json.dumps({"question": BENCHMARK}) + "\n")
    return {
        "sources": [
            {"name": "chat", "dataset": "local/cq-chat@v1", "conversation_column": "conversation"},
            {"name": "plain", "dataset": str(plain), "column": "text", "where": {"lang": "en"}},
        ],
        "benchmarks": [{"dataset": str(bench), "columns": ["question"], "split": "train"}],
    }


def config(sources: dict, **values) -> CollectQueriesConfig:
    from hf_pipeline.run.config import build_config

    return build_config(CollectQueriesConfig, {**sources, "max_chars": 200, **values})


def published(repo: str, tag: str) -> list[dict]:
    from datasets import load_dataset

    return load_dataset(repo, revision=tag, split="train").to_list()


EXPECTED_DROPS = {
    "empty": 1, "contaminated": 1, "too_long": 1, "no_user_turn": 1, "not_selected": 1, "missing": 1,
    "duplicate_exact": 3,  # photosynthesis, sourdough (chat, file 2), the cat joke (plain)
    "duplicate_normalized": 4,  # france, hamlet, prime numbers, planet
}
FIRST_OCCURRENCES = [  # in input order: chat's files, then plain's
    ("What is the capital of France?", "chat"), ("How do I bake sourdough bread?", "chat"),
    ("Explain photosynthesis simply.", "chat"), ("Who wrote Hamlet?", "chat"), ("Tell me a joke about cats.", "chat"),
    ("Which planet is closest to the sun?", "chat"), ("Name three prime numbers.", "plain"), ("How far away is the Moon?", "plain"),
]


def test_sharded_and_partitioned_run_publishes_the_rows_of_a_single_pass(sources):
    """3 shards x 4 partitions publishes exactly the rows of 1 shard x 1 partition (as sets, same drops), although the
    first occurrence and its duplicates sit in different shards."""
    from huggingface_hub import HfApi

    from hf_pipeline.io.hub import load_card

    one = config(sources, dedupe_partitions=1)
    many = config(sources, dedupe_partitions=4)
    sharded = RunOptions(output="local/cq-many", tag="t", num_shards=3, chunk_rows=2)

    # the plan: 5 files in 3 shards; chat's file 0 (first occurrences) and file 2 (their repeats) in different shards,
    # and chunks never span the two sources
    plan = plan_run(STAGE, sharded, many)
    assert [p.label for p in plan.parts] == ["chat", "plain"] and len(plan.files) == 5
    shard_of = {plan.files[s.file].path: k for k, shard in enumerate(plan.shards) for s in shard.slices}
    assert shard_of["data/train-00000-of-00003.parquet"] != shard_of["data/train-00002-of-00003.parquet"]
    assert shard_of["data/train-00001-of-00003.parquet"] != shard_of["part-0.jsonl"]  # the cat joke's two sources
    assert plan.num_partitions == 4

    single = run_stage(STAGE, RunOptions(output="local/cq-one", tag="t", chunk_rows=3), one)
    split = run_stage(STAGE, sharded, many)
    rows_one, rows_many = published("local/cq-one", "t"), published("local/cq-many", "t")

    # one pass: first occurrences in input order (the first source's copy of a cross-source duplicate wins)
    assert [(r["query"], r["source"]) for r in rows_one] == FIRST_OCCURRENCES
    assert single.counts["drops"] == EXPECTED_DROPS and single.rows_in == 21 and single.rows_out == 8
    # sharded and partitioned: the same rows, the same counts
    key = lambda r: (r["query_id"], r["query"], r["source"])
    assert sorted(map(key, rows_many)) == sorted(map(key, rows_one)) and len(rows_many) == len(rows_one)
    assert split.counts == single.counts and (split.rows_in, split.rows_out) == (single.rows_in, single.rows_out)
    assert split.counts["stats"] == {"read_by_source": {"chat": 14, "plain": 7}, "queries_by_source": {"chat": 6, "plain": 2}}
    assert split.rows_in == split.rows_out + sum(split.counts["drops"].values())  # nothing lost silently

    files = sorted(f for f in HfApi().list_repo_files("local/cq-many", repo_type="dataset", revision="t") if f.startswith("data/"))
    assert files == [f"data/train-{p:05d}-of-00004.parquet" for p in range(4)]
    assert not [f for f in HfApi().list_repo_files("local/cq-many", repo_type="dataset", revision="t") if f.startswith(".hf_pipeline")]
    card = load_card("local/cq-many", "t")
    assert "**partitioned**" in card.content and "4 partition(s)" in card.content
    assert "| `chat` | local/cq-chat@v1 | 14 | 6 |" in card.content


def test_same_partitions_give_the_same_order_whatever_the_shards(sources):
    """The order is by partition, then input order: the number of shards does not change it."""
    cfg = config(sources, dedupe="exact", dedupe_partitions=3)
    run_stage(STAGE, RunOptions(output="local/cq-exact-1", tag="t", chunk_rows=4), cfg)
    result = run_stage(STAGE, RunOptions(output="local/cq-exact-2", tag="t", num_shards=2, chunk_rows=4), cfg)
    assert published("local/cq-exact-1", "t") == published("local/cq-exact-2", "t")
    # exact only: the normalised duplicates stay
    assert result.rows_out == 12 and result.counts["drops"]["duplicate_exact"] == 3
    assert "duplicate_normalized" not in result.counts["drops"]


def test_dedupe_none_keeps_every_checked_query(sources):
    result = run_stage(STAGE, RunOptions(output="local/cq-none", tag="t", num_shards=2), config(sources, dedupe="none", dedupe_partitions=2))
    assert result.rows_out == 15 and not any(k.startswith("duplicate") for k in result.counts["drops"])
    assert len(published("local/cq-none", "t")) == 15


def test_a_source_missing_its_column_fails_at_plan_time_before_any_model_loads(sources):
    from hf_pipeline.errors import PipelineError

    bad = [sources["sources"][0], {"name": "plain", "dataset": sources["sources"][1]["dataset"], "column": "prompt"}]
    # the moderation model does not exist: had setup run first, its error would come instead of the column's
    cfg = config({**sources, "sources": bad}, moderation_model="local/no-such-moderation-model")
    with pytest.raises(PipelineError, match=r"query source 'plain' \(.*plain\) lacks column 'prompt' named by its mapping \(it has: text, lang\)"):
        run_stage(STAGE, RunOptions(output="local/cq-bad"), cfg)
    where = [{"name": "plain", "dataset": sources["sources"][1]["dataset"], "column": "text", "where": {"language": "en"}}]
    with pytest.raises(PipelineError, match="lacks column 'language'"):
        plan_run(STAGE, RunOptions(output="local/cq-bad"), config({**sources, "sources": where}))


def test_source_names_must_be_unique():
    from hf_pipeline.errors import PipelineError
    from hf_pipeline.stages.collect_queries import inputs

    cfg = CollectQueriesConfig(sources=[{"name": "a", "dataset": "x/y", "column": "t"}, {"name": "a", "dataset": "x/z", "column": "t"}])
    with pytest.raises(PipelineError, match="configured twice"):
        inputs(cfg)


def test_inputs_are_one_part_per_source_and_split_with_revision_and_config():
    from hf_pipeline.io.datafiles import InputPart
    from hf_pipeline.stages.collect_queries import inputs

    cfg = CollectQueriesConfig(sources=[
        {"name": "a", "dataset": "org/a", "revision": "v2", "config": "en", "splits": ["train", "test"], "column": "t"},
        {"name": "b", "dataset": "org/b", "column": "t"},
    ])
    assert inputs(cfg) == [
        InputPart("org/a@v2", "train", "en", "a"), InputPart("org/a@v2", "test", "en", "a"), InputPart("org/b", "train", None, "b"),
    ]


# ---------------------------------------------------------------- the map, finalize and reduce without a Hub


def _ctx(cfg, label="src", resources=None):
    from hf_pipeline.io.datafiles import InputPart
    from hf_pipeline.stage import StageContext

    return StageContext(config=cfg, load=None, download=None, resources=resources, part=InputPart("x", label=label))


def test_map_extracts_by_the_parts_mapping_and_keys_by_the_dedupe_mode():
    from hf_pipeline.methods.text.queries import dedup_key, query_id
    from hf_pipeline.stages.collect_queries import collect_batch

    sources = [{"name": "chat", "dataset": "x/c", "conversation_column": "messages"}, {"name": "flat", "dataset": "x/f", "column": "q"}]
    batch = {"messages": [conversation("What is  AI?"), [{"role": "assistant", "content": "hi"}]], "_input_row": [0, 1]}
    out = collect_batch(batch, _ctx(CollectQueriesConfig(sources=sources), "chat"))
    assert out["query"] == ["What is AI?", ""] and out["status"] == ["ok", "no_user_turn"] and out["source"] == ["chat", "chat"]
    assert out["dedup_key"] == [dedup_key("What is AI?"), ""]
    exact = collect_batch({"q": ["What is AI?"]}, _ctx(CollectQueriesConfig(sources=sources, dedupe="exact"), "flat"))
    assert exact["dedup_key"] == ["What is AI?"] and exact["source"] == ["flat"]
    none = collect_batch({"q": ["What is AI?"]}, _ctx(CollectQueriesConfig(sources=sources, dedupe="none"), "flat"))
    assert none["dedup_key"] == [query_id("What is AI?")]


@pytest.mark.parametrize("mode", ["normalized", "exact", "none"])
def test_partitioned_dedupe_equals_one_pass_for_any_cut(mode):
    """Random queries with many duplicates, cut into shards at random places and hashed into partitions exactly as
    the runner does (worker.partition_of): the kept set and the drop counts equal those of one pass."""
    import random

    import datasets

    from hf_pipeline.io.features import features_from_spec
    from hf_pipeline.run.worker import partition_of
    from hf_pipeline.stages.collect_queries import collect_batch, dedupe, drop_failed

    rng = random.Random(7)
    words = ["what", "is", "AI", "the", "sun", "why", "cats", "sleep", "so", "much"]
    texts = []
    for _ in range(400):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 3)))
        if rng.random() < 0.3:
            text = text.upper() + "?"
        texts.append(text)
    cfg = CollectQueriesConfig(sources=[{"name": "src", "dataset": "x/y", "column": "text"}], dedupe=mode, max_chars=15)
    features = features_from_spec(STAGE.map.columns)

    def run(cuts: list[int], partitions: int):
        shards = [texts[a:b] for a, b in zip([0, *cuts], [*cuts, len(texts)])]
        finals, drops, stats = [], Counter(), Counter()
        for shard in shards:
            mapped = datasets.Dataset.from_dict(collect_batch({"text": shard}, _ctx(cfg)), features=features)
            kept, d, _ = drop_failed(mapped, _ctx(cfg))
            drops.update(d)
            finals.append(kept)
        out = []
        for p in range(partitions):
            part = datasets.concatenate_datasets([ds.select([i for i, q in enumerate(partition_of(ds["dedup_key"], partitions)) if q == p]) for ds in finals])
            kept, d, s = dedupe(part, _ctx(cfg))
            drops.update(d)
            stats.update(s["queries_by_source"])
            out += list(zip(kept["query_id"], kept["query"]))
        return out, dict(drops), dict(stats)

    one, drops, stats = run([], 1)
    assert len(one) < len(texts) and (mode == "none" or drops.get("duplicate_exact"))
    for cuts, partitions in (([100, 101, 350], 4), ([1, 2, 3], 7), ([200], 2)):
        many, d, s = run(cuts, partitions)
        assert sorted(many) == sorted(one) and d == drops and s == stats

