"""judge — paper §3.4.

"We use the off-the-shelf Flow Judge model, a distilled 3.8B parameter judge model, with a 5-point Likert
scale rubric ranging from 1 (irrelevant or off-topic) to 5 (addresses the query without extraneous, vague, or
repetitive content), and retain instruction-answer pairs that score ≥ 4."

The prompt (prompts/judge_flow.txt) is Flow Judge's own format: inputs, output, criteria and rubric, and a
reply of <feedback>…</feedback><score>N</score>. Only pairs whose instantiation is `ok` are judged; every row
is kept with a `judge_status`, and the ≥ 4 filter happens in assemble, where it is counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from hf_pipeline.io.package_data import package_file
from hf_pipeline.llm import load_backend, sampling
from hf_pipeline.llm.config import LLMConfig, llm_card_ref, llm_field
from hf_pipeline.methods.pairs import INSTANTIATE_COLUMNS
from hf_pipeline.run.estimate import (CHARS_PER_TOKEN, CostModel, JUDGE, PARQUET_TEXT_RATIO, StageEstimate, Workload,
                                      llm_stage_estimate)
from hf_pipeline.stage import Inputs, Map, Stage, StageContext

PROMPT = package_file("prompts", "judge_flow.txt")
_SCORE = re.compile(r"<score>(.*?)</score>", re.S)
_VALID_SCORE = re.compile(r"\s*([1-5])\s*")
_FEEDBACK = re.compile(r"<feedback>\s*(.*?)\s*</feedback>", re.S)


@dataclass
class JudgeConfig:
    llm: LLMConfig = llm_field(role="judge", model="flowaicom/Flow-Judge-v0.1")
    # For small stand-in judges that do not write Flow Judge's reply format from the prompt alone. The model still
    # writes the feedback and picks the score; the grammar only keeps the reply to the format.
    constrain_format: bool = field(
        default=False, metadata={"help": "decode the reply as <feedback>...</feedback><score>1-5</score>"}
    )
    max_feedback_words: int = field(default=60, metadata={"help": "constrain_format: most words of feedback"})


def reply_schema(max_feedback_words: int) -> dict:
    """Flow Judge's reply format as a JSON string: the backends constrain decoding by JSON schema, so the reply is
    written as a JSON string whose text is the Flow Judge reply. The feedback is bounded in words, not characters:
    xgrammar 0.2.8 fails to compile a character repetition much over 100 against a real vocabulary."""
    word = "[^<> ]{1,30}"
    feedback = f"{word}( {word}){{0,{max_feedback_words - 1}}}"
    return {"type": "string", "pattern": f"^<feedback>{feedback}</feedback><score>[1-5]</score>$"}


# every row's `judge_status`; dataset_cards/judge.md says what each means
JUDGE_STATUSES = ("ok", "skipped", "unparseable", "length", "error", "prompt_too_long")


def parse_judgment(text: str | None) -> tuple[int | None, str | None, str]:
    """(score 1–5, feedback, status) from a Flow Judge reply; the last <score> wins, as the format puts it last. A
    reply without a <score>, or whose last <score> is not one of 1–5 ("7", "4.5", "four"), is `unparseable`: an
    earlier in-range score is never taken in its place."""
    text = text or ""
    scores = _SCORE.findall(text)
    feedback = _FEEDBACK.search(text)
    feedback_text = feedback.group(1) if feedback else None
    last = _VALID_SCORE.fullmatch(scores[-1]) if scores else None
    if last is None:
        return None, feedback_text, "unparseable"
    return int(last.group(1)), feedback_text, "ok"


def judge_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    from hf_pipeline.llm.json_output import parse_json_completion

    prompt = ctx.resources["prompt"]
    # one generate call; a document's pairs adjacent (in the order documents first appear), as instantiate sends them
    first_seen: dict = {}
    for i, doc_id in enumerate(batch["doc_id"]):
        first_seen.setdefault(doc_id, i)
    todo = sorted((i for i, s in enumerate(batch["status"]) if s == "ok"), key=lambda i: first_seen[batch["doc_id"][i]])
    messages = [
        [{"role": "user", "content": prompt.format(instruction=batch["instruction"][i], answer=batch["answer"][i])}]
        for i in todo
    ]
    schema = reply_schema(ctx.config.max_feedback_words) if ctx.config.constrain_format else None
    completions = dict(zip(todo, ctx.resources["llm"].generate(messages, sampling(ctx.config.llm), schema))) if todo else {}
    scores, feedbacks, statuses = [], [], []
    for i in range(len(batch["status"])):
        completion = completions.get(i)
        if batch["status"][i] != "ok":
            score, feedback, status = None, None, "skipped"  # the instantiation itself is not ok
        elif completion is None:  # sent, but the engine gave no answer for it
            score, feedback, status = None, "the engine returned no completion for this row", "error"
        elif completion.finish_reason in ("error", "prompt_too_long"):  # prompt_too_long: never sent to the model
            score, feedback, status = None, completion.error, completion.finish_reason
        else:
            text = completion.text
            if schema is not None:
                reply, json_status, _ = parse_json_completion(completion, schema)
                text = reply if json_status == "ok" else text  # else the raw text, which says what went wrong
            score, feedback, status = parse_judgment(text)
            if status != "ok" and completion.finish_reason == "length":
                status = "length"
        scores.append(score)
        feedbacks.append(feedback)
        statuses.append(status)
    kept = {k: batch[k] for k in INSTANTIATE_COLUMNS}
    return {**kept, "judge_score": scores, "judge_feedback": feedbacks, "judge_status": statuses}


def estimate_cost(rows: float, unit: str, w: Workload) -> StageEstimate:
    """The stage's cost for `rows` input rows of the workload `w` (see run/estimate.py)."""
    return llm_stage_estimate(
        "judge", rows, unit, JUDGE, w.judge_prompt_tokens + w.expanded_answer_tokens, w.judge_output_tokens,
        [f"{rows / 1e9:,.1f}B pairs judged (rubric + instruction + expanded answer)"],
        PARQUET_TEXT_RATIO * CHARS_PER_TOKEN * w.judge_output_tokens + 20, rows,
        ["judge prompt/feedback lengths (output counted as score + feedback only)",
         "judging only the pairs the token budget can keep (~3 of 6 per document) would halve this"])


STAGE = Stage(
    name="judge",
    description="score each instruction-answer pair 1-5 with a Flow Judge rubric (§3.4)",
    config_class=JudgeConfig,
    output_columns={**INSTANTIATE_COLUMNS, "judge_score": "int32", "judge_feedback": "string", "judge_status": "string"},
    inputs=Inputs(
        columns=tuple(INSTANTIATE_COLUMNS),
        models=lambda config: {"judge": llm_card_ref(config.llm)},
        prompts=lambda config: [PROMPT],
    ),
    map=Map(
        batch=judge_batch,
        setup=lambda ctx: {"llm": load_backend(ctx.config.llm), "prompt": PROMPT.read_text()},
    ),
    cost=CostModel("instantiated pairs", lambda w: w.pairs * w.instantiate_ok_rate, "documents", estimate_cost, step=6),
)
