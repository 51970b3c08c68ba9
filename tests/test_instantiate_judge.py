"""instantiate and judge: the paper's checks on a parsed pair, Flow Judge reply parsing, both stages end to end
through the runner with the real SmolLM2, and how instantiate reads documents: by the pairs' positions, only the
files they point at, checked against the pair's doc_id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_pipeline.io.datafiles import MissingData
from hf_pipeline.methods.pairs import user_message
from hf_pipeline.stages.instantiate import InstantiateConfig, check_pair
from hf_pipeline.stages.judge import parse_judgment

DOCUMENT = (
    "Diabetes is often accompanied by severe periodontal disease and complicated by xerostomia. "
    "This results in increased incidence of caries and loss of teeth. Flossing daily helps."
)
CONFIG = InstantiateConfig(documents="d")
SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_ok_pair_is_expanded_with_offsets():
    raw = "Diabetes has several effects: <excerpt>Diabetes is often<...>loss of teeth.</excerpt>"
    status, detail, answer, spans, ratio = check_pair("what effects does diabetes have?", raw, DOCUMENT, CONFIG)
    assert status == "ok" and detail is None
    start, end = spans[0]
    assert DOCUMENT[start:end] == DOCUMENT[: DOCUMENT.index("teeth.") + len("teeth.")]
    assert answer.endswith(DOCUMENT[start:end]) and 0.8 <= ratio < 1.0


def test_statuses_of_bad_pairs():
    assert check_pair("what effects does <fi>a condition</fi> have?", "x", DOCUMENT, CONFIG)[0] == "unfilled_variables"
    assert check_pair("q", "<excerpt>Insulin is<...>teeth.</excerpt>", DOCUMENT, CONFIG)[0] == "excerpt_not_found"
    low = check_pair("q", "In my own long words, quite a lot happens here: <excerpt>Flossing daily helps.</excerpt>", DOCUMENT, CONFIG)
    assert low[0] == "low_excerpt_ratio" and low[2] is not None and low[4] < 0.8


def test_instruction_with_excerpt_markup_and_mixed_excerpt_answers():
    """An instruction holding excerpt markup is a status of its own; an answer mixing both excerpt spellings is
    expanded (each excerpt on its own) and passes."""
    from hf_pipeline.stages.instantiate import STATUSES

    for instruction in ("what does <excerpt>Diabetes is often</excerpt> cause?", "what does diabetes<...>cause?",
                        "explain </excerpt> please", "Quote <EXCERPT>it</EXCERPT>"):
        status, detail, answer, spans, ratio = check_pair(instruction, "<excerpt>Flossing daily helps.</excerpt>", DOCUMENT, CONFIG)
        assert (status, answer, spans, ratio) == ("excerpt_in_instruction", None, [], None) and "markup" in detail
    assert "excerpt_in_instruction" in STATUSES
    # <fi> tags are checked first: an instruction with both is unfilled
    assert check_pair("<fi>x</fi> <excerpt>y</excerpt>", "x", DOCUMENT, CONFIG)[0] == "unfilled_variables"
    mixed = "<excerpt>Diabetes is often<...>xerostomia.</excerpt> So: <excerpt>This results in increased incidence of caries and loss of teeth.</excerpt>"
    status, _, answer, spans, ratio = check_pair("what does diabetes cause?", mixed, DOCUMENT, CONFIG)
    assert status == "ok" and answer == DOCUMENT[: DOCUMENT.index(" Flossing")].replace("xerostomia. This", "xerostomia. So: This")
    assert [DOCUMENT[a:b] for a, b in spans] == [DOCUMENT[: DOCUMENT.index("xerostomia.") + 11],
                                                "This results in increased incidence of caries and loss of teeth."]
    assert ratio > 0.95


def test_student_message_is_the_published_contract():
    message = json.loads(user_message("what is <fi>x</fi>?", "doc text", "student"))
    assert message == {"instruction_template": "what is <fi>x</fi>?", "document": "doc text"}
    assert "doc text" in user_message("what is <fi>x</fi>?", "doc text", "teacher")


def test_document_first_layout_puts_the_document_first():
    """document_first: the same fields (student) or the same prompt (teacher), the document before the template,
    so a document's prompts share their prefix up to the template."""
    template, document = "what is <fi>x</fi>?", "doc text"
    student = user_message(template, document, "student", "document_first")
    assert list(json.loads(student)) == ["document", "instruction_template"]
    assert json.loads(student) == json.loads(user_message(template, document, "student"))
    teacher = user_message(template, document, "teacher", "document_first")
    assert teacher.index(document) < teacher.index(template)
    other = user_message("why <fi>y</fi>?", document, "teacher", "document_first")
    shared = next(i for i, (a, b) in enumerate(zip(teacher, other)) if a != b)  # length of the common prefix
    assert shared > teacher.index(document) + len(document)  # the prefix holds the whole document
    plain = user_message(template, document, "teacher")
    assert plain.index(template) < plain.index(document)
    with pytest.raises(Exception, match="prompt_layout"):
        user_message(template, document, "student", "sideways")


