"""Files that ship inside the package (prompts, configs, card templates), found with `importlib.resources`, so a
plain `pip install` (a wheel, not a checkout) reads the same files as a checkout does."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def package_file(*parts: str) -> Path:
    """The path of a file shipped in the `hf_pipeline` package, e.g. package_file("prompts", "judge_flow.txt").

    A regular install (a wheel unpacked into site-packages, or an editable checkout) has real files; their path
    is what the stages hash into fingerprints and read."""
    return Path(str(importlib.resources.files("hf_pipeline").joinpath(*parts)))
