"""A deliberately slow identity-like stage, run in a subprocess by the runner tests so they can SIGKILL it mid-map
(or mid-run, between shards). It exercises the runner's checkpointing and resume, not any stage logic.

    python tests/slow_stage.py INPUT OUTPUT WORK_DIR [NUM_SHARDS]
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hf_pipeline.run.runner import RunOptions, run_stage
from hf_pipeline.stage import Card, Inputs, Map, Stage


@dataclass
class SlowConfig:
    seconds_per_batch: float = 0.2


def shout(batch, ctx):
    time.sleep(ctx.config.seconds_per_batch)
    return {"id": batch["id"], "loud": [t.upper() for t in batch["text"]]}


SLOW = Stage(
    name="slow_upper",
    description="upper-cases text, slowly",
    config_class=SlowConfig,
    output_columns={"id": "int64", "loud": "string"},
    inputs=Inputs(columns=("id", "text")),
    map=Map(batch=shout),
    card=Card(template=str(Path(__file__).parent / "cards" / "slow_upper.md")),
)

if __name__ == "__main__":
    input_path, output, work_dir = sys.argv[1:4]
    num_shards = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    options = RunOptions(input=input_path, output=output, work_dir=work_dir, chunk_rows=10, batch_size=5, keep_work_dir=True,
                         num_shards=num_shards)
    run_stage(SLOW, options, SlowConfig(), argv=sys.argv)