class RecordingLLM:
    """Stands in for a backend: records each generate call, refuses prompts holding TOO_LONG, else answers `reply`."""

    def __init__(self, reply: str):
        self.reply = reply
        self.calls = []

    def generate(self, messages, sampling, json_schema=None):
        from hf_pipeline.llm.base import Completion

        self.calls.append((messages, json_schema))
        return [
            Completion("", "prompt_too_long", 5000, error="prompt_too_long: 5000 prompt tokens + 1 generated > context of 2048 tokens")
            if "TOO_LONG" in m[0]["content"] else Completion(self.reply, "stop", 10, 3)
            for m in messages
        ]


def test_instantiate_batch_is_one_call_with_a_schema_per_row_and_documents_adjacent():
    from types import SimpleNamespace

    from hf_pipeline.llm.json_output import nullable
    from hf_pipeline.stages.instantiate import STATUSES, instantiate_batch, pair_schema

    config = InstantiateConfig(documents="d", constrain_format=True, prompt_layout="document_first")
    documents = {"a": "Alpha is first. It leads.", "b": "Beta is second. It follows.", "long": "TOO_LONG " * 3}
    templates = {"t1": "What is <fi>a letter</fi>?", "t2": "Why does <fi>a letter</fi> lead?"}
    pairs = [("a", "t1"), ("b", "t1"), ("a", "t2"), ("long", "t1"), ("missing", "t1"), ("b", "t2")]
    # the documents input as one data file, rows in this order; pairs point at their row (the missing one past the end)
    order = list(documents)
    position = {d: order.index(d) if d in documents else len(order) for d, _ in pairs}

    def read_rows(ref, path, rows):
        import pyarrow as pa

        past_end = {r: f"{ref} file {path} has {len(order)} rows" for r in rows if r >= len(order)}
        if past_end:  # as datafiles.FileReader says it: the rows that do not exist, nothing read
            raise MissingData(f"{ref} file {path} has {len(order)} rows", past_end)
        return pa.table({"doc_id": [order[r] for r in rows], "text": [documents[order[r]] for r in rows]})

    batch = {"doc_id": [d for d, _ in pairs], "template_id": [t for _, t in pairs], "template": [templates[t] for _, t in pairs],
             "doc_file": ["docs.parquet"] * 6, "doc_row": [position[d] for d, _ in pairs], "chunk_index": [0] * 6, "score": [0.9] * 6}
    llm = RecordingLLM("null")
    ctx = SimpleNamespace(config=config, resources={"llm": llm}, read_rows=read_rows)
    out = instantiate_batch(batch, ctx)

    assert len(llm.calls) == 1
    messages, schemas = llm.calls[0]
    sent = [json.loads(m[0]["content"]) for m in messages]
    assert [(m["document"], m["instruction_template"]) for m in sent] == [
        (documents[d], templates[t]) for d, t in [("a", "t1"), ("a", "t2"), ("b", "t1"), ("b", "t2"), ("long", "t1")]
    ]
    assert all(list(m) == ["document", "instruction_template"] for m in sent)
    assert schemas == [nullable(pair_schema(config, m["instruction_template"], m["document"])) for m in sent]
    assert out["doc_id"] == batch["doc_id"]  # rows come back in input order
    assert out["status"] == ["null", "null", "null", "prompt_too_long", "unknown_document", "null"]
    assert "context of 2048" in out["status_detail"][3] and set(out["status"]) <= set(STATUSES)

    # without constrain_format every row shares one schema, passed once
    llm.calls.clear()
    instantiate_batch(batch, SimpleNamespace(config=InstantiateConfig(documents="d"), resources=ctx.resources, read_rows=read_rows))
    assert len(llm.calls) == 1 and isinstance(llm.calls[0][1], dict)


