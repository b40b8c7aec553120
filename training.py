"""The training loop shared by pretraining and every finetuning script.

``train_model`` is a plain loop, nanoGPT style: set the learning rate (linear warmup, then
cosine decay), run forward and loss on a batch under autocast (bf16 on a GPU that has it),
backpropagate, clip the gradients' norm, take an optimizer step; every so often, measure the
loss on held-out data. It comes first, after the language-model loss; below it are its parts:
the settings (``TrainConfig``), AdamW with weight decay only on matrices (or ``muon.Muon``, the
next chapter, for the matrices inside the blocks), the schedule and the endless batch stream.

The loss is supplied by the caller (``loss_fn(model, batch) -> scalar``) so the same loop
trains the language model, the sentiment classifier and the instruction model.

Resuming is exact: the learning rate is a pure function of the step, the batch order is a
pure function of (seed, epoch), and the optimizer state and RNG state are saved. A run that
is stopped and resumed therefore follows the same trajectory as one that never stopped.
That bookkeeping (resume, Ctrl-C, the metrics log, the progress bar, saves) and the devices
and processes a run uses (DDP) live in ``support/runtime.py``; tokens/s and MFU in
``support/metrics.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader

from muon import Muon
from support.checks import check_train_config
from support.runtime import (
    Bookkeeping,
    TrainingRun,
    autocast,
    gradient_sync,
    pick_dtype,
)

# ---------------------------------------------------------------------------- the loop

def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy; target -100 marks positions that carry no loss."""
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def train_model(model: nn.Module, train_loader, val_loader: DataLoader | None,
                cfg: TrainConfig, device: torch.device, loss_fn: Callable = lm_loss,
                resume_state: dict | None = None, is_main: bool = True,
                bookkeeping: Bookkeeping | None = None) -> dict:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps and return a summary.

    Each step: set the learning rate from the schedule; for each of ``grad_accum_steps``
    micro-batches run the forward pass and the loss under autocast and backpropagate (the
    gradients add up); clip the gradients' total norm; take the optimizer step. Every
    ``eval_interval`` steps, and at the end, measure the val loss.

    The bookkeeping around the steps is ``support.runtime.TrainingRun``'s; what it needs from
    the caller is one ``Bookkeeping``: where the metrics go, ``save_fn(state)`` to receive the
    full training state (model, optimizer, step, RNG) every ``checkpoint_interval`` steps, at
    the end, and when Ctrl-C or SIGTERM asks the run to stop, ``best_fn(state)`` to receive it
    after each evaluation with a new lowest val loss (small data overfits: val loss turns back
    up), the sizes tokens/s and MFU are counted from, and the progress bar's label.
    ``resume_state`` is such a state, and training continues exactly where it left off.
    ``model`` may be wrapped in DistributedDataParallel; only ``is_main`` logs and saves.
    ``train_loader`` is a DataLoader, or pretraining's ``data_utils.WindowBatches``.
    """
    dtype = pick_dtype(cfg.dtype, device)
    raw_model = getattr(model, "module", model)  # the model inside DistributedDataParallel
    optimizer = configure_optimizer(raw_model, cfg, device)
    # float16 gradients underflow to zero: scale the loss up before backward and the gradients
    # back down before clipping (skipping any step whose gradients overflowed). bf16 has
    # float32's range and needs none of this: disabled, the scaler changes nothing.
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    run = TrainingRun(cfg, raw_model, optimizer, scaler, device, dtype,
                      bookkeeping or Bookkeeping(), is_main)
    step = run.resume(resume_state)
    step_model = torch.compile(model) if cfg.compile else model
    batches = batches_from(train_loader, start_batch=step * cfg.grad_accum_steps)
    model.train()
    with run:  # from here Ctrl-C / SIGTERM only set run.stop_requested: the loop ends and saves
        while step < cfg.max_steps and not run.stop_requested:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss_sum = torch.zeros((), device=device)
            for micro in range(cfg.grad_accum_steps):
                batch = to_device(next(batches), device)
                with gradient_sync(model, micro == cfg.grad_accum_steps - 1):  # DDP: last only
                    with autocast(device, dtype):
                        loss = loss_fn(step_model, batch) / cfg.grad_accum_steps
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            val_loss = None
            if is_main and val_loader is not None and (
                    step % cfg.eval_interval == 0 or step == cfg.max_steps):
                val_loss = evaluate_loss(raw_model, val_loader, loss_fn, device, dtype,
                                         cfg.eval_batches)
            run.after_step(step, loss_sum, lr, val_loss)  # log, keep the best, save, progress
    return run.finish()


# ---------------------------------------------------------------------------- its parts

@dataclass
class TrainConfig:
    """The settings of one training run (a script's flags set them; the values are checked)."""

    max_steps: int = 1000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.99)
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest)
    muon_lr: float = 0.02  # peak learning rate of the Muon matrices; the schedule scales it too
    grad_clip: float = 1.0
    grad_accum_steps: int = 1
    eval_interval: int = 100
    eval_batches: int | None = None  # None: the whole val loader (the presets' val split is small)
    log_interval: int = 10
    checkpoint_interval: int = 0  # 0: only at the end (and on interruption)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    compile: bool = False
    seed: int = 1337

    def __post_init__(self) -> None:
        check_train_config(asdict(self))  # one sentence now, not a ZeroDivisionError mid-run

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- optimizer & lr

