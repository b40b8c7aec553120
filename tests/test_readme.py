"""The README's "File structure" tree is true: it names every top-level .py file, every support/
module and every benchmarks/ script, and no file that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
CHECKED = (".", "support", "benchmarks")  # folders whose every .py file the tree must name
FILE_NAME = re.compile(r"(?<![\w/.-])[\w-]+\.(?:py|md)\b")


def tree_lines(readme: str) -> list[str]:
    """The lines of the first code block under "## File structure"."""
    section = readme.split("## File structure")[1]
    return section.split("```")[1].splitlines()


def tree_entries(readme: str) -> list[tuple[str, str, str]]:
    """(path, the folder it is in, its annotation) for each name the tree lists, in order.

    An entry is `├── name [name ...]   annotation` (two spaces or more before the annotation),
    indented four columns per folder level; a name ending in "/" is a folder."""
    folders: list[str] = []
    entries = []
    for line in tree_lines(readme):
        if "── " not in line:
            continue
        depth = line.index("── ") // 4
        names, _, note = line[line.index("── ") + 3:].partition("  ")
        folders = folders[:depth]
        here = "/".join(folders) or "."
        for name in names.split():
            entries.append((f"{here}/{name}".removeprefix("./").rstrip("/"), here, note.strip()))
        if names.strip().endswith("/"):
            folders.append(names.strip().rstrip("/"))
    return entries


def tree_problems(root: Path) -> list[str]:
    """One line per file the tree names that does not exist, and per .py file it leaves out."""
    entries = tree_entries((root / "README.md").read_text(encoding="utf-8"))
    listed = {path for path, _, _ in entries}
    problems = [f"{path} is in the tree but does not exist" for path in sorted(listed)
                if not (root / path).exists()]
    for path, here, note in entries:  # a file an annotation names: in its folder, or at the top
        for name in FILE_NAME.findall(note):
            if not any((root / folder / name).exists() for folder in (path, here, ".")):
                problems.append(f"{name} (beside {path}) does not exist")
    for folder in CHECKED:
        for module in sorted((root / folder).glob("*.py")):
            name = module.relative_to(root).as_posix()
            if name not in listed:
                problems.append(f"{name} is missing from the tree")
    return problems


def test_the_readme_tree_names_every_file_and_only_real_ones():
    assert tree_problems(ROOT) == []


def test_the_tree_lists_the_chapters_in_the_reading_order():
    from tests.test_reading_order import reading_order

    top = [Path(path).stem for path, here, _ in
           tree_entries((ROOT / "README.md").read_text(encoding="utf-8")) if here == "."]
    chapters = reading_order(ROOT)
    assert [name for name in top if name in chapters] == chapters


def test_a_missing_or_invented_file_is_named(tmp_path):
    for folder in CHECKED:
        (tmp_path / folder).mkdir(exist_ok=True)
    for path in ("main.py", "extra.py", "support/files.py", "support/new.py",
                 "benchmarks/bench_x.py", "docs/a.md"):
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text("")
    tree = ("├── main.py gone.py       chapters\n├── support/   support\n"
            "│   └── files.py       atomic saves\n├── benchmarks/\n│   └── bench_x.py   speed\n"
            "└── docs/              a.md, b.md\n")
    readme = f"# x\n\n## File structure\n\n```\n.\n{tree}```\n\n## Next\n"
    (tmp_path / "README.md").write_text(readme)
    assert tree_problems(tmp_path) == [
        "gone.py is in the tree but does not exist", "b.md (beside docs) does not exist",
        "extra.py is missing from the tree", "support/new.py is missing from the tree"]