def test_judge_batch_keeps_documents_adjacent_and_counts_prompt_too_long():
    from types import SimpleNamespace

    from hf_pipeline.methods.pairs import INSTANTIATE_COLUMNS
    from hf_pipeline.stages.judge import JUDGE_STATUSES, PROMPT, JudgeConfig, judge_batch

    rows = [("a", "ok", "answer a1"), ("b", "ok", "answer b1"), ("a", "ok", "answer a2"), ("c", "null", None), ("b", "ok", "TOO_LONG")]
    batch = {column: [None] * len(rows) for column in INSTANTIATE_COLUMNS}
    batch.update(doc_id=[r[0] for r in rows], status=[r[1] for r in rows], answer=[r[2] for r in rows], instruction=["q"] * len(rows))
    llm = RecordingLLM("<feedback>Direct.</feedback><score>4</score>")
    out = judge_batch(batch, SimpleNamespace(config=JudgeConfig(), resources={"llm": llm, "prompt": PROMPT.read_text()}))
    (messages, _), = llm.calls
    order = [next(r[2] for r in rows if r[2] and r[2] in m[0]["content"]) for m in messages]
    assert order == ["answer a1", "answer a2", "answer b1", "TOO_LONG"]
    assert out["judge_status"] == ["ok", "ok", "ok", "skipped", "prompt_too_long"]
    assert out["judge_score"] == [4, 4, 4, None, None] and set(out["judge_status"]) <= set(JUDGE_STATUSES)


def test_parse_flow_judge_replies():
    assert parse_judgment("<feedback>Direct and complete.</feedback>\n<score>5</score>") == (5, "Direct and complete.", "ok")
    assert parse_judgment("<feedback>meh</feedback><score> 3 </score>")[0] == 3
    assert parse_judgment("<feedback>no score given</feedback>") == (None, "no score given", "unparseable")
    assert parse_judgment("<score>7</score>")[2] == "unparseable"  # outside the 1-5 rubric
    assert parse_judgment("<score>2</score> on reflection <score>4</score>")[:1] == (4,)  # the last one wins
    # the last score is out of the rubric: never an earlier in-range one in its place
    assert parse_judgment("a <score>4</score> would be kind; <score>7</score>") == (None, None, "unparseable")
    for reply in ("<score>4.5</score>", "<score>four</score>", "<score></score>", "", None, "Score: 4"):
        assert parse_judgment(reply)[::2] == (None, "unparseable"), reply


class ScriptedLLM:
    """Answers the i-th prompt of a call with the i-th scripted Completion (fewer scripted than asked: the engine
    gave no answer for the rest)."""

    def __init__(self, completions):
        self.completions = completions

    def generate(self, messages, sampling, json_schema=None):
        return self.completions[: len(messages)]


