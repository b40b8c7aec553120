"""The training loop shared by pretraining and every finetuning script.

``train_model`` is a plain loop, nanoGPT style, with the pieces a modern run needs:
AdamW with weight decay only on matrices (or Muon for the matrices inside the blocks),
linear warmup then cosine decay of the learning rate, gradient accumulation, gradient
clipping, bf16 autocast where the hardware has it, optional ``torch.compile``, periodic
validation, a tqdm bar, and a JSON-lines metrics log that the Streamlit app plots.

The loss is supplied by the caller (``loss_fn(model, batch) -> scalar``) so the same loop
trains the language model, the sentiment classifier and the instruction model.

Resuming is exact: the learning rate is a pure function of the step, the batch order is a
pure function of (seed, epoch), and the optimizer state and RNG state are saved. A run that
is stopped and resumed therefore follows the same trajectory as one that never stopped.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm


@dataclass
class TrainConfig:
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
        # Caught here, a bad value is one sentence; later it would be a ZeroDivisionError
        # mid-run, or a "finished" run that never saw a batch (grad_accum_steps=0).
        for name, low in (("grad_accum_steps", 1), ("eval_interval", 1), ("log_interval", 1),
                          ("max_steps", 1), ("warmup_steps", 0), ("checkpoint_interval", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        for name in ("learning_rate", "muon_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}.")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- devices & dtypes

def pick_device(requested: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; a clear error if a requested device is not there."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # e.g. xpu, meta: untested
        raise ValueError(f"Unknown device '{requested}'; use auto, cpu, cuda or mps.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was requested but no CUDA GPU is available; "
                         "use --device cpu.")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("Device 'mps' was requested but MPS is not available; use --device cpu.")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The autocast dtype. "auto" picks bf16 only where the hardware computes it natively."""
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested != "auto":
        if requested not in names:
            raise ValueError(f"Unknown dtype '{requested}'; use auto, {', '.join(names)}.")
        return names[requested]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16  # AVX512-BF16 / AMX CPUs; elsewhere bf16 is emulated and slower
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32 or device.type == "mps":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------- optimizer & lr

def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of U V^T for g = U S V^T: the same directions, every singular value ~1.

    Five Newton-Schulz iterations of a quintic tuned to push singular values towards 1 fast:
    those that are not tiny end in about [0.7, 1.2], which trains as well as the exact U V^T.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)  # the Frobenius norm bounds every singular value: now all <= 1
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # iterate on the smaller Gram matrix x @ x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Muon for the weight matrices inside the blocks, AdamW for everything else.

    Adam scales every coordinate by its own history; Muon instead takes the momentum of a
    matrix's gradient and orthogonalizes it, so the update moves all of its directions by the
    same amount and rare directions learn as fast as dominant ones (Keller Jordan, 2024).
    Embeddings, the tied output head, biases and LayerNorm gains are not "matrices acting on
    hidden states", so their groups carry ``muon=False`` and get the plain AdamW update.
    (torch.optim.Muon orthogonalizes in bfloat16, which CPUs without bf16 run ~3x slower.)
    """

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float],
                 momentum: float = 0.95, eps: float = 1e-8) -> None:
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps,
                                      weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if wd:  # decoupled weight decay, as in AdamW (Muon and vector groups have none)
                    p.mul_(1 - lr * wd)
                if group["muon"]:
                    buf = state.setdefault("momentum", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    update = p.grad.lerp(buf, group["momentum"])  # Nesterov look-ahead
                    # Entries of RMS 1/sqrt(fan_in) whatever the shape (tall ones would be smaller).
                    scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                    p.add_(orthogonalize(update), alpha=-lr * scale)
                else:
                    if not state:
                        state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                    beta1, beta2 = group["betas"]
                    state["step"] += 1
                    state["m"].lerp_(p.grad, 1 - beta1)
                    state["v"].lerp_(p.grad.square(), 1 - beta2)
                    m_hat = state["m"] / (1 - beta1 ** state["step"])
                    v_hat = state["v"] / (1 - beta2 ** state["step"])
                    p.addcdiv_(m_hat, v_hat.sqrt().add_(group["eps"]), value=-lr)
        return loss


def configure_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device
                        ) -> torch.optim.Optimizer:
    """AdamW, decaying only matrices: biases, LayerNorm gains and other vectors keep their scale.

    With ``cfg.optimizer == "muon"`` the matrices of the Linear layers move to Muon groups,
    whose ``lr_scale`` makes the shared schedule peak at ``cfg.muon_lr`` for them.
    """
    if cfg.optimizer not in ("adamw", "muon"):
        raise ValueError(f"Unknown optimizer '{cfg.optimizer}'; use adamw or muon.")
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


# ---------------------------------------------------------------------------- losses & batches

def lm_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy; target -100 marks positions that carry no loss."""
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)


def batches_from(loader: DataLoader, start_batch: int = 0) -> Iterator:
    """Endless batches; epoch e is shuffled with seed + e, so batch n is the same on resume."""
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


# ---------------------------------------------------------------------------- the loop

