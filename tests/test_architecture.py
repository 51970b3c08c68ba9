"""The house's layers, checked: no import cycle (lazy imports included), a small top level, and extending it is
adding files: a toy stage is its module plus its card template, a toy executor is one module."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hf_pipeline"


def imports_of(path: Path, module: str) -> set[str]:
    """The hf_pipeline modules `path` imports, anywhere in it (functions included), except under `if TYPE_CHECKING:`
    (annotations only: never executed). `from pkg import name` imports pkg.name when that is a module."""
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("hf_pipeline")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                base = ".".join(module.split(".")[: -node.level] + ([node.module] if node.module else []))
            if base.startswith("hf_pipeline"):
                found |= {f"{base}.{a.name}" if module_exists(f"{base}.{a.name}") else base for a in node.names}
    return found


def module_exists(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = imports_of(path, name) - {name}
    return graph


def test_no_import_cycles_lazy_imports_included():
    graph = module_graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert len(graph) > 60 and cycles == []  # the walk saw the package, and no cycle in it


# the layers, bottom first: a module imports only from its own layer and those below (the top level's modules,
# `errors`, `stage` (how a stage is declared) and `optional` (extras checked), sit below everything; `cli`, the
# commands, above everything)
LAYERS = [
    ("hf_pipeline", "hf_pipeline.errors", "hf_pipeline.stage", "hf_pipeline.optional"),
    ("hf_pipeline.hub",),  # the local Hub: needs nothing else of the package
    ("hf_pipeline.io",),
    ("hf_pipeline.methods", "hf_pipeline.llm"),
    ("hf_pipeline.run",),
    ("hf_pipeline.stages",),
    ("hf_pipeline.cli",),
]


def layer_of(module: str) -> int:
    matches = [(len(prefix), i) for i, layer in enumerate(LAYERS) for prefix in layer
               if module == prefix or module.startswith(prefix + ".") and prefix != "hf_pipeline"]
    return max(matches)[1]


def test_imports_go_down_the_layers():
    upward = sorted(f"{a} -> {b}" for a, targets in module_graph().items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == []


def test_the_top_level_holds_only_the_entry_points():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert modules == ["__init__.py", "errors.py", "optional.py", "stage.py"], modules


TOY_STAGE = '''
"""A toy stage: the text with a suffix."""

from dataclasses import dataclass, field

from hf_pipeline.stage import Inputs, Map, Stage


@dataclass
class ToyConfig:
    suffix: str = field(default="!", metadata={"help": "what every text gets at its end"})


def add_suffix(batch, ctx):
    return {"text": [t + ctx.config.suffix for t in batch["text"]]}


STAGE = Stage(
    name="toy",
    description="appends a suffix to every text",
    config_class=ToyConfig,
    output_columns={"text": "string"},
    inputs=Inputs(columns=("text",)),
    map=Map(batch=add_suffix),
)
'''

TOY_EXECUTOR = '''
"""A toy executor: the tasks in this process, last first."""

from dataclasses import dataclass, field

from hf_pipeline.run.executors.base import ExecutorOptions
from hf_pipeline.run.worker import Worker


@dataclass
class ToyOptions(ExecutorOptions):
    toy_marker: str = field(default="", metadata={"help": "a file the executor writes the order of its tasks to"})


class ToyExecutor:
    name = "toy"
    Options = ToyOptions

    def __init__(self, options):
        self.options = options

    def run(self, plan, tasks):
        worker = Worker(plan)
        records = {task.name: worker.run(task) for task in reversed(tasks)}
        if self.options.toy_marker:
            open(self.options.toy_marker, "w").write(" ".join(records))
        return [records[task.name] for task in tasks]


EXECUTOR = ToyExecutor
'''


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the repository's package (and its card folders), as a user's checkout would be."""
    root = tmp_path_factory.mktemp("checkout")
    for name in ("hf_pipeline", "dataset_cards", "model_cards"):
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def cli(checkout: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    return subprocess.run([sys.executable, "-m", "hf_pipeline.cli", *args], cwd=checkout, env=env, capture_output=True,
                          text=True)


def card_folder(checkout: Path) -> Path:
    """Where the dataset card templates of this checkout live."""
    code = "from hf_pipeline.io.package_data import package_file; print(package_file('dataset_cards', '_lineage.md').parent)"
    return Path(subprocess.run([sys.executable, "-c", code], cwd=checkout, env={**os.environ, "PYTHONPATH": str(checkout)},
                               capture_output=True, text=True, check=True).stdout.strip())


def test_a_toy_stage_is_its_module_and_its_card_and_a_toy_executor_one_module(local_hub, checkout, tmp_path):
    from datasets import load_dataset

    from hf_pipeline.io.hub import load_card, push_local_dataset

    before = {p.relative_to(checkout) for p in checkout.rglob("*") if p.is_file()}
    (checkout / "hf_pipeline" / "stages" / "toy.py").write_text(TOY_STAGE)
    cards = card_folder(checkout)
    assert cards.is_relative_to(checkout)
    (cards / "toy.md").write_text("# {{ repo_id }}\n\nA toy: every text with a suffix.\n\n{{ lineage_section }}\n")
    (checkout / "hf_pipeline" / "run" / "executors" / "toy.py").write_text(TOY_EXECUTOR)
    added = {p.relative_to(checkout) for p in checkout.rglob("*") if p.is_file()} - before
    assert {p.name for p in added if p.suffix != ".pyc"} == {"toy.py", "toy.md"} and len(added) == 3

    help_text = cli(checkout, "toy", "--help").stdout
    assert "suffix" in help_text and "--toy-marker" in help_text and "toy executor:" in help_text
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(9)))
    push_local_dataset(str(rows), "local/arch-toy-in", tag="v1")
    marker = tmp_path / "order.txt"
    run = cli(checkout, "toy", "--input", "local/arch-toy-in@v1", "--output", "local/arch-toy", "--tag", "t",
              "--set", "suffix=_x", "--num-shards", "3", "--executor", "toy", "--toy-marker", str(marker))
    assert run.returncode == 0, run.stderr[-2000:]
    assert marker.read_text() == "shard-00002-of-00003 shard-00001-of-00003 shard-00000-of-00003"
    assert load_dataset("local/arch-toy", revision="t", split="train")["text"] == [f"row {i}_x" for i in range(9)]
    assert "A toy: every text with a suffix." in load_card("local/arch-toy", "t").content


def test_a_stage_without_its_card_template_fails_before_anything_runs(local_hub, checkout):
    from huggingface_hub import HfApi

    (checkout / "hf_pipeline" / "stages" / "uncarded.py").write_text(TOY_STAGE.replace('name="toy"', 'name="uncarded"'))
    run = cli(checkout, "uncarded", "--input", "local/none@v1", "--output", "local/arch-uncarded")
    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()
    assert line == "error: stage uncarded has no card template: add dataset_cards/uncarded.md (every run publishes a card)."
    assert not HfApi().repo_exists("local/arch-uncarded", repo_type="dataset")
