"""Rewrite the generated blocks of docs/SCALING.md from the cost models the stages declare (`Stage.cost`) and the
figures in hf_pipeline/run/estimate.py: each block lies between `<!-- BEGIN estimate:NAME -->` and
`<!-- END estimate:NAME -->` (a test checks the doc agrees with the code).

    python scripts/update_scaling_doc.py [docs/SCALING.md]
    python scripts/update_scaling_doc.py --print table|details|measured
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hf_pipeline.run.estimate import markdown_table, measured_table, stage_details  # noqa: E402
from hf_pipeline.stages import all_stages  # noqa: E402


def blocks() -> dict[str, str]:
    stages = list(all_stages().values())
    return {"table": markdown_table(stages), "details": f"```\n{stage_details(stages)}\n```", "measured": measured_table()}


def update(path: Path) -> None:
    text = path.read_text()
    for name, block in blocks().items():
        pattern = re.compile(rf"(<!-- BEGIN estimate:{name} -->\n)(?:.*?\n)?(<!-- END estimate:{name} -->)", re.S)
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)
    path.write_text(text)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--print"]:
        print(blocks()[sys.argv[2]])
    else:
        update(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "SCALING.md")
