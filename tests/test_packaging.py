"""A plain `pip install` of the built wheel runs the pipeline, and an editable install of a fresh checkout reads the
same files: card templates (at the repository root, mapped into the package by pyproject.toml), prompts and configs
are found through importlib.resources, never through the current directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from hf_pipeline.io.package_data import ROOT_FOLDERS

ROOT = Path(__file__).resolve().parent.parent


def _root_folder_files() -> list[str]:
    """The files of the card folders at the repository root, e.g. dataset_cards/match.md."""
    return sorted(path.relative_to(ROOT).as_posix() for folder in ROOT_FOLDERS for path in (ROOT / folder).iterdir()
                  if path.is_file())


def _fresh_checkout(where: Path) -> Path:
    """The checkout's files as a fresh clone of it would have them (uncommitted edits included), without build
    outputs, so nothing a build writes lands in the checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is still listed
            (where / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, where / name)
    return where


def _fresh_venv(where: Path) -> tuple[Path, Path]:
    """A virtual environment (its python, its site-packages) without the project; its dependencies (torch, datasets,
    setuptools, ...) come from the test environment's site-packages through a plain path entry, which, unlike the site
    dir itself, does not process that dir's .pth files, so the test environment's editable install stays out of sight."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def _pip_install(python: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                    "--no-build-isolation", "-q", *args], check=True, capture_output=True)


def _env_without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_pyproject_lists_every_package_and_maps_the_root_folders():
    """The packages are listed by hand (the root folders' mapping rules out `packages.find`): a folder of the package
    left out of the list would be left out of the wheel."""
    tomllib = pytest.importorskip("tomllib")
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(path.relative_to(ROOT).parts) for path in [ROOT / "hf_pipeline", *(ROOT / "hf_pipeline").rglob("*")]
               if path.is_dir() and path.name != "__pycache__"}
    mapped = {f"hf_pipeline.{folder}": folder for folder in ROOT_FOLDERS}
    assert setuptools["package-dir"] == mapped
    assert sorted(setuptools["packages"]) == sorted(folders | set(mapped))
    assert all((ROOT / folder).is_dir() and not (ROOT / "hf_pipeline" / folder).exists() for folder in ROOT_FOLDERS)


def test_wheel_installed_outside_the_repo_publishes_a_stage_with_its_card(local_hub, tmp_path):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card

    wheels = tmp_path / "wheels"
    build = _fresh_checkout(tmp_path / "checkout")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(build)],
                   check=True, capture_output=True)
    (wheel,) = wheels.glob("fineinstructions_pipeline-*.whl")
    assert {f"hf_pipeline/{name}" for name in _root_folder_files()} <= set(zipfile.ZipFile(wheel).namelist())

    python, site = _fresh_venv(tmp_path / "venv")
    _pip_install(python, str(wheel))

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = _env_without_pythonpath()
    where = subprocess.run([str(python), "-c", "import hf_pipeline; print(hf_pipeline.__file__)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(site)), where  # the installed wheel, not the checkout

    queries = work / "queries.jsonl"
    queries.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["How do tides work?", "how do tides work", "Why is the sky blue?"]))
    source = json.dumps([{"name": "mine", "dataset": str(queries), "column": "text"}])
    out = f"local/wheel-{tmp_path.name[-10:]}"
    run = subprocess.run([str(python.parent / "hf-pipeline"), "collect_queries", "--output", out, "--tag", "w",
                          "--set", f"sources={source}"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert load_dataset(out, revision="w", split="train")["query"] == ["How do tides work?", "Why is the sky blue?"]
    card = load_card(out, "w")
    assert card.data.hf_pipeline["stage"] == "collect_queries"
    assert "## Lineage" in card.content  # the shared lineage section, read from the installed package


@pytest.mark.parametrize("mode", ["lenient", "strict"])
def test_editable_install_of_a_fresh_checkout_reads_its_root_card_folders(tmp_path, mode):
    """setuptools' editable installs: the default (lenient) one maps the package to the checkout's folder, so the
    cards are found beside it; the strict one links every shipped file into a tree laid out like the wheel."""
    checkout = _fresh_checkout(tmp_path / "checkout")
    python, _ = _fresh_venv(tmp_path / "venv")
    _pip_install(python, "--config-settings", f"editable_mode={mode}", "-e", str(checkout))
    cards = _root_folder_files()
    for card in cards:  # an edit after installing shows (an editable install), and sets the copy apart from ROOT's
        (checkout / card).write_text((checkout / card).read_text() + f"<!-- edited in {checkout} -->\n")

    work = tmp_path / "elsewhere"
    work.mkdir()
    read = ("import hf_pipeline, json; from hf_pipeline.io.package_data import package_file; "
            f"print(json.dumps([hf_pipeline.__file__] + [package_file(*card.split('/')).read_text() for card in {cards!r}]))")
    where, *texts = json.loads(subprocess.run([str(python), "-c", read], cwd=work, env=_env_without_pythonpath(),
                                              check=True, capture_output=True, text=True).stdout)
    assert Path(where).is_relative_to(checkout), where  # the fresh checkout's package, not the test environment's
    assert texts == [(checkout / card).read_text() for card in cards]
