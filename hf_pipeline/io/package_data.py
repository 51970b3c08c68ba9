"""Files that ship inside the package (prompts, configs, card templates), found with `importlib.resources`, so a
plain `pip install` (a wheel, not a checkout) reads the same files as a checkout does.

The card templates live at the repository root (`dataset_cards/`, `model_cards/`), where people who write cards look
for them; pyproject.toml's `[tool.setuptools.package-dir]` maps each into the package, so a wheel holds them as
`hf_pipeline/dataset_cards/...`. A checkout (an editable install, or the source tree on PYTHONPATH) has them beside
the package instead."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

# The folders pyproject.toml maps from the repository root into the package (tests/test_packaging.py checks the two
# agree).
ROOT_FOLDERS = ("dataset_cards", "model_cards")


def package_file(*parts: str) -> Path:
    """The path of a file shipped in the `hf_pipeline` package, e.g. package_file("prompts", "judge_flow.txt").

    A regular install (a wheel unpacked into site-packages, or an editable checkout) has real files; their path
    is what the stages hash into fingerprints and read."""
    package = Path(str(importlib.resources.files("hf_pipeline")))
    if parts and parts[0] in ROOT_FOLDERS and not (package / parts[0]).is_dir():
        # a checkout: the folder beside the package that was imported, so a worktree on PYTHONPATH reads its own
        # cards, not those of whichever checkout the environment's editable install maps `hf_pipeline.*` to
        return package.parent.joinpath(*parts)
    return package.joinpath(*parts)
