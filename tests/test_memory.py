"""memory.py: the bytes of a training step, by kind, equal to what is hand-computed and to
what the optimizer really allocates; the same on the meta device; measured on a GPU."""

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from instructions import make_qlora
from lora import apply_lora, freeze_all_but_lora
from memory import (
    MEMORY_KINDS,
    cuda_activation_bytes,
    gradient_bytes,
    memory_record,
    saved_activation_bytes,
    training_memory,
    weight_bytes,
)
from model import GPTConfig, GPTModel
from quantization import quantized_nbytes
from training import TrainConfig, configure_optimizer, lm_loss

CPU = torch.device("cpu")

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


def test_a_block_two_parameters_share_is_counted_once():
    # A tied output layer holding a transposed view of the embedding: two parameters, one
    # block of 10 x 4 float32 numbers.
    embedding, head = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)
    head.weight = nn.Parameter(embedding.weight.t())
    model = nn.Sequential(embedding, head)
    assert len(list(model.parameters())) == 2
    assert weight_bytes(model) == gradient_bytes(model) == 4 * 10 * 4


def test_the_record_is_the_count_with_its_batch_and_optimizer():
    model = tiny_model("lora")
    optimizer = configure_optimizer(model, TrainConfig(), CPU)
    record = memory_record(model, optimizer, lm_loss, batch(rows=2))
    counted = training_memory(model, optimizer, lm_loss, batch(rows=2)).to_dict()
    assert record == {**counted, "batch": [2, 16], "optimizer_name": "AdamW"}  # no GPU: no
    assert all(record[kind] > 0 for kind in MEMORY_KINDS)  # activations_cuda on the CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_measurement_agrees_with_the_count():
    model = tiny_model("full").cuda()
    counted = saved_activation_bytes(model, lm_loss, batch("cuda", rows=64))
    measured = cuda_activation_bytes(model, lm_loss, batch("cuda", rows=64))
    # The measured peak adds the short-lived temporaries and the allocator's 512-byte rounding.
    assert counted <= measured <= 1.5 * counted
