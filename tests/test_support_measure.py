"""support/measure.py: memory accounting, peak memory, the baselines, the one table formatter."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from instructions import make_qlora
from lora import apply_lora, freeze_all_but_lora
from model import GPTConfig, GPTModel
from quantization import quantized_nbytes
from support.measure import (
    CLASSIFIER_COLUMNS,
    INSTRUCTION_COLUMNS,
    PeakMemory,
    compared_rows,
    cuda_activation_bytes,
    format_table,
    majority_row,
    saved_activation_bytes,
    tfidf_row,
    training_memory,
)
from training import TrainConfig, configure_optimizer, lm_loss

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
                                              "50 MB RSS", "3.00 MB"))



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
    assert all(cell in table[3] for cell in ("1.500", "4.5", "1.00 %", "3 s", "9 MB CUDA"))


# ---------------------------------------------------------------------------- memory accounting

TINY = GPTConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32)


def tiny_model(method: str, device: str = "cpu") -> GPTModel:
    """The tiny GPT as each finetuning method trains it: every weight, LoRA, or QLoRA."""
    torch.manual_seed(0)
    with torch.device(device):
        model = GPTModel(TINY)
    if method == "lora":
        apply_lora(model, r=2, alpha=4)  # on the layers make_qlora adapts
        freeze_all_but_lora(model)
    elif method == "qlora":
        make_qlora(model, r=2, alpha=4)
    return model


def batch(device: str = "cpu", rows: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(rows * TINY.context_length, device=device).reshape(rows, -1) % 64
    return ids, ids


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """The bytes of the state tensors an optimizer really created."""
    return sum(t.numel() * t.element_size() for state in optimizer.state.values()
               for t in state.values() if isinstance(t, torch.Tensor))


def one_step(model: GPTModel, optimizer: torch.optim.Optimizer) -> None:
    lm_loss(model, batch()).backward()
    optimizer.step()


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_adamw_accounting_equals_hand_computed_bytes(method):
    model = tiny_model(method)
    optimizer = configure_optimizer(model, TrainConfig(), CPU)
    memory = training_memory(model, optimizer, lm_loss, batch())
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    dense = sum(p.numel() for p in model.parameters())  # fp32; a Linear4bit's codes are buffers
    nf4 = quantized_nbytes(model)
    assert memory.weights == 4 * dense + nf4["nf4_dq"]  # quantization.py's NF4 + DQ bytes
    assert memory.grads == 4 * n_trainable
    assert memory.optimizer == 2 * 4 * n_trainable + 4 * len(trainable)  # + a step counter each
    one_step(model, optimizer)
    assert memory.optimizer == state_bytes(optimizer)  # what AdamW really allocated
    assert memory.total == sum(memory.to_dict()[k] for k in ("weights", "grads", "optimizer",
                                                              "activations"))


def test_muon_keeps_one_momentum_per_matrix_and_two_moments_elsewhere():
    model = tiny_model("full")
    optimizer = configure_optimizer(model, TrainConfig(optimizer="muon"), CPU)
    memory = training_memory(model, optimizer, lm_loss, batch())
    muon = {id(p) for g in optimizer.param_groups if g.get("muon") for p in g["params"]}
    in_muon = sum(p.numel() for p in model.parameters() if id(p) in muon)
    others = sum(p.numel() for p in model.parameters() if id(p) not in muon)
    assert in_muon > 0 and memory.optimizer == 4 * in_muon + 2 * 4 * others
    one_step(model, optimizer)
    assert memory.optimizer == state_bytes(optimizer)


def test_the_methods_order_as_they_teach():
    full, lora, qlora = (training_memory(m, configure_optimizer(m, TrainConfig(), CPU), lm_loss,
                                         batch())
                         for m in map(tiny_model, ("full", "lora", "qlora")))
    assert full.grads + full.optimizer > lora.grads + lora.optimizer
    assert qlora.weights < lora.weights
    assert qlora.activations == lora.activations  # the 4-bit layers keep no dense weight


def test_activations_are_the_saved_tensors_each_block_once():
    # x @ W1 + b1 -> relu -> @ W2 + b2 -> squared sum. Saved for backward: x (for W1's
    # gradient), relu's output (for relu, and for W2's gradient: one block, counted once) and
    # the output (for the square). The weights W1, W2 are weights, not activations.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(5, 8)
    counted = saved_activation_bytes(model, lambda m, b: m(b).pow(2).sum(), x)
    assert counted == 4 * 5 * (8 + 16 + 4)


def test_the_meta_device_counts_what_the_cpu_counts():
    # The meta device runs attention as plain matmuls and softmax (a fused kernel saves
    # less): on the CPU the same kernel is chosen here, to compare like with like.
    for method in ("full", "lora"):
        cpu, meta = tiny_model(method), tiny_model(method, "meta")
        with sdpa_kernel(SDPBackend.MATH):
            counted = [training_memory(m, configure_optimizer(m, TrainConfig(), CPU), lm_loss,
                                       batch(device)).to_dict()
                       for m, device in ((cpu, "cpu"), (meta, "meta"))]
        assert counted[0] == counted[1]
        assert all(p.device.type == "meta" for p in meta.parameters())  # nothing allocated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_measurement_agrees_with_the_count():
    model = tiny_model("full").cuda()
    counted = saved_activation_bytes(model, lm_loss, batch("cuda", rows=64))
    measured = cuda_activation_bytes(model, lm_loss, batch("cuda", rows=64))
    # The measured peak adds the short-lived temporaries and the allocator's 512-byte rounding.
    assert counted <= measured <= 1.5 * counted


GOOD_ROW = {"model": "full finetune", "dev_acc": 0.7, "val_acc": 0.69, "trainable": 9,
            "total": 9, "train_time_s": 3.0, "peak_mem_mb": 11.0,
            "peak_mem_source": "process peak RSS growth", "memory": {"total": 3 * 2**20}}


@pytest.mark.parametrize("edit", [{"peak_mem_source": 5}, {"memory": {"total": "big"}},
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