def test_every_judge_path_gives_a_status():
    """Each way a judged row can end is a documented judge_status, never a crash or a silent drop."""
    from types import SimpleNamespace

    from hf_pipeline.llm.base import Completion
    from hf_pipeline.methods.pairs import INSTANTIATE_COLUMNS
    from hf_pipeline.stages.judge import JUDGE_STATUSES, PROMPT, JudgeConfig, judge_batch

    scripted = [
        Completion("<feedback>Good.</feedback><score>5</score>", "stop"),  # ok
        Completion("<feedback>I cannot decide.</feedback>", "stop"),  # no score: unparseable
        Completion("<feedback>Fine.</feedback><score>4</score><score>9</score>", "stop"),  # last score out of range
        Completion("<feedback>It goes on and on", "length", completion_tokens=512),  # cut before a score: length
        Completion("<feedback>Ok.</feedback><score>3</score>", "length"),  # a score, though cut after it: ok
        Completion("", "error", error="CUDA out of memory"),  # error
        Completion("", "prompt_too_long", error="prompt_too_long: 9000 prompt tokens"),
        Completion(None, "stop"),  # no text at all
    ]  # the 9th ok row gets no completion from the engine
    n = len(scripted) + 2
    batch = {column: [None] * n for column in INSTANTIATE_COLUMNS}
    batch.update(doc_id=[f"d{i}" for i in range(n)], status=["ok"] * (n - 1) + ["null"], answer=["a"] * n, instruction=["q"] * n)
    config = JudgeConfig()
    out = judge_batch(batch, SimpleNamespace(config=config, resources={"llm": ScriptedLLM(scripted), "prompt": PROMPT.read_text()}))
    assert out["judge_status"] == ["ok", "unparseable", "unparseable", "length", "ok", "error", "prompt_too_long", "unparseable",
                                   "error", "skipped"]
    assert out["judge_score"] == [5, None, None, None, 3, None, None, None, None, None]
    assert out["judge_feedback"][5] == "CUDA out of memory" and "no completion" in out["judge_feedback"][8]
    assert set(out["judge_status"]) <= set(JUDGE_STATUSES)

    # constrain_format: the reply is a JSON string; a reply that is not one is read as raw text
    constrained = JudgeConfig(constrain_format=True)
    scripted = [Completion('"<feedback>Good.</feedback><score>4</score>"', "stop"), Completion("<score>2</score>", "stop"),
                Completion('"<feedback>unfinished', "length"), Completion("null", "stop")]
    batch = {column: [None] * 4 for column in INSTANTIATE_COLUMNS}
    batch.update(doc_id=list("abcd"), status=["ok"] * 4, answer=["a"] * 4, instruction=["q"] * 4)
    out = judge_batch(batch, SimpleNamespace(config=constrained, resources={"llm": ScriptedLLM(scripted), "prompt": PROMPT.read_text()}))
    assert out["judge_status"] == ["ok", "ok", "length", "unparseable"] and out["judge_score"][:2] == [4, 2]


# ---------------------------------------------------------------- instantiate then judge through the runner

WIKI = [json.loads(line) for line in (SAMPLES / "documents" / "wikipedia.jsonl").open()]
TEMPLATES = {t["template_id"]: t["template"] for t in map(json.loads, (SAMPLES / "templates" / "handmade.jsonl").open())}
# The documents input: three parquet files; the pairs point into the middle one only (enwiki-12 is its row 0 and
# enwiki-324 its row 1). Row 999 of it does not exist.
DOC_FILES = [WIKI[1:10], [WIKI[0], WIKI[10]] + WIKI[11:19], WIKI[19:29]]
MIDDLE = "data/train-00001-of-00003.parquet"
PAIRS = [  # two pairs of real sample documents and hand-written templates, and one pointing past the file's end
    {"doc_id": "enwiki-324", "template_id": "759ebf9ace15845d", "doc_row": 1, "chunk_index": 0, "score": 0.45},
    {"doc_id": "enwiki-12", "template_id": "7f51cd3ca487e13a", "doc_row": 0, "chunk_index": 0, "score": 0.45},
    {"doc_id": "enwiki-missing", "template_id": "7f51cd3ca487e13a", "doc_row": 999, "chunk_index": 0, "score": 0.40},
]
PAIRS = [{**p, "template": TEMPLATES[p["template_id"]], "doc_file": MIDDLE} for p in PAIRS]