class StopRequested:
    """Turns SIGINT / SIGTERM into a flag the loop checks, so it can save before exiting."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside Streamlit): no handlers
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_model(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader | None,
    cfg: TrainConfig,
    device: torch.device,
    loss_fn: Callable = lm_loss,
    log_path: str | Path | None = None,
    save_fn: Callable[[dict], None] | None = None,
    best_fn: Callable[[dict], None] | None = None,
    resume_state: dict | None = None,
    tokens_per_batch: int | None = None,
    flops_per_token: int | None = None,
    is_main: bool = True,
    desc: str = "train",
) -> dict:
    """Train ``model`` for ``cfg.max_steps`` optimizer steps and return a summary.

    ``save_fn(state)`` receives the full training state (model, optimizer, step, RNG) at each
    checkpoint interval, at the end, and when SIGINT/SIGTERM asks the run to stop.
    ``best_fn(state)`` receives it after each evaluation that sets a new lowest val loss, so
    the caller can keep the best model: small data overfits, and val loss turns back up.
    ``resume_state`` is such a state: training continues exactly where it left off.
    ``model`` may be wrapped in DistributedDataParallel; only ``is_main`` logs and saves.
    """
    dtype = pick_dtype(cfg.dtype, device)
    raw_model = getattr(model, "module", model)
    optimizer = configure_optimizer(raw_model, cfg, device)
    step, elapsed_before, best_val, best_step = 0, 0.0, math.inf, 0
    if resume_state is not None:
        raw_model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        step, elapsed_before = resume_state["step"], resume_state.get("elapsed", 0.0)
        best_val, best_step = resume_state.get("best_val", (math.inf, 0))
        set_rng_state(resume_state["rng"])
    step_model = torch.compile(model) if cfg.compile else model
    is_ddp = hasattr(model, "no_sync")

    def state() -> dict:
        return {"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "rng": rng_state(), "elapsed": elapsed,
                "best_val": (best_val, best_step), "train_config": cfg.to_dict()}

    log_file = None
    if log_path is not None and is_main:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed below

    def log(record: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    batches = batches_from(train_loader, start_batch=step * cfg.grad_accum_steps)
    model.train()
    t0, last_t, tokens_since = time.perf_counter(), time.perf_counter(), 0
    elapsed, train_loss, val_loss, interrupted = elapsed_before, float("nan"), None, False
    bar = tqdm(total=cfg.max_steps, initial=step, desc=desc, disable=not is_main,
               dynamic_ncols=True)
    try:
        with StopRequested() as stop:
            while step < cfg.max_steps:
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                loss_sum = torch.zeros((), device=device)
                for micro in range(cfg.grad_accum_steps):
                    batch = to_device(next(batches), device)
                    last_micro = micro == cfg.grad_accum_steps - 1
                    # DDP: all-reduce the gradients once per optimizer step, not per micro-batch.
                    sync = contextlib.nullcontext() if last_micro or not is_ddp else model.no_sync()
                    with sync:
                        with autocast(device, dtype):
                            loss = loss_fn(step_model, batch) / cfg.grad_accum_steps
                        loss.backward()
                    loss_sum += loss.detach()
                    tokens_since += tokens_per_batch or 0
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                elapsed = elapsed_before + time.perf_counter() - t0

                at_eval = is_main and val_loader is not None and (
                    step % cfg.eval_interval == 0 or step == cfg.max_steps)
                if step % cfg.log_interval == 0 or at_eval or step == cfg.max_steps:
                    train_loss = loss_sum.item()
                    now = time.perf_counter()
                    record = {"step": step, "train_loss": train_loss, "lr": lr,
                              "elapsed": round(elapsed, 3)}
                    if tokens_per_batch:
                        record["tokens_per_sec"] = round(tokens_since / (now - last_t), 1)
                        if flops_per_token and device.type == "cuda":
                            # H100 SXM dense peak per GPU; tokens_per_batch counts every rank's
                            dist = torch.distributed
                            gpus = dist.get_world_size() if dist.is_initialized() else 1
                            half = dtype in (torch.bfloat16, torch.float16)
                            peak = (989e12 if half else 67e12) * gpus
                            record["mfu"] = round(flops_per_token * record["tokens_per_sec"]
                                                  / peak, 4)
                    last_t, tokens_since = now, 0
                    if at_eval:
                        val_loss = evaluate_loss(raw_model, val_loader, loss_fn, device, dtype,
                                                 cfg.eval_batches)
                        record["val_loss"] = val_loss
                        if val_loss < best_val:
                            best_val, best_step = val_loss, step
                            if best_fn:
                                best_fn(state())
                    log(record)
                    bar.set_postfix(loss=f"{train_loss:.3f}",
                                    **({"val": f"{val_loss:.3f}"} if val_loss else {}))
                if stop.requested:
                    interrupted = True
                    break
                if save_fn and is_main and cfg.checkpoint_interval and \
                        step % cfg.checkpoint_interval == 0 and step < cfg.max_steps:
                    save_fn(state())
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
    if save_fn and is_main:
        save_fn(state())
    return {"steps": step, "train_loss": train_loss, "val_loss": val_loss, "elapsed": elapsed,
            "best_val_loss": best_val if best_step else None, "best_step": best_step,
            "interrupted": interrupted, "dtype": str(dtype).removeprefix("torch.")}


# ---------------------------------------------------------------------------- several processes

def setup_distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank); starts a process group when launched by torchrun.

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK. GPUs talk over NCCL, CPUs over gloo.
    Run with plain ``python`` and this is a no-op returning (0, 1, 0).
    """
    import os

    import torch.distributed as dist

    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), local_rank


def cleanup_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Launch:
    """This process's place in the run: rank ``rank`` of ``world_size``, on ``device``."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) logs, evaluates and saves."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` when there are several processes."""
        if self.world_size == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)


def launch(device: str = "auto") -> Launch:
    """Start (under torchrun) or skip (plain python) the process group; pick the device.

    Under torchrun with ``device="auto"`` each process takes its own GPU (cuda:LOCAL_RANK),
    or the CPU where there is none.
    """
    rank, world_size, local_rank = setup_distributed()
    if world_size > 1 and device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return Launch(rank, world_size, pick_device(device))
