"""The pure parts of instantiate and judge: the paper's checks on a parsed pair, and Flow Judge reply parsing."""

from __future__ import annotations

import json

from hf_pipeline.stages.instantiate import InstantiateConfig, check_pair, user_message
from hf_pipeline.stages.judge import parse_judgment

DOCUMENT = (
    "Diabetes is often accompanied by severe periodontal disease and complicated by xerostomia. "
    "This results in increased incidence of caries and loss of teeth. Flossing daily helps."
)
CONFIG = InstantiateConfig(documents="d", templates="t")


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


def test_student_message_is_the_published_contract():
    message = json.loads(user_message("what is <fi>x</fi>?", "doc text", "student"))
    assert message == {"instruction_template": "what is <fi>x</fi>?", "document": "doc text"}
    assert "doc text" in user_message("what is <fi>x</fi>?", "doc text", "teacher")


def test_parse_flow_judge_replies():
    assert parse_judgment("<feedback>Direct and complete.</feedback>\n<score>5</score>") == (5, "Direct and complete.", "ok")
    assert parse_judgment("<feedback>meh</feedback><score> 3 </score>")[0] == 3
    assert parse_judgment("<feedback>no score given</feedback>") == (None, "no score given", "unparseable")
    assert parse_judgment("<score>7</score>")[2] == "unparseable"  # outside the 1-5 rubric
