"""support/measure.py: peak memory, the baselines, the one table formatter."""

from pathlib import Path

import pytest
import torch

from support.measure import (
    CLASSIFIER_COLUMNS,
    INSTRUCTION_COLUMNS,
    PeakMemory,
    format_table,
    majority_row,
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
         "train_time_s": 12.3, "peak_mem_mb": 50.0, "checkpoint_bytes": 3 * 2**20},
    ], CLASSIFIER_COLUMNS).splitlines()
    assert table[0].split()[:3] == ["model", "dev", "acc"] and set(table[1]) <= {"-", " "}
    assert table[2].split()[-1] == "-" and "50.9 %" in table[2]
    assert all(cell in table[3] for cell in ("81.0 %", "10", "1.00 %", "12 s", "50 MB",
                                              "3.00 MB"))



def test_the_instruction_table_shows_loss_perplexity_and_cost():
    table = format_table([
        {"model": "base, fp32", "loss": 2.0},
        {"model": "QLoRA r=8 (scratch)", "loss": 1.5, "trainable": 5, "total": 500,
         "train_time_s": 3.2, "peak_mem_mb": 9.4},
    ], INSTRUCTION_COLUMNS).splitlines()
    assert table[0].split() == ["model", "held-out", "loss", "perplexity", "trainable", "share",
                                "train", "time", "peak", "mem"]
    assert table[2].split()[-6:] == ["2.000", "7.4", "-", "-", "-", "-"]
    assert all(cell in table[3] for cell in ("1.500", "4.5", "1.00 %", "3 s", "9 MB"))
