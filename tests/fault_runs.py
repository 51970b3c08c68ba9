"""Stage runs in a process of their own, for tests whose Hub is a `FaultProxy` (tests/test_faults.py).

`huggingface_hub` and `datasets` read `HF_ENDPOINT` once, on import, so a run against the proxy needs a process whose
environment names the proxy from its start (and Ray actors get the driver's environment):

    python tests/fault_runs.py '{"ray": false, "runs": [{"stage": "match", "input": ..., "output": ..., "config": {...},
                                                        "options": {"num_shards": 4, ...}}, ...]}'

runs each run in order through `runner.run_stage`, printing one line `RESULT {"output", "tag", "commit", "rows_out"}`
per run; the first run that fails ends the process (exit 1, its error on stderr). `"ray": true` starts one local Ray
instance (2 CPUs) that every run with `"executor": "ray"` joins.

Stages: `match` as it is; `instantiate` with `QuotingLLM` in place of its model (`QUOTING_INSTANTIATE`), so a test
needs no LLM and every answer is the text of the document the worker read from the Hub.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from typing import Any

from hf_pipeline.stage import Stage, StageContext


class QuotingLLM:
    """Stands in for instantiate's model: fills each template's variables with their own descriptions and answers with
    one excerpt from the start to the end of the document it was given (what instantiate's checks expand against the
    document), so a wrong or missing document shows in the rows."""

    def generate(self, messages, sampling, json_schema=None):
        from hf_pipeline.llm.base import Completion

        replies = []
        for message in messages:
            pair = json.loads(message[-1]["content"])  # the student contract: {"instruction_template", "document"}
            document = " ".join(pair["document"].split()[:40])
            words = document.split()
            answer = f"<excerpt>{' '.join(words[:4])}<...>{' '.join(words[-4:])}</excerpt>"
            instruction = re.sub(r"<fi>(.*?)</fi>", r"\1", pair["instruction_template"])
            replies.append(Completion(json.dumps({"instruction": instruction, "answer": answer}), "stop", 0, 1))
        return replies


def quoting_setup(ctx: StageContext) -> dict:
    return {"llm": QuotingLLM()}


def _stages() -> dict[str, tuple[Stage, type]]:
    from hf_pipeline.stages import instantiate, match

    quoting = dataclasses.replace(instantiate.STAGE, map=dataclasses.replace(instantiate.STAGE.map, setup=quoting_setup))
    return {"match": (match.STAGE, match.MatchConfig), "instantiate": (quoting, instantiate.InstantiateConfig)}


def quoting_instantiate() -> Stage:
    """instantiate with QuotingLLM for its model (in a test's own process, for the runs without faults)."""
    return _stages()["instantiate"][0]


def run(spec: dict[str, Any]):
    """One run of `spec` (stage, input, output, tag, config, options) through the runner; its RunResult."""
    from hf_pipeline.run.config import build_config
    from hf_pipeline.run.runner import RunOptions, run_stage

    stage, config_class = _stages()[spec["stage"]]
    options = RunOptions(input=spec["input"], output=spec["output"], tag=spec.get("tag"), **(spec.get("options") or {}))
    return run_stage(stage, options, build_config(config_class, spec.get("config") or {}))


def main(argv: list[str]) -> int:
    plan = json.loads(argv[0])
    if plan.get("ray"):
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    for spec in plan["runs"]:
        result = run(spec)
        print("RESULT " + json.dumps({"output": result.repo_id, "tag": result.tag, "commit": result.commit,
                                      "rows_out": result.rows_out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
