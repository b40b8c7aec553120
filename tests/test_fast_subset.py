"""The fast subset, `python -m pytest -q -m "not slow"`: the chapters' tests a reader runs as
executable documentation in under a minute. `slow` marks whole scripts, DDP, signals, the app
and the hostile-file probes; every chapter keeps the tests that prove its idea in the subset.

pytest itself collects the subset here (in this process: the modules are imported already),
so a chapter's tests made slow one by one or all at once by `pytestmark` are both seen.
"""

from pathlib import Path

import pytest
from conftest import ROOT

# The chapters whose idea is a library (the scripts that run them are the slow tests' part).
CHAPTERS = ["tokenizer", "model", "corpus", "data_utils", "training", "checkpoint", "clean_text",
            "generation", "evaluate", "lora", "classifier", "memory", "quantization",
            "instructions", "hf_gpt2"]


class SelectedTests:
    """A pytest plugin that keeps the file name of each test a run selects."""

    def __init__(self) -> None:
        self.file_names: list[str] = []

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.file_names = [item.path.name for item in session.items]


def fast_tests(paths: list[Path]) -> dict[str, int]:
    """How many tests of each file `pytest -m "not slow"` selects, by file name."""
    selected = SelectedTests()
    pytest.main(["--collect-only", "-q", "-m", "not slow", "-p", "no:cacheprovider",
                 "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), *map(str, paths)],
                plugins=[selected])
    counts = dict.fromkeys((path.name for path in paths), 0)
    for name in selected.file_names:
        counts[name] += 1
    return counts


@pytest.fixture(scope="module")
def counts(tmp_path_factory) -> dict[str, int]:
    """The chapters' test files and two planted ones, collected in one run (each run of
    pytest pays for loading its plugins)."""
    planted = tmp_path_factory.mktemp("planted")
    (planted / "test_planted_slow.py").write_text(
        "import pytest\npytestmark = pytest.mark.slow\ndef test_a(): pass\n")
    (planted / "test_planted_mixed.py").write_text(
        "import pytest\n@pytest.mark.slow\ndef test_a(): pass\ndef test_b(): pass\n")
    return fast_tests([*(ROOT / "tests" / f"test_{chapter}.py" for chapter in CHAPTERS),
                       planted / "test_planted_slow.py", planted / "test_planted_mixed.py"])


def test_every_chapter_has_tests_in_the_fast_subset(counts):
    chapters = {f"test_{chapter}.py": counts[f"test_{chapter}.py"] for chapter in CHAPTERS}
    assert [name for name, count in chapters.items() if count == 0] == [], chapters


def test_the_check_sees_a_test_file_made_all_slow(counts):
    assert (counts["test_planted_slow.py"], counts["test_planted_mixed.py"]) == (0, 1)
