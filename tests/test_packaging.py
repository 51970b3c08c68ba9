"""A plain `pip install` of the built wheel runs the pipeline: card templates, prompts and configs ship inside the
package and are found through importlib.resources, never through the repository's folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installed_outside_the_repo_publishes_a_stage_with_its_card(local_hub, tmp_path):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("fineinstructions_pipeline-*.whl")

    # a fresh virtual environment outside the repo; the project's dependencies (torch, datasets, ...) come from the
    # test environment's site-packages through a plain path entry (which, unlike the site dir itself, does not
    # process that dir's .pth files, so the editable install of the checkout stays out of sight)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True)

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import hf_pipeline; print(hf_pipeline.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed wheel, not the checkout

    queries = work / "queries.jsonl"
    queries.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["How do tides work?", "how do tides work", "Why is the sky blue?"]))
    source = json.dumps([{"name": "mine", "dataset": str(queries), "column": "text"}])
    out = f"local/wheel-{tmp_path.name[-10:]}"
    run = subprocess.run([str(venv / "bin" / "hf-pipeline"), "collect_queries", "--output", out, "--tag", "w",
                          "--set", f"sources={source}"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert load_dataset(out, revision="w", split="train")["query"] == ["How do tides work?", "Why is the sky blue?"]
    card = load_card(out, "w")
    assert card.data.hf_pipeline["stage"] == "collect_queries"
    assert "## Lineage" in card.content  # the shared lineage section, read from the installed package
