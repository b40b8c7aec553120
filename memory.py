"""What one training step holds in memory: weights as stored, gradients, optimizer state,
saved activations. The lesson behind LoRA and QLoRA.

A training step keeps four kinds of tensors alive at once:

- the **weights**, as they are stored for compute: 4 bytes a parameter in float32, about half
  a byte in NF4 (quantization.py: the packed 4-bit codes plus their double-quantized scales);
- one **gradient** per trainable parameter, the parameter's own size: a frozen weight has none;
- the **optimizer state**: AdamW keeps two moments per trainable parameter (twice the weights
  again), Muon one momentum per matrix;
- the **activations** autograd saves in the forward pass because the backward pass needs them
  (a matmul keeps its input to compute its weight's gradient); they grow with the batch, the
  context and the vocabulary, not with the number of trainable parameters.

Full finetuning pays a gradient and two moments for every weight: four copies of the model.
LoRA (lora.py) freezes the weights, so only its small adapters pay for gradients and moments;
QLoRA (quantization.py) also stores the frozen weights in 4 bits instead of 32. Neither
shrinks the activations much: at a small model's scale they dominate, at GPT-2's the copies
of the weights do (benchmarks/bench_memory.py prints both).

``training_memory`` counts the four kinds exactly, from the tensors themselves: each memory
block once (a tied weight is one block), the activations through
``torch.autograd.graph.saved_tensors_hooks``. Counting needs no memory of its own, so it works
on the meta device: GPT-2 124 M built there is counted without allocating a byte. On a GPU,
``cuda_activation_bytes`` measures the same forward pass instead, as a check on the count.
What a whole process really needed (allocator, data, libraries) is support/metrics.py's
``PeakMemory``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn


@dataclass(frozen=True)
class TrainingMemory:
    """The bytes one training step holds, by kind (``training_memory`` counts them)."""

    weights: int  # every parameter and buffer as stored: fp32, or NF4 codes and scales
    grads: int  # one gradient per trainable parameter
    optimizer: int  # AdamW: two moments (and a step counter); Muon: one momentum
    activations: int  # what autograd keeps from the forward pass for the backward pass

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


# The four kinds, in the order tables and plots show them (showcase.py, run_all.py).
MEMORY_KINDS = tuple(field.name for field in fields(TrainingMemory))


def training_memory(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                    batch) -> TrainingMemory:
    """The bytes a training step of ``model`` with ``optimizer`` on ``batch`` holds, by kind.

    Counted from the tensors themselves, so it is exact and the same on every machine, and it
    works on the meta device: a model built there allocates nothing and is counted the same.
    """
    return TrainingMemory(weights=weight_bytes(model), grads=gradient_bytes(model),
                          optimizer=optimizer_state_bytes(optimizer),
                          activations=saved_activation_bytes(model, loss_fn, batch))


# ---------------------------------------------------------------------------- the four kinds


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's weights as they are stored for compute (NF4: the packed codes and
    their double-quantized scales, which quantization.quantized_nbytes calls "stored")."""
    return _unique_bytes(_stored_tensors(model))


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the gradients backward writes: one per trainable parameter, same dtype."""
    return _unique_bytes(p for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the state ``optimizer`` keeps once it has stepped (it creates it lazily, so
    this counts from the parameter groups and needs no step).

    torch's Adam/AdamW: two moments per parameter (three with amsgrad) and a float32 step
    counter per tensor. muon.Muon: one momentum per matrix in its Muon groups; its other
    groups are AdamW's two moments with a Python step counter.
    """
    torch_adam = isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)
    total = 0
    for group in optimizer.param_groups:
        copies = 1 if group.get("muon") else 2 + bool(group.get("amsgrad"))
        for p in group["params"]:
            if p.requires_grad:
                total += copies * p.numel() * p.element_size() + 4 * torch_adam
    return total


def saved_activation_bytes(model: nn.Module, loss_fn: Callable, batch) -> int:
    """Bytes autograd saves for the backward pass in one forward of ``loss_fn(model, batch)``,
    each memory block once; the weights it saves (a matmul keeps its weight) are counted as
    weights, not here. Runs the forward in training mode (dropout keeps its masks), in the
    weights' own dtype (no autocast), and drops the graph unused."""
    weights = {_storage(t)[0] for t in _stored_tensors(model)}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage(tensor)
        if key not in weights:
            saved[key] = nbytes
        return tensor

    with _counting_pass(model):
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = loss_fn(model, batch)  # noqa: F841 - the graph lives while it is counted
            return sum(saved.values())


# ---------------------------------------------------------------------------- each block once


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    """(identity, bytes) of the memory block behind ``tensor``: views of one block, such as
    a tied weight or a transposed copy, are one block, counted once."""
    storage = tensor.untyped_storage()
    return storage._cdata, storage.nbytes()


def _unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(dict(_storage(t) for t in tensors).values())


def _stored_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer, and the scales a bitsandbytes 4-bit weight keeps beside
    its packed bytes (in its ``quant_state``, where neither list reaches)."""
    tensors = [*model.parameters(), *model.buffers()]
    for p in model.parameters():
        tensors += quant_state_tensors(p)
    return tensors


def quant_state_tensors(weight: torch.Tensor) -> list[torch.Tensor]:
    """The tensors a bitsandbytes 4-bit weight stores beside its packed bytes, in its
    ``quant_state``: the blocks' absmax scales and, with double quantization, the scales of
    those scales and their offset; none for any other tensor."""
    state = getattr(weight, "quant_state", None)
    if state is None:
        return []
    tensors = [state.absmax]
    if getattr(state, "nested", False):
        tensors += [state.state2.absmax, state.offset]
    return tensors


@contextmanager
def _counting_pass(model: nn.Module) -> Iterator[None]:
    """A forward pass that leaves no trace: training mode (dropout keeps its masks), gradients
    on, and the random state as it was before (the run's own draws stay the same)."""
    was_training = model.training
    device = next(model.parameters()).device
    model.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
                torch.enable_grad():
            yield
    finally:
        model.train(was_training)


# ---------------------------------------------------------------------------- measured, recorded


def cuda_activation_bytes(model: nn.Module, loss_fn: Callable, batch) -> int:
    """On a GPU, the same forward measured instead of counted: the most memory allocated
    while it runs, less what was allocated before (the weights): the saved activations plus
    the short-lived temporaries between them."""
    device = next(model.parameters()).device
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with _counting_pass(model):
        loss = loss_fn(model, batch)  # noqa: F841 - the graph lives until measured
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before


def memory_record(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                  batch) -> dict:
    """``training_memory`` as a metrics.json field: the bytes by kind, the batch shape they
    were counted at and, on a GPU, the measured activations beside the counted ones."""
    record = training_memory(model, optimizer, loss_fn, batch).to_dict()
    record["batch"] = list(batch[0].shape)
    record["optimizer_name"] = type(optimizer).__name__
    if next(model.parameters()).device.type == "cuda":
        record["activations_cuda"] = cuda_activation_bytes(model, loss_fn, batch)
    return record
