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
from pathlib import Path

from hf_pipeline.llm_config import LLMConfig, llm_card_ref, load_llm, sampling
from hf_pipeline.stage import Stage, StageContext
from hf_pipeline.stages.instantiate import INSTANTIATE_COLUMNS

PROMPT = Path(__file__).resolve().parent.parent / "prompts" / "judge_flow.txt"
_SCORE = re.compile(r"<score>\s*([1-5])\s*</score>")
_FEEDBACK = re.compile(r"<feedback>\s*(.*?)\s*</feedback>", re.S)


@dataclass
class JudgeConfig:
    llm: LLMConfig = field(
        default_factory=lambda: LLMConfig(model="flowaicom/Flow-Judge-v0.1", max_tokens=512),
        metadata={"help": "the judge model and how to run it (llm.model, llm.backend, ...)"},
    )


def parse_judgment(text: str) -> tuple[int | None, str | None, str]:
    """(score 1–5, feedback, status) from a Flow Judge reply; the last <score> wins, as the format puts it last."""
    scores = _SCORE.findall(text)
    feedback = _FEEDBACK.search(text)
    if not scores:
        return None, feedback.group(1) if feedback else None, "unparseable"
    return int(scores[-1]), feedback.group(1) if feedback else None, "ok"


def judge_batch(batch: dict[str, list], ctx: StageContext) -> dict[str, list]:
    prompt = ctx.resources["prompt"]
    todo = [i for i, s in enumerate(batch["status"]) if s == "ok"]
    messages = [
        [{"role": "user", "content": prompt.format(instruction=batch["instruction"][i], answer=batch["answer"][i])}]
        for i in todo
    ]
    completions = dict(zip(todo, ctx.resources["llm"].generate(messages, sampling(ctx.config.llm)))) if todo else {}
    scores, feedbacks, statuses = [], [], []
    for i in range(len(batch["status"])):
        completion = completions.get(i)
        if completion is None:
            score, feedback, status = None, None, "skipped"  # the instantiation itself is not ok
        elif completion.finish_reason == "error":
            score, feedback, status = None, completion.error, "error"
        else:
            score, feedback, status = parse_judgment(completion.text)
            if status != "ok" and completion.finish_reason == "length":
                status = "length"
        scores.append(score)
        feedbacks.append(feedback)
        statuses.append(status)
    kept = {k: batch[k] for k in INSTANTIATE_COLUMNS}
    return {**kept, "judge_score": scores, "judge_feedback": feedbacks, "judge_status": statuses}


STAGE = Stage(
    name="judge",
    description="score each instruction-answer pair 1-5 with a Flow Judge rubric (§3.4)",
    config_class=JudgeConfig,
    output_columns={**INSTANTIATE_COLUMNS, "judge_score": "int32", "judge_feedback": "string", "judge_status": "string"},
    input_columns=tuple(INSTANTIATE_COLUMNS),
    map_batch=judge_batch,
    setup=lambda ctx: {"llm": load_llm(ctx.config.llm), "prompt": PROMPT.read_text()},
    models=lambda config: {"judge": llm_card_ref(config.llm)},
)