def publish_documents(repo: str, files: list[list[dict]], tag: str, folder: Path) -> str:
    """Documents as len(files) parquet files data/train-0000i-of-0000n.parquet (row groups of 4 rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hf_pipeline.io.hub import publish

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, rows in enumerate(files):
        paths.append(folder / f"train-{i:05d}-of-{len(files):05d}.parquet")
        table = pa.table({"doc_id": [r["doc_id"] for r in rows], "text": [r["text"] for r in rows]})
        pq.write_table(table, paths[-1], row_group_size=4)
    publish(repo, paths, "---\n---\nSample documents.\n", tag, f"documents {tag}")
    return f"{repo}@{tag}"


@pytest.fixture(scope="module")
def pair_inputs(local_hub, tmp_path_factory) -> dict[str, str]:
    """The sample documents (three files) and the pairs pointing into them, published to the local Hub."""
    from hf_pipeline.io.hub import push_local_dataset

    folder = tmp_path_factory.mktemp("pairs")
    refs = {"documents": publish_documents("local/ij-documents", DOC_FILES, "v1", folder / "documents")}
    path = folder / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    push_local_dataset(str(path), "local/ij-pairs", tag="v1")
    refs["pairs"] = "local/ij-pairs@v1"
    return refs


class NullLLM:
    """Answers every pair with JSON null (the template does not fit): instantiate without a model."""

    def generate(self, messages, sampling, json_schema=None):
        from hf_pipeline.llm.base import Completion

        self.prompts = getattr(self, "prompts", []) + [m[-1]["content"] for m in messages]
        return [Completion("null", "stop") for _ in messages]


@pytest.fixture()
def null_llm(monkeypatch):
    from hf_pipeline.stages import instantiate

    llm = NullLLM()
    monkeypatch.setattr(instantiate, "load_backend", lambda config: llm)
    return llm


def test_instantiate_then_judge_publish_versioned_rows_with_statuses(pair_inputs):
    """The real SmolLM2 on the transformers backend, as the quickstart runs it: every row keeps a documented
    status, ok answers are exact document spans, and each card names the revision it read."""
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card, resolve_dataset
    from hf_pipeline.llm.config import LLMConfig
    from hf_pipeline.methods.pairs import INSTANTIATE_COLUMNS
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages import instantiate, judge

    smollm2 = dict(model="packaged:smollm2", backend="transformers")
    inst_config = instantiate.InstantiateConfig(
        documents=pair_inputs["documents"], mode="teacher",
        max_document_chars=600, constrain_format=True, max_variable_words=4, llm=LLMConfig(**smollm2, max_tokens=120),
    )
    inst = run_stage(instantiate.STAGE, RunOptions(input=pair_inputs["pairs"], output="local/ij-instantiated"), inst_config)
    rows = load_dataset(inst.repo_id, revision=inst.tag, split="train")
    assert rows.column_names == list(INSTANTIATE_COLUMNS)
    assert rows["doc_id"] == [p["doc_id"] for p in PAIRS]
    for column in ("template", "doc_file", "doc_row"):  # the pairs' columns are kept
        assert rows[column] == [p[column] for p in PAIRS]
    assert set(rows["status"]) <= set(instantiate.STATUSES) and rows["status"][2] == "unknown_document"
    assert "has 10 rows; row 999 does not exist" in rows["status_detail"][2]
    documents = {d["doc_id"]: d for d in WIKI}
    for row in rows:
        if row["status"] == "ok":
            text = documents[row["doc_id"]]["text"]
            assert row["answer"] == "".join(text[start:end] for start, end in row["excerpt_spans"])
            assert row["excerpt_ratio"] >= 0.8 and "<fi>" not in row["instruction"]
    card = load_card(inst.repo_id, inst.tag).data.hf_pipeline
    pairs_sha = resolve_dataset(pair_inputs["pairs"]).sha
    assert card["inputs"][0]["ref"] == pair_inputs["pairs"] and card["inputs"][0]["sha"] == pairs_sha
    # what the run spent is in the card: the engine's tokens (as many generated as the rows say) and its settings
    usage = card["usage"]
    assert usage["generated_tokens"] == sum(rows["generated_tokens"]) > 0 and usage["prompt_tokens"] > 0
    assert usage["seconds"] > 0 and usage["device_seconds_per_1k_rows"] > 0
    assert usage["engines"]["llm"]["backend"] == "transformers"
    assert "What the run spent" in load_card(inst.repo_id, inst.tag).content

    judge_config = judge.JudgeConfig(constrain_format=True, max_feedback_words=20, llm=LLMConfig(**smollm2, max_tokens=60))
    judged_input = f"{inst.repo_id}@{inst.tag}"
    judged = run_stage(judge.STAGE, RunOptions(input=judged_input, output="local/ij-judged"), judge_config)
    rows = load_dataset(judged.repo_id, revision=judged.tag, split="train")
    assert set(rows["judge_status"]) <= set(judge.JUDGE_STATUSES)
    assert rows["doc_file"] == [MIDDLE] * 3 and rows["template"] == [p["template"] for p in PAIRS]  # passed through
    for row in rows:
        if row["status"] != "ok":
            assert row["judge_status"] == "skipped" and row["judge_score"] is None
        elif row["judge_status"] == "ok":
            assert 1 <= row["judge_score"] <= 5 and row["judge_feedback"]
    card = load_card(judged.repo_id, judged.tag).data.hf_pipeline
    assert card["inputs"][0]["ref"] == judged_input and card["inputs"][0]["sha"] == inst.commit


def test_instantiate_says_prompt_too_long_for_a_tiny_context(pair_inputs):
    """The real SmolLM2 (transformers) with `llm.max_model_len: 64`: each prompt (instructions, template, document) is
    longer, so every row whose document was read is `prompt_too_long`, with how long against which context; none
    is sent to the model (nothing generated), none is dropped, and the card counts them."""
    from datasets import load_dataset

    from hf_pipeline.llm.config import LLMConfig
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages import instantiate

    config = instantiate.InstantiateConfig(
        documents=pair_inputs["documents"], mode="teacher", max_document_chars=600,
        llm=LLMConfig(model="packaged:smollm2", backend="transformers", max_model_len=64, max_tokens=16),
    )
    result = run_stage(instantiate.STAGE, RunOptions(input=pair_inputs["pairs"], output="local/ij-too-long", tag="t"), config)
    rows = load_dataset(result.repo_id, revision="t", split="train")
    assert rows["status"] == ["prompt_too_long", "prompt_too_long", "unknown_document"]
    assert all("> context of 64 tokens" in d for d in rows["status_detail"][:2])
    assert rows["generated_tokens"] == [0, 0, 0] and rows["instruction"] == [None] * 3
    assert result.counts["status"] == {"prompt_too_long": 2, "unknown_document": 1}


def test_instantiate_reads_only_the_document_files_its_pairs_point_at(pair_inputs, null_llm, monkeypatch):
    """Of the documents' three files, only the one the pairs point at is ever read (every Hub read of a data
    file goes through datafiles.hub_url or, for a whole file, hf_hub_download), besides one file's parquet footer
    read at plan time to check the documents' columns; the prompts hold the documents."""
    import huggingface_hub
    from datasets import load_dataset

    from hf_pipeline.io import datafiles

    from hf_pipeline.methods import documents
    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages import instantiate

    opened, footers = [], []
    hub_url, download, schema_of = datafiles.hub_url, huggingface_hub.hf_hub_download, documents.side_input_schema

    def recording_url(ref, path):
        opened.append((ref.repo_id, path))
        return hub_url(ref, path)

    def recording_schema(pinned, *args):  # the plan-time column check: a footer, told apart from data reads
        before = len(opened)
        schema = schema_of(pinned, *args)
        footers.extend(opened[before:])
        del opened[before:]
        return schema

    def recording_download(repo_id, filename, *args, **kwargs):
        opened.append((repo_id, filename))
        return download(repo_id, filename, *args, **kwargs)

    monkeypatch.setattr(datafiles, "hub_url", recording_url)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", recording_download)
    monkeypatch.setattr(documents, "side_input_schema", recording_schema)
    config = instantiate.InstantiateConfig(documents=pair_inputs["documents"], max_document_chars=50)
    result = run_stage(instantiate.STAGE, RunOptions(input=pair_inputs["pairs"], output="local/ij-null", tag="t"), config)
    monkeypatch.undo()
    assert {path for repo, path in opened if repo == "local/ij-documents"} == {MIDDLE}
    assert len(footers) == 1  # one footer: the documents' schema (their id and text columns), at plan time
    rows = load_dataset(result.repo_id, revision="t", split="train")
    assert rows["status"] == ["null", "null", "unknown_document"]
    by_id = {d["doc_id"]: d["text"] for d in WIKI}
    assert [json.loads(p)["document"] for p in null_llm.prompts] == [by_id[p["doc_id"]][:50] for p in PAIRS[:2]]
    assert [json.loads(p)["instruction_template"] for p in null_llm.prompts] == [p["template"] for p in PAIRS[:2]]