def configure_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device
                        ) -> torch.optim.Optimizer:
    """AdamW, decaying only matrices: biases, LayerNorm gains and other vectors keep their scale.

    With ``cfg.optimizer == "muon"`` the matrices of the Linear layers move to Muon groups,
    whose ``lr_scale`` makes the shared schedule peak at ``cfg.muon_lr`` for them.
    """
    to_muon = set()
    if cfg.optimizer == "muon":  # the tied output head is an Embedding's weight: AdamW keeps it
        linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        embedding = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        to_muon = linear - embedding
    params = [p for p in model.parameters() if p.requires_grad]
    muon = [p for p in params if id(p) in to_muon]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in to_muon]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay, "lr_scale": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0}]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=cfg.betas,
                                 fused=device.type == "cuda")
    groups.append({"params": muon, "muon": True, "lr_scale": cfg.muon_lr / cfg.learning_rate})
    return Muon(groups, lr=cfg.learning_rate, betas=cfg.betas)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.learning_rate - cfg.min_lr)


# ---------------------------------------------------------------------------- batches

def batches_from(loader, start_batch: int = 0) -> Iterator:
    """Endless batches from number ``start_batch`` on, the same ones a resumed run gets."""
    if hasattr(loader, "from_batch"):  # data_utils.WindowBatches: batch n depends on n alone
        return loader.from_batch(start_batch)
    return _epochs(loader, start_batch)


def _epochs(loader: DataLoader, start_batch: int) -> Iterator:
    """A DataLoader's batches, epoch after epoch; epoch e is shuffled with seed + e."""
    per_epoch = len(loader)
    if per_epoch == 0:
        raise ValueError("The training data yields no batches; use more data or a smaller batch.")
    epoch, skip = divmod(start_batch, per_epoch)
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        # Starting an epoch draws a seed from the global RNG; keep that draw out of the
        # dropout stream so a resumed run sees exactly the same random numbers.
        with torch.random.fork_rng(devices=[]):
            iterator = iter(loader)
        for i, batch in enumerate(iterator):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return type(batch)(to_device(b, device) for b in batch)


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: DataLoader, loss_fn: Callable, device: torch.device,
                  dtype: torch.dtype = torch.float32, max_batches: int | None = None) -> float:
    """Mean loss per example over the first ``max_batches`` batches of ``loader`` (all if None).

    Each batch's mean is weighted by its number of examples, so a short last batch counts
    exactly as much as the examples it holds.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        rows = len(next(iter(batch.values())) if isinstance(batch, dict) else batch[0])
        with autocast(device, dtype):
            total += loss_fn(model, to_device(batch, device)).item() * rows
        count += rows
    model.train(was_training)
    return total / max(count, 1)
