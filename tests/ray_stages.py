"""A test stage for the Ray executor: upper-cases text, and on request fails on a row or waits to be killed.

- `fail_on_id`: the batch holding this id raises ValueError (on every attempt) while `fail_flag` names an
  existing file (or always, when `fail_flag` is empty): a shard that fails for good.
- `kill_on_id`: the first worker to reach this id writes its pid to `<marker_dir>/victim.pid` and waits (up to
  `kill_wait_s`) for the test to SIGKILL it; the test creates `<marker_dir>/killed` first, so the retry passes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from hf_pipeline.stage import Card, Inputs, Map, Stage


@dataclass
class UpperConfig:
    seconds_per_batch: float = 0.0
    fail_on_id: int = -1
    fail_flag: str = ""
    kill_on_id: int = -1
    marker_dir: str = ""
    kill_wait_s: float = 60.0


def upper(batch, ctx):
    config: UpperConfig = ctx.config
    if config.seconds_per_batch:
        time.sleep(config.seconds_per_batch)
    ids = batch["id"]
    if config.fail_on_id in ids and (not config.fail_flag or Path(config.fail_flag).exists()):
        raise ValueError(f"bad row {config.fail_on_id}")
    if config.kill_on_id in ids:
        markers = Path(config.marker_dir)
        if not (markers / "killed").exists():
            (markers / "victim.pid.tmp").write_text(str(os.getpid()))
            os.replace(markers / "victim.pid.tmp", markers / "victim.pid")
            deadline = time.time() + config.kill_wait_s
            while time.time() < deadline:  # the test kills this process here
                time.sleep(0.05)
            raise RuntimeError("expected to be killed by the test, but was not")
    return {"id": ids, "loud": [t.upper() for t in batch["text"]]}


RAY_UPPER = Stage(
    name="ray_upper",
    description="upper-cases text; fails or waits to be killed on request (Ray executor tests)",
    config_class=UpperConfig,
    output_columns={"id": "int64", "loud": "string"},
    inputs=Inputs(columns=("id", "text")),
    map=Map(batch=upper),
    card=Card(template=str(Path(__file__).parent / "cards" / "ray_upper.md")),
)