def test_instantiate_says_document_mismatch_when_the_documents_revision_differs(pair_inputs, null_llm, tmp_path):
    """The same documents repo at another revision, whose middle file holds its documents in another order: the
    id at each pair's position is not the pair's doc_id, so nothing is instantiated from the wrong text."""
    from datasets import load_dataset

    from hf_pipeline.run.runner import RunOptions, run_stage
    from hf_pipeline.stages import instantiate

    reordered = [DOC_FILES[0], list(reversed(DOC_FILES[1])), DOC_FILES[2]]
    v2 = publish_documents("local/ij-documents", reordered, "v2", tmp_path / "v2")
    config = instantiate.InstantiateConfig(documents=v2)
    result = run_stage(instantiate.STAGE, RunOptions(input=pair_inputs["pairs"], output="local/ij-mismatch", tag="t"), config)
    rows = load_dataset(result.repo_id, revision="t", split="train")
    assert rows["status"] == ["document_mismatch", "document_mismatch", "unknown_document"]
    assert "row 1 of data/train-00001-of-00003.parquet" in rows["status_detail"][0]
    assert "'enwiki-324'" in rows["status_detail"][0] and not getattr(null_llm, "prompts", [])
    assert result.counts["status"] == {"document_mismatch": 2, "unknown_document": 1}


