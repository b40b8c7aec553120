"""The README's reading order holds: each chapter imports only chapters listed before it (plus
support/), and no top-level modules import each other in a circle. Imports anywhere in a
module count, a lazy one inside a function too."""

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# The order and the imports issue 23 found false: each must be reported, and the cycle too.
ISSUE_ORDER = ["tokenizer", "model", "data_utils", "training", "main", "generation", "evaluate",
               "checkpoint", "lora", "classifier", "finetune_classifier",
               "finetune_lora_classifier", "quantization", "instructions",
               "finetune_qlora_instructions", "hf_gpt2", "app"]
ISSUE_IMPORTS = {("main", "checkpoint"), ("main", "generation"), ("evaluate", "hf_gpt2"),
                 ("classifier", "hf_gpt2"), ("finetune_classifier", "hf_gpt2"),
                 ("finetune_lora_classifier", "hf_gpt2"), ("instructions", "hf_gpt2"),
                 ("finetune_qlora_instructions", "hf_gpt2"), ("finetune_classifier", "finetuning"),
                 ("finetune_lora_classifier", "finetuning"),
                 ("finetune_qlora_instructions", "finetuning"), ("app", "showcase")}


def reading_order(root: Path) -> list[str]:
    """The modules the README's "Reading order" table lists, top to bottom, left to right."""
    section = (root / "README.md").read_text(encoding="utf-8").split("## Reading order")[1]
    rows = [line for line in section.split("\n## ")[0].splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`(\w+)\.py`", row.split(" | ")[0])]


def top_level_imports(root: Path) -> dict[str, set[str]]:
    """Each top-level module -> the top-level modules it imports, anywhere in its body."""
    modules = {path.stem for path in root.glob("*.py")}
    graph = {}
    for path in root.glob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        graph[path.stem] = names & modules
    return graph


def out_of_order(order: list[str], graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(chapter, module) for each import of a module not listed before the chapter."""
    return {(chapter, name) for i, chapter in enumerate(order)
            for name in graph.get(chapter, ()) if name not in order[:i]}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first walk, each as the path that closes it."""
    found, done = [], set()

    def walk(module: str, path: list[str]) -> None:
        for name in sorted(graph.get(module, ())):
            if name in path:
                found.append(path[path.index(name):] + [name])
            elif name not in done:
                walk(name, path + [name])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            walk(module, [module])
    return found


def test_every_listed_chapter_exists():
    order = reading_order(ROOT)
    assert len(order) == len(set(order)) > 15
    assert [name for name in order if not (ROOT / f"{name}.py").is_file()] == []


def test_each_chapter_imports_only_chapters_listed_before_it():
    assert out_of_order(reading_order(ROOT), top_level_imports(ROOT)) == set()


def test_no_import_cycles():
    assert cycles(top_level_imports(ROOT)) == []


def test_the_check_finds_every_import_and_the_cycle_issue_23_listed(tmp_path):
    table = "\n".join(f"| `{name}.py` | |" for name in ISSUE_ORDER)
    (tmp_path / "README.md").write_text(f"## Reading order\n\n| file | |\n{table}\n\n## Next\n")
    lazy = ("classifier", "hf_gpt2")  # classifier.py's was inside a function
    for name in {*ISSUE_ORDER, "finetuning", "showcase"}:
        body = "".join(f"import {b}\n" for a, b in sorted(ISSUE_IMPORTS - {lazy}) if a == name)
        if name == "hf_gpt2":
            body += "from classifier import GPTClassifier\n"
        if name == "classifier":
            body += "def load():\n    from hf_gpt2 import load_base\n    return load_base\n"
        (tmp_path / f"{name}.py").write_text(body)
    graph = top_level_imports(tmp_path)
    assert out_of_order(reading_order(tmp_path), graph) == ISSUE_IMPORTS
    assert [set(cycle) for cycle in cycles(graph)] == [{"classifier", "hf_gpt2"}]


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "README.md", tmp_path)
    for path in ROOT.glob("*.py"):
        shutil.copy(path, tmp_path)
    return tmp_path


def plant(path: Path, line: str) -> None:
    """Append a lazy import inside a function, the kind a glance at the top misses."""
    path.write_text(path.read_text(encoding="utf-8") + f"\n\ndef _planted():\n    {line}\n")


def test_a_planted_import_of_a_later_chapter_fails(copy):
    plant(copy / "model.py", "from generation import generate_text")
    plant(copy / "evaluate.py", "import export_hf")
    assert out_of_order(reading_order(copy), top_level_imports(copy)) == {
        ("model", "generation"), ("evaluate", "export_hf")}


def test_a_planted_import_of_an_unlisted_module_fails(copy):
    plant(copy / "training.py", "from sample import show")
    assert out_of_order(reading_order(copy), top_level_imports(copy)) == {("training", "sample")}


def test_a_planted_cycle_fails(copy):
    plant(copy / "hf_gpt2.py", "from classifier import GPTClassifier")
    # classifier loads its adapter files through lora, which reads the base through hf_gpt2
    assert [set(cycle) for cycle in cycles(top_level_imports(copy))] == [
        {"classifier", "lora", "hf_gpt2"}]
