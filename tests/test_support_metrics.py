"""support/metrics.py: peak memory, the baselines, the one table formatter and its cells,
the metrics files, and an earlier result compared only when the table can print it."""

import json
import math
from pathlib import Path

import pytest
import torch

from support.metrics import (
    CLASSIFIER_COLUMNS,
    INSTRUCTION_COLUMNS,
    PeakMemory,
    compared_rows,
    format_table,
    human_bytes,
    majority_row,
    measured_peak,
    tfidf_row,
)

CPU = torch.device("cpu")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak reset only")
def test_peak_memory_sees_a_large_allocation():
    with PeakMemory(CPU) as mem:
        block = torch.ones(16 * 2**20)  # 64 MB, written so it is resident
        del block
    assert 48 < mem.mb < 512


def test_baselines():
    train = [("great fun", 1), ("great film", 1), ("dull mess", 0), ("great", 1)] * 5
    test = [("great", 1), ("dull", 0), ("a mess", 0)]
    assert majority_row(train, test)["dev_acc"] == pytest.approx(1 / 3)
    row = tfidf_row(train, test)
    assert row["dev_acc"] == 1.0 and row["trainable"] > 0


def test_table_shows_dashes_for_what_does_not_apply():
    table = format_table([
        {"model": "majority class", "dev_acc": 0.509, "trainable": 0},
        {"model": "full", "dev_acc": 0.8, "val_acc": 0.81, "trainable": 10, "total": 1000,
         "train_time_s": 12.3, "peak_mem_mb": 50.0, "checkpoint_bytes": 3 * 2**20,
         "memory": {"total": 5 * 2**20}, "peak_mem_source": "process peak RSS growth"},
    ], CLASSIFIER_COLUMNS).splitlines()
    assert table[0].split()[:3] == ["model", "dev", "acc"] and set(table[1]) <= {"-", " "}
    assert table[2].split()[-1] == "-" and "50.9 %" in table[2]
    assert all(cell in table[3] for cell in ("81.0 %", "10", "1.00 %", "12 s", "5.00 MB",
                                              "50 MB process RSS", "3.00 MB"))



def test_the_instruction_table_shows_loss_perplexity_and_cost():
    table = format_table([
        {"model": "base, fp32", "loss": 2.0},
        {"model": "QLoRA r=8 (scratch)", "loss": 1.5, "trainable": 5, "total": 500,
         "train_time_s": 3.2, "peak_mem_mb": 9.4,
         "peak_mem_source": "torch.cuda.max_memory_allocated"},
    ], INSTRUCTION_COLUMNS).splitlines()
    assert table[0].split() == ["model", "held-out", "loss", "perplexity", "trainable", "share",
                                "train", "time", "step", "memory", "measured", "peak"]
    assert table[2].split()[-7:] == ["2.000", "7.4", "-", "-", "-", "-", "-"]
    assert all(cell in table[3] for cell in ("1.500", "4.5", "1.00 %", "3 s",
                                              "9 MB CUDA allocated"))


@pytest.mark.parametrize("n_bytes, unit, decimals, shown", [
    (3 * 2**20, "MB", 2, "3.00 MB"), (2550.05 * 2**20, "MB", 2, "2,550.05 MB"),
    (25 * 2**10, "MB", 2, "25.0 KB"),  # under a tenth of a MB: in KB, not 0.02 MB
    (0.1 * 2**20, "MB", 2, "0.10 MB"), (500, "MB", 2, "500 B"),
    (75.1 * 2**10, None, 1, "75.1 KB"), (1.4 * 2**30, None, 1, "1.4 GB"),
    (197 * 2**20, None, 1, "197.0 MB"), (1023, None, 1, "1,023 B"), (0, None, 1, "0 B"),
    (3 * 2**40, None, 1, "3,072.0 GB")])
def test_bytes_are_shown_in_one_unit_or_the_natural_one(n_bytes, unit, decimals, shown):
    assert human_bytes(n_bytes, unit, decimals) == shown


def test_the_measured_peak_says_what_was_measured():
    assert measured_peak({"peak_mem_mb": 1186.0}) == "1,186 MB process RSS"  # older files: RSS
    assert measured_peak({"peak_mem_mb": 9.4, "peak_mem_source":
                          "torch.cuda.max_memory_allocated"}) == "9 MB CUDA allocated"
    assert measured_peak({}) == measured_peak({"peak_mem_mb": math.nan}) == "-"
    for edited in ({"peak_mem_mb": "big"}, {"peak_mem_mb": [3]}, {"peak_mem_mb": True},
                   {"peak_mem_mb": 3.0, "peak_mem_source": 5}):
        assert measured_peak(edited) == "-"  # a report shows '-'; compared_rows leaves it out


GOOD_ROW = {"model": "full finetune", "dev_acc": 0.7, "val_acc": 0.69, "trainable": 9,
            "total": 9, "train_time_s": 3.0, "peak_mem_mb": 11.0,
            "peak_mem_source": "process peak RSS growth", "memory": {"total": 3 * 2**20}}


@pytest.mark.parametrize("edit", [{"peak_mem_source": 5}, {"peak_mem_mb": "big"},
                                  {"memory": {"total": "big"}},
                                  {"dev_acc": "high"}, {"train_time_s": [3]}])
def test_an_earlier_result_on_the_same_base_compares_only_rows_the_table_can_print(
        tmp_path, capsys, edit):
    """A hand-edited metrics.json on the same base (its fingerprint matches) is a note, not a
    traceback at the end of finetune_lora_classifier.py's training; an untouched one (an
    older version's rows have no memory or peak_mem_source) is compared."""
    path = tmp_path / "classifier" / "metrics.json"
    path.parent.mkdir()
    older = {k: v for k, v in GOOD_ROW.items() if k not in ("memory", "peak_mem_source")}
    for row, compared in (({**GOOD_ROW, **edit}, False), (GOOD_ROW, True), (older, True)):
        path.write_text(json.dumps({"rows": [row], "base_fingerprint": "same"}))
        rows = compared_rows(path, "same")
        assert len(rows) == compared
        format_table(rows, CLASSIFIER_COLUMNS)
    assert f"note: {path} is not a finetune_classifier.py result" in capsys.readouterr().out
