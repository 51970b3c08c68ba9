"""Silver data for distillation (§3.1, §3.3): the stratified draws (round-robin, and the per-row draw that
genericizer_silver makes on every worker), the topic filters, genericizer_silver through the runner (a scripted
teacher over several shards, and the real SmolLM2), and instantiator_silver's selection on hand-made judged rows."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from hf_pipeline.llm.config import LLMConfig
from hf_pipeline.methods.text.strata import bucket_of, draw_rates, draw_tolerance, drawn, equal_shares, quantile_edges, round_robin_sample
from hf_pipeline.methods.text.topics import topic_of
from hf_pipeline.run.runner import RunOptions, run_stage

# ---------------------------------------------------------------- pure parts


def _strata(sizes: dict[str, int]) -> tuple[list[str], list[str]]:
    strata = [s for s, n in sizes.items() for _ in range(n)]
    return strata, [f"{s}-{i}" for i, s in enumerate(strata)]


def test_round_robin_sample_balances_strata_and_redistributes_leftover():
    strata, keys = _strata({"big": 10, "mid": 3, "tiny": 1})
    picked = round_robin_sample(strata, keys, 9, seed=0)
    # equal shares of 9 are 3 each; tiny has only 1, so its leftover goes to the others (big gets 5, mid all 3)
    assert Counter(strata[i] for i in picked) == {"big": 5, "mid": 3, "tiny": 1}
    assert len(set(picked)) == 9
    # every stratum is represented before any stratum gets a second row: the first round holds all three
    assert {strata[i] for i in picked[:3]} == {"big", "mid", "tiny"}


def test_round_robin_sample_is_deterministic_and_independent_of_row_order():
    strata, keys = _strata({"a": 20, "b": 7, "c": 5})
    first = [keys[i] for i in round_robin_sample(strata, keys, 12, seed=3)]
    assert [keys[i] for i in round_robin_sample(strata, keys, 12, seed=3)] == first
    order = list(range(len(keys)))
    random.Random(1).shuffle(order)
    shuffled_strata, shuffled_keys = [strata[i] for i in order], [keys[i] for i in order]
    shuffled = [shuffled_keys[i] for i in round_robin_sample(shuffled_strata, shuffled_keys, 12, seed=3)]
    assert shuffled == first  # same rows, same seed: same sample in the same draw order
    assert [keys[i] for i in round_robin_sample(strata, keys, 12, seed=4)] != first  # the seed matters


def test_round_robin_sample_covers_every_row_when_asked_for_as_many_or_more():
    strata, keys = _strata({"a": 4, "b": 2})
    assert sorted(round_robin_sample(strata, keys, 100, seed=0)) == list(range(6))
    assert sorted(round_robin_sample(strata, keys, None, seed=0)) == list(range(6))
    assert round_robin_sample([], [], 5, seed=0) == []


def test_equal_shares_is_round_robins_allocation_in_expectation():
    # the same 9 of {10, 3, 1} as round-robin: tiny gives its 1, mid its 3, big takes the leftover 5
    assert equal_shares({"big": 10, "mid": 3, "tiny": 1}, 9) == {"big": 5, "mid": 3, "tiny": 1}
    assert equal_shares({"a": 10, "b": 10}, 5) == {"a": 2.5, "b": 2.5}  # fractional: an expectation, not a count
    assert equal_shares({"a": 4, "b": 2}, 100) == {"a": 4, "b": 2}  # asking for more than there is: everything
    assert draw_rates({"big": 10, "mid": 3, "tiny": 1, "none": 0}, 9) == {"big": 0.5, "mid": 1.0, "tiny": 1.0, "none": 0.0}


def _population(sizes: dict[str, int]) -> list[tuple[str, str]]:
    return [(s, f"{s}-{i:06d}") for s, n in sizes.items() for i in range(n)]


def test_per_row_draw_is_stratified_within_its_stated_tolerance():
    sizes = {"wildchat": 20_000, "gooaq": 5_000, "dolly": 300}
    n, seed = 3_000, 11
    rates = draw_rates(sizes, n)
    rows = _population(sizes)
    picked = [(s, k) for s, k in rows if drawn(seed, k, rates[s])]
    by_source = Counter(s for s, _ in picked)
    # dolly gives all 300; the other two share the rest equally (1350 each) however unequal their sizes
    assert equal_shares(sizes, n) == {"wildchat": 1350, "gooaq": 1350, "dolly": 300}
    assert by_source["dolly"] == 300
    for source in ("wildchat", "gooaq"):
        assert abs(by_source[source] - 1350) <= 3 * 1350**0.5
    tolerance = draw_tolerance(sizes, n)
    assert tolerance <= 3 * n**0.5 and abs(len(picked) - n) <= tolerance


def test_per_row_draw_is_deterministic_order_free_and_nested():
    sizes = {"a": 2_000, "b": 500}
    rates = draw_rates(sizes, 400)
    rows = _population(sizes)
    first = {k for s, k in rows if drawn(3, k, rates[s])}
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    # a row's fate is its own: any order, any cut into shards, the same rows
    assert {k for s, k in shuffled if drawn(3, k, rates[s])} == first
    assert {k for s, k in rows if drawn(4, k, rates[s])} != first  # the seed matters
    # nested: what a rate keeps, a higher rate keeps too (a bigger sample_size only adds rows)
    bigger = draw_rates(sizes, 800)
    assert first <= {k for s, k in rows if drawn(3, k, bigger[s])}
    assert all(drawn(0, k, 1.0) for _, k in rows[:10]) and not any(drawn(0, k, 0.0) for _, k in rows[:10])


def test_quantile_buckets():
    edges = quantile_edges([1, 2, 3, 4, 5, 6, 7, 8], 4)
    assert edges == [3, 5, 7]
    assert [bucket_of(v, edges) for v in [1, 2, 3, 4, 5, 6, 7, 8]] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert quantile_edges([5, 9], 1) == [] and bucket_of(9, []) == 0


@pytest.mark.parametrize(
    ("text", "topic"),
    [
        ("How do I reverse a list in Python?", "code"),
        ("Why does my SQL query return duplicate rows?", "code"),
        ("Is C# harder to learn than C++?", "code"),
        ("int main() { return 0; }", "code"),
        ("Write a Python program that computes the integral of x^2", "code"),  # code wins over math
        ("Write a program for the school concert", "other"),  # "program" alone is not code
        ("What is the integral of x^2 from 0 to 1?", "math"),
        ("Solve 3 + 4 * 2", "math"),
        ("What is the circumference of a circle?", "math"),
        ("Prove the Pythagorean theorem", "math"),
        ("What is the function of the liver?", "other"),  # everyday senses of technical words
        ("Our return policy lasts 30 days; the store is open 24/7 since 2020-2021", "other"),
        ("Why do chemicals react in a flask?", "other"),
        ("Who wrote Pride and Prejudice?", "other"),
    ],
)
def test_topic_keyword_filters(text, topic):
    assert topic_of(text) == topic


def test_topic_of_reads_every_text_given():
    assert topic_of("How do I do this?", "Use numpy.linalg.solve on the matrix.") == "code"
    assert topic_of(None, "") == "other"


# ---------------------------------------------------------------- genericizer_silver

QUERIES = [
    {"query_id": "w1", "query": "What is the capital of France?", "source": "wildchat"},
    {"query_id": "w2", "query": "How do I bake sourdough bread at home?", "source": "wildchat"},
    {"query_id": "w3", "query": "Give me three tips for learning the guitar.", "source": "wildchat"},
    {"query_id": "w4", "query": "How tall is the Eiffel Tower?", "source": "wildchat"},
    {"query_id": "g1", "query": "Who wrote Pride and Prejudice?", "source": "gooaq"},
    {"query_id": "d1", "query": "Summarize the plot of Hamlet.", "source": "dolly"},
]


class ScriptedTeacher:
    """A teacher that templatizes by rule (the query's last word becomes a variable), replies with broken JSON to a
    query containing 'broken', and records every query it is asked about (read back out of the teacher prompt)."""

    def __init__(self):
        self.asked: list[str] = []

    def generate(self, messages, sampling, json_schema=None):
        from hf_pipeline.llm.base import Completion

        out = []
        for conversation in messages:
            query = conversation[-1]["content"].split("<<<Query:\n", 1)[1].rsplit("\n>>>", 1)[0]
            self.asked.append(query)
            if "broken" in query:
                out.append(Completion("{not json", "stop"))
                continue
            words = query.rstrip("?.!").split()
            template = " ".join(words[:-1] + [f"<fi>{words[-1]}</fi>"]) + "?"
            out.append(Completion(json.dumps({"template": template, "compatible_document_description": "Any text."}), "stop"))
        return out


@pytest.fixture
def scripted_teacher(monkeypatch):
    from hf_pipeline.stages import genericizer_silver

    teacher = ScriptedTeacher()
    monkeypatch.setattr(genericizer_silver, "load_backend", lambda llm: teacher)
    return teacher


def _queries(n_per_source: dict[str, int]) -> list[dict]:
    rows = []
    for source, n in n_per_source.items():
        for i in range(n):
            text = f"Question {i} from {source} about topic{i}?" if i % 17 else f"A broken question {i} from {source}?"
            rows.append({"query_id": f"{source}-{i:04d}", "query": text, "source": source})
    return rows


def _expected_draw(rows: list[dict], sample_size: int, seed: int) -> set[str]:
    rates = draw_rates(Counter(r["source"] for r in rows), sample_size)
    return {r["query_id"] for r in rows if drawn(seed, r["query_id"], rates[r["source"]])}


def test_genericizer_silver_draws_per_row_and_asks_the_teacher_only_about_the_sample(local_hub, tmp_path, scripted_teacher):
    """Over 3 shards of a 3-file queries dataset the draw is the same as over 1 shard; the teacher sees exactly the
    drawn queries (never the others); every query read is accounted for (kept, dropped by the teacher, not_sampled)."""
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card
    from hf_pipeline.stages.genericizer_silver import STAGE, GenericizerSilverConfig

    rows = _queries({"big": 600, "mid": 60, "small": 8})
    folder = tmp_path / "queries"
    folder.mkdir()
    for k in range(3):  # three files: the shards read different files
        (folder / f"part-{k}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[k::3]))
    config = GenericizerSilverConfig(queries=str(folder), sample_size=90, seed=5, llm=LLMConfig(backend="transformers"))
    expected = _expected_draw(rows, 90, 5)

    one = run_stage(STAGE, RunOptions(output="local/gs-one", tag="t", chunk_rows=100), config)
    asked_one = list(scripted_teacher.asked)
    scripted_teacher.asked.clear()
    three = run_stage(STAGE, RunOptions(output="local/gs-three", tag="t", num_shards=3, chunk_rows=50), config)

    by_id = {r["query_id"]: r for r in rows}
    for result, asked in ((one, asked_one), (three, scripted_teacher.asked)):
        stats, drops = result.counts["stats"], result.counts["drops"]
        # the teacher was asked about the drawn queries, once each, and about nothing else
        assert sorted(asked) == sorted(by_id[q]["query"] for q in expected) and stats["sampled"] == len(expected)
        assert stats["queries_by_source"] == {"big": 600, "mid": 60, "small": 8}
        assert stats["sampled_by_source"]["small"] == 8  # a source smaller than its share gives everything
        assert stats["target_by_source"] == {"big": 41.0, "mid": 41.0, "small": 8.0} and stats["sample_target"] == 90
        assert abs(stats["sampled"] - 90) <= stats["sample_tolerance"]
        assert drops["not_sampled"] == 668 - len(expected) and drops["unparseable"] == sum("broken" in by_id[q]["query"] for q in expected)
        assert result.rows_in == 668 == result.rows_out + sum(drops.values())
    published_one = load_dataset("local/gs-one", revision="t", split="train")
    published_three = load_dataset("local/gs-three", revision="t", split="train")
    assert sorted(published_three["query_id"]) == sorted(published_one["query_id"])
    assert set(published_one["query_id"]) == {q for q in expected if "broken" not in by_id[q]["query"]}
    card = load_card("local/gs-three", "t")
    assert f"this run drew **{one.counts['stats']['sampled']}** for a target of 90" in card.content
    assert "| `small` | 8 | 8.0 | 8 |" in card.content


def test_genericizer_silver_reads_the_per_source_counts_from_the_collect_queries_card(local_hub, tmp_path, scripted_teacher, monkeypatch):
    """Queries published by collect_queries carry their per-source counts in the card: the draw's rates come from
    there, without counting the data; the published sample is the one the counted data would give."""
    from hf_pipeline.stages import genericizer_silver
    from hf_pipeline.stages.collect_queries import STAGE as COLLECT
    from hf_pipeline.stages.collect_queries import CollectQueriesConfig

    texts = {"alpha": [f"How does alpha thing {i} work?" for i in range(40)], "beta": [f"Why is beta item {i} red?" for i in range(5)]}
    sources = []
    for name, lines in texts.items():
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
        sources.append({"name": name, "dataset": str(path), "column": "text"})
    collected = run_stage(COLLECT, RunOptions(output="local/gs-collected", tag="t"), CollectQueriesConfig(sources=sources, dedupe_partitions=2))
    assert collected.counts["stats"]["queries_by_source"] == {"alpha": 40, "beta": 5}

    def no_scan(ctx):
        raise AssertionError("the counts are in the card: the data must not be counted")

    monkeypatch.setattr(genericizer_silver, "counts_from_data", no_scan)
    config = genericizer_silver.GenericizerSilverConfig(queries="local/gs-collected@t", sample_size=20, seed=1)
    result = run_stage(genericizer_silver.STAGE, RunOptions(output="local/gs-from-card", tag="t", num_shards=2), config)
    from datasets import load_dataset

    queries = load_dataset("local/gs-collected", revision="t", split="train").to_list()
    expected = _expected_draw(queries, 20, 1)
    assert result.counts["stats"]["sampled_by_source"]["beta"] == 5
    assert sorted(load_dataset("local/gs-from-card", revision="t", split="train")["query_id"]) == sorted(expected)


def test_genericizer_silver_checks_the_queries_columns_at_plan_time(local_hub, tmp_path):
    from hf_pipeline.errors import PipelineError
    from hf_pipeline.run.runner import plan_run
    from hf_pipeline.stages.genericizer_silver import STAGE, GenericizerSilverConfig

    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"query_id": "a", "text": "hi"}) + "\n")
    with pytest.raises(PipelineError, match=r"lacks column 'query' \(it has: query_id, text\)"):
        plan_run(STAGE, RunOptions(output="local/gs-bad"), GenericizerSilverConfig(queries=str(path)))


def test_genericizer_silver_end_to_end(local_hub, tmp_path):
    """Through the runner on the local Hub with the real SmolLM2-135M as the teacher. SmolLM2 never writes <fi>
    tags (it copies or answers the query), so with the default min_variables=1 every row would be dropped as
    no_variables; min_variables=0 lets grammar-valid replies through, so the published rows can be checked."""
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card, push_local_dataset
    from hf_pipeline.stages.genericizer_silver import STAGE, GenericizerSilverConfig

    path = tmp_path / "queries.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUERIES))
    push_local_dataset(str(path), "local/silver-queries", tag="v1")
    config = GenericizerSilverConfig(
        queries="local/silver-queries@v1", sample_size=4, seed=0, max_field_chars=40, min_variables=0,
        llm=LLMConfig(model="packaged:smollm2", backend="transformers", max_tokens=64),
    )
    result = run_stage(STAGE, RunOptions(output="local/genericizer-silver", tag="t"), config)

    # 4 of 6 queries, equal shares: gooaq and dolly give their only query (rate 1), wildchat's 4 are drawn at rate
    # 2/4 (the pushed dataset has no collect_queries card: the counts come from its source column)
    expected = _expected_draw(QUERIES, 4, 0)
    stats = result.counts["stats"]
    assert stats["queries_by_source"] == {"dolly": 1, "gooaq": 1, "wildchat": 4}
    assert stats["target_by_source"] == {"dolly": 1.0, "gooaq": 1.0, "wildchat": 2.0}
    assert stats["sampled_by_source"] == dict(Counter(q["source"] for q in QUERIES if q["query_id"] in expected))
    drops = result.counts["drops"]
    assert result.rows_in == 6 and result.rows_in == result.rows_out + sum(drops.values())  # nothing lost silently
    assert drops.get("not_sampled", 0) == 6 - len(expected)
    assert "ok" not in drops and sum(stats["kept_by_source"].values()) == result.rows_out
    assert load_card("local/genericizer-silver", "t").data.hf_pipeline["counts"]["drops"] == drops

    assert result.rows_out > 0  # constrained decoding closes the JSON within max_tokens (see test_genericize)
    rows = load_dataset("local/genericizer-silver", revision="t", split="train")
    assert rows.column_names == list(STAGE.output_columns)
    by_id = {q["query_id"]: q for q in QUERIES}
    for row in rows:
        assert row["query_id"] in expected
        user, assistant = row["messages"]
        # the query_templatizer contract: the bare query in, the JSON reply out, the reply last (the only loss)
        assert user == {"role": "user", "content": by_id[row["query_id"]]["query"]} and row["query"] == user["content"]
        assert assistant["role"] == "assistant"
        reply = json.loads(assistant["content"])
        assert reply == {"template": row["template"], "compatible_document_description": row["compatible_document_description"]}


def test_genericizer_silver_messages_parse_as_the_student_stage_parses_them():
    from hf_pipeline.llm.base import Completion
    from hf_pipeline.llm.json_output import parse_json_completion
    from hf_pipeline.methods.genericizing import template_schema
    from hf_pipeline.stages.genericizer_silver import student_messages

    messages = student_messages("Où est Paris ?", "Où est <fi>une ville</fi> ?", "Un atlas qui situe <fi>des villes</fi>.")
    assert messages[0] == {"role": "user", "content": "Où est Paris ?"}  # genericize's student mode sends the bare query
    value, status, _ = parse_json_completion(Completion(messages[1]["content"], "stop"), template_schema(1500))
    assert status == "ok" and value == {"template": "Où est <fi>une ville</fi> ?", "compatible_document_description": "Un atlas qui situe <fi>des villes</fi>."}
    assert "Où" in messages[1]["content"]  # not \u-escaped: the student learns plain text


def test_genericizer_silver_finalize_teaches_only_drawn_rows_and_counts_every_drop_by_reason():
    import datasets

    from hf_pipeline.io.features import features_from_spec
    from hf_pipeline.stage import StageContext
    from hf_pipeline.stages.genericizer_silver import STAGE, GenericizerSilverConfig, teach_and_keep

    queries = [*QUERIES, {"query_id": "b1", "query": "A broken query?", "source": "gooaq"}]
    drawn_ids = {"w1", "w3", "g1", "b1"}
    mapped = datasets.Dataset.from_list(
        [{**q, "query": q["query"] if q["query_id"] in drawn_ids else None, "drawn": q["query_id"] in drawn_ids} for q in queries],
        features=features_from_spec(STAGE.map.columns),
    )
    teacher = ScriptedTeacher()
    ctx = StageContext(config=GenericizerSilverConfig(queries="q", sample_size=4), load=None, download=None, resources={"llm": teacher})
    kept, drops, stats = teach_and_keep(mapped, ctx)
    assert sorted(teacher.asked) == sorted(q["query"] for q in queries if q["query_id"] in drawn_ids)
    assert kept["query_id"] == ["w1", "w3", "g1"] and kept.column_names[:3] == ["template_id", "query_id", "source"]
    assert drops == {"not_sampled": 3, "unparseable": 1}
    assert stats == {
        "queries_by_source": {"wildchat": 4, "gooaq": 2, "dolly": 1},
        "sampled_by_source": {"wildchat": 2, "gooaq": 2},
        "kept_by_source": {"wildchat": 2, "gooaq": 1},
    }


# ---------------------------------------------------------------- instantiator_silver (hand-made judged rows)

TEMPLATES = {
    "t_math": "How do I compute the <fi>mathematical quantity</fi>?",
    "t_code": "How do I write a <fi>programming language</fi> function that <fi>task</fi>?",
    "t_other": "What is <fi>a thing</fi> known for in <fi>a place</fi> during <fi>a period</fi>?",
    "t_null": "Which <fi>sports team</fi> won the <fi>tournament</fi>?",
}
TOPIC_TEXT = {  # an instruction per template, with the keywords its topic filter needs
    "t_math": ("How do I compute the derivative of x^2?", "math"),
    "t_code": ("How do I write a Python function that sorts a list?", "code"),
    "t_other": ("What is Lyon known for in France during the Renaissance?", "other"),
}
MAX_DOCUMENT_CHARS = 40


DOC_IDS = [f"d{i}" for i in range(19)]  # the documents file, in this order: document dN is row N
DOCUMENTS_FILE = "documents.parquet"


def _document_text(doc_id: str) -> str:
    return f"Document {doc_id}. " + "Lorem ipsum dolor sit amet. " * 5


def _judged_rows() -> list[dict]:
    """Judge-output rows: 19 positives (12 other, 4 math, 3 code; answers of growing length), 4 below the
    score, 2 failed instantiations, 1 unparseable judgment, 10 nulls, 1 positive whose document's position does
    not exist, 1 positive whose position holds another document."""
    rows = []

    def row(doc_id, template_id, status, instruction=None, answer=None, raw=None, score=None, judge_status="skipped",
            doc_row=None):
        doc_row = doc_row if doc_row is not None else (DOC_IDS.index(doc_id) if doc_id in DOC_IDS else 999)
        rows.append(dict(
            doc_id=doc_id, template_id=template_id, template=TEMPLATES[template_id], doc_file=DOCUMENTS_FILE,
            doc_row=doc_row, chunk_index=0, score=0.9, instruction=instruction, answer=answer,
            excerpt_ratio=0.9 if answer else None, excerpt_spans=[[0, 5]] if answer else [], raw_answer=raw,
            generated_tokens=10, status=status, status_detail=None, judge_score=score,
            judge_feedback="fine" if score else None, judge_status=judge_status,
        ))

    n = 0
    for template_id, count in (("t_other", 12), ("t_math", 4), ("t_code", 3)):
        instruction, _ = TOPIC_TEXT[template_id]
        for _ in range(count):
            answer = "word " * (n + 1)  # answer i is 5·(i+1) characters: distinct lengths for the quantile buckets
            row(f"d{n}", template_id, "ok", instruction, answer, f"Sure: <excerpt>{answer[:5]}<...>{answer[-5:]}</excerpt>", 4 + n % 2, "ok")
            n += 1
    for i in range(4):
        row(f"d{i}", "t_other", "ok", TOPIC_TEXT["t_other"][0], "an answer", "<excerpt>an<...>answer</excerpt>", 1 + i % 3, "ok")
    row("d0", "t_math", "excerpt_not_found", raw="<excerpt>nowhere<...>found</excerpt>")
    row("d1", "t_math", "low_excerpt_ratio", answer="mostly my own words", raw="mostly my own words")
    row("d2", "t_code", "ok", TOPIC_TEXT["t_code"][0], "an answer", "<excerpt>an<...>answer</excerpt>", None, "unparseable")
    for i in range(10):
        row(f"d{i}", "t_null", "null")
    row("missing_doc", "t_other", "ok", TOPIC_TEXT["t_other"][0], "an answer", "<excerpt>an<...>answer</excerpt>", 5, "ok")
    row("d3", "t_other", "ok", TOPIC_TEXT["t_other"][0], "an answer", "<excerpt>an<...>answer</excerpt>", 5, "ok", doc_row=4)
    return rows


@pytest.fixture(scope="module")
def judged_inputs(tmp_path_factory):
    """Local parquet/jsonl inputs (local paths are valid refs): judged rows with judge.py's exact schema."""
    import datasets

    from hf_pipeline.io.features import features_from_spec
    from hf_pipeline.stages.judge import STAGE as JUDGE

    folder = tmp_path_factory.mktemp("judged")
    rows = _judged_rows()
    features = features_from_spec(JUDGE.output_columns)
    datasets.Dataset.from_list(rows, features=features).to_parquet(str(folder / "judged.parquet"))
    datasets.Dataset.from_dict({"doc_id": DOC_IDS, "text": [_document_text(d) for d in DOC_IDS]}).to_parquet(str(folder / DOCUMENTS_FILE))
    return {"judged": str(folder / "judged.parquet"), "documents": str(folder / DOCUMENTS_FILE)}


def _run_instantiator_silver(inputs: dict, output: str, num_shards: int = 1, **config):
    from datasets import load_dataset

    from hf_pipeline.stages.instantiator_silver import STAGE, InstantiatorSilverConfig

    cfg = InstantiatorSilverConfig(documents=inputs["documents"], **config)
    result = run_stage(STAGE, RunOptions(input=inputs["judged"], output=output, tag="t", num_shards=num_shards), cfg)
    return result, load_dataset(output, revision="t", split="train")


def test_instantiator_silver_keeps_positives_and_five_percent_nulls(local_hub, judged_inputs):
    from hf_pipeline.stages.instantiator_silver import STAGE

    result, rows = _run_instantiator_silver(judged_inputs, "local/instantiator-silver", max_document_chars=MAX_DOCUMENT_CHARS)
    assert rows.column_names == list(STAGE.output_columns)
    # 19 positives, all kept (no cap); nulls sized to 5% of the output: round(19 · 0.05 / 0.95) = 1 of 20
    assert result.rows_out == 20 and sum(rows["is_null"]) == 1
    stats, drops = result.counts["stats"], result.counts["drops"]
    assert stats["null_share"] == 0.05 and stats["positives_available"] == 19 and stats["nulls_available"] == 10
    assert drops == {"below_min_score": 4, "not_ok": 2, "not_judged": 1, "unknown_document": 1, "document_mismatch": 1,
                     "null_not_selected": 9}
    assert stats["not_ok_by_instantiate_status"] == {"excerpt_not_found": 1, "low_excerpt_ratio": 1}
    assert result.rows_in == 38 == result.rows_out + sum(drops.values())
    assert Counter(rows["topic"]) == {"other": 12 + 1, "math": 4, "code": 3}  # the null's topic is its template's

    positives = [r for r in rows if not r["is_null"]]
    assert all(r["judge_score"] >= 4 for r in positives)
    assert {r["topic"] for r in positives if r["template_id"] == "t_math"} == {"math"}
    assert {r["num_variables"] for r in positives if r["template_id"] == "t_other"} == {3}
    # quantile buckets of the expanded answer's length (document dN's answer has 5·(N+1) characters): four
    # buckets of about equal size, longer answers never in a lower bucket
    buckets = [r["length_bucket"] for r in sorted(positives, key=lambda r: int(r["doc_id"][1:]))]
    assert buckets == [0] * 4 + [1] * 5 + [2] * 5 + [3] * 5

    documents = {d: _document_text(d) for d in DOC_IDS}
    for r in rows:
        user, assistant = r["messages"]
        # the template_instantiator contract, exactly as instantiate's student mode sends it
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert json.loads(user["content"]) == {
            "instruction_template": TEMPLATES[r["template_id"]], "document": documents[r["doc_id"]][:MAX_DOCUMENT_CHARS],
        }
        if r["is_null"]:
            assert assistant["content"] == "null" and r["instruction"] is None and r["length_bucket"] is None
        else:
            # the raw, tagged answer: what the student must learn to write
            assert json.loads(assistant["content"]) == {"instruction": r["instruction"], "answer": r["answer"]}
            assert r["answer"].startswith("Sure: <excerpt>")


def test_instantiator_silver_draws_round_robin_across_strata(local_hub, judged_inputs):
    config = dict(max_examples=8, null_fraction=0.25, length_buckets=1, seed=0)
    result, rows = _run_instantiator_silver(judged_inputs, "local/instantiator-silver-capped", **config)
    # 8 examples: 2 nulls (25%) and 6 positives, two from each of the three strata, although "other" has 12
    assert result.rows_out == 8 and sum(rows["is_null"]) == 2
    positives = [r for r in rows if not r["is_null"]]
    assert Counter(r["topic"] for r in positives) == {"other": 2, "math": 2, "code": 2}
    stats, drops = result.counts["stats"], result.counts["drops"]
    assert stats["strata_selected"] == {"0/1/math": 2, "0/2/code": 2, "0/3/other": 2}
    assert stats["strata_available"] == {"0/1/math": 4, "0/2/code": 3, "0/3/other": 12}
    assert drops["not_selected"] == 13 and drops["null_not_selected"] == 8 and stats["null_share"] == 0.25
    assert result.rows_in == result.rows_out + sum(drops.values())

    # deterministic: the same seed picks the same rows, however the judged rows are sharded (the selection is one
    # global reduce); another seed other rows of the big stratum
    again_result, again = _run_instantiator_silver(judged_inputs, "local/instantiator-silver-capped-again", num_shards=3, **config)
    assert again_result.counts["stats"] == stats and again_result.counts["drops"] == drops
    def pairs(ds):
        return list(zip(ds["doc_id"], ds["template_id"]))

    assert pairs(again) == pairs(rows)
    _, reseeded = _run_instantiator_silver(judged_inputs, "local/instantiator-silver-reseeded", **{**config, "seed": 1})
    assert pairs(reseeded) != pairs(rows)


def test_genericizer_silver_teacher_gets_the_format_constraint():
    """constrain_format and its bounds reach the teacher's genericize config (the offline distillation demo's SmolLM2
    writes no <fi> variable without it)."""
    from hf_pipeline.stages.genericizer_silver import GenericizerSilverConfig, teacher_config

    config = teacher_config(GenericizerSilverConfig(queries="q", constrain_format=True, max_description_words=3, max_pattern_units=20))
    assert (config.mode, config.constrain_format, config.max_description_words, config.max_pattern_units) == ("teacher", True, 3, 20)
