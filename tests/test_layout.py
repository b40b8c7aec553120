"""The layout rule a reader relies on: support/ sits below the chapters and imports none."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = {p.stem for p in ROOT.glob("*.py")}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_support_imports_no_chapter():
    offenders = {path.name: sorted(imported_modules(path) & CHAPTERS)
                 for path in (ROOT / "support").glob("*.py")}
    assert {name: chapters for name, chapters in offenders.items() if chapters} == {}


def test_the_check_sees_a_chapter_import(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import torch\nfrom model import GPTModel\nfrom support import cli\n")
    assert imported_modules(planted) & CHAPTERS == {"model"}