# ---------------------------------------------------------------- constrain_format grammars

def _grammar_accepts(schema: dict, value) -> bool:
    """Whether xgrammar's grammar for `schema` (as the backends compile it) accepts `value` written as JSON."""
    import xgrammar as xgr

    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo([]))  # no vocabulary needed to match a string
    return xgr.GrammarMatcher(compiler.compile_json_schema(json.dumps(schema))).accept_string(json.dumps(value))


def test_constrained_pair_schema_holds_template_wording_and_sentence_bounded_excerpts():
    """The grammar (xgrammar) and the check (jsonschema) agree on what a constrained reply may be, and every
    excerpt the grammar allows is found in the document by expansion, from a sentence start to a sentence end."""
    from hf_pipeline.llm.base import Completion
    from hf_pipeline.llm.json_output import nullable, parse_json_completion
    from hf_pipeline.methods.text.excerpts import expand_excerpts
    from hf_pipeline.stages.instantiate import pair_schema

    config = InstantiateConfig(documents="d", constrain_format=True, max_variable_words=3,
                               min_fragment_chars=5, max_fragment_chars=20)
    schema = nullable(pair_schema(config, "What does <fi>a condition</fi> cause (if anything)?", DOCUMENT))
    good = {"instruction": "What does diabetes cause (if anything)?", "answer": "<excerpt>This results in<...>loss of teeth.</excerpt>"}
    bad = [
        {"instruction": "What does diabetes lead to?", "answer": good["answer"]},  # template wording changed
        {"instruction": "What does one two three four cause (if anything)?", "answer": good["answer"]},  # 4 words
        {"instruction": "What does [a condition] cause (if anything)?", "answer": good["answer"]},  # a placeholder
        {"instruction": good["instruction"], "answer": "<excerpt>results in<...>loss of teeth.</excerpt>"},  # mid-sentence
        {"instruction": good["instruction"], "answer": "<excerpt>This results in</excerpt>"},  # no end
        {"instruction": good["instruction"], "answer": "Because <excerpt>This results in<...>loss of teeth.</excerpt>"},
        {"instruction": good["instruction"], "answer": "<excerpt>This<...>loss of teeth.</excerpt>"},  # start < 5 chars
    ]
    for value, expected in [(good, True), (None, True)] + [(b, False) for b in bad]:
        _, status, _ = parse_json_completion(Completion(json.dumps(value), "stop"), schema)
        assert _grammar_accepts(schema, value) is expected and (status in ("ok", "null")) is expected, value
    expanded = expand_excerpts(good["answer"], DOCUMENT)
    assert expanded.answer == "This results in increased incidence of caries and loss of teeth." and expanded.excerpt_ratio == 1.0


def test_constrained_judge_reply_is_flow_judge_format():
    from hf_pipeline.stages.judge import reply_schema

    schema = reply_schema(max_feedback_words=5)
    assert _grammar_accepts(schema, "<feedback>Direct and complete.</feedback><score>5</score>")
    assert not _grammar_accepts(schema, "<feedback>Direct and complete.</feedback><score>6</score>")
    assert not _grammar_accepts(schema, "<feedback>one two three four five six</feedback><score>3</score>")
    assert parse_judgment("<feedback>Direct and complete.</feedback><score>5</score>") == (5, "Direct and complete.", "ok")
