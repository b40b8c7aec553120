"""Where and how a training run executes (devices, dtypes, DDP under torchrun), and what it
does around the step (``TrainingRun``: resume, Ctrl-C / SIGTERM, the metrics log, the progress
bar, saves, the summary). ``training.train_model`` is the loop these serve; none of it is its idea.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from tqdm import tqdm

from support.errors import first_line, one_sentence
from support.file_checks import check_optimizer_state
from support.metrics import MetricsLog, Throughput

# ---------------------------------------------------------------------------- devices & dtypes

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The devices a run may use, "auto"'s order first: how to tell one is there, and what is missing.
DEVICES = {"cuda": (torch.cuda.is_available, "no CUDA GPU is available"),
           "mps": (torch.backends.mps.is_available, "MPS is not available"),
           "cpu": (lambda: True, "")}


def pick_device(requested: str = "auto") -> torch.device:
    """cuda > mps > cpu for "auto"; a clear error if a requested device is not there."""
    if requested == "auto":
        return torch.device(next(name for name, (there, _) in DEVICES.items() if there()))
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICES:  # e.g. xpu, meta: untested
        raise ValueError(f"Unknown device '{requested}'; use auto, cpu, cuda or mps.")
    there, missing = DEVICES[device.type]
    if not there():
        raise ValueError(f"Device '{device.type}' was requested but {missing}; use --device cpu.")
    return device


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """The autocast dtype. "auto" picks bf16 on a CUDA GPU that computes it natively and
    float32 everywhere else, CPUs included; bf16 on a CPU stays an explicit choice."""
    if requested != "auto":
        if requested not in DTYPES:
            raise ValueError(f"Unknown dtype '{requested}'; use auto, {', '.join(DTYPES)}.")
        return DTYPES[requested]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    # Not even on an AVX512-BF16 CPU: there bf16 autocast trained main.py slower (0.64 s per
    # step against 0.55 s) and to a worse test loss (1.7143 against 1.6842 nats/char; issue 22).
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32 or device.type == "mps":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------- several processes

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

    torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; GPUs talk over NCCL, CPUs over gloo. Under
    torchrun with ``device="auto"`` each process takes its own GPU (cuda:LOCAL_RANK), or the
    CPU where there is none. Run with plain ``python``, there is one process and no group.
    """
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", 1)) == 1:
        return Launch(0, 1, pick_device(device))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    return Launch(dist.get_rank(), dist.get_world_size(), pick_device(device))


def gradient_sync(model: nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP all-reduces gradients in every backward; inside ``no_sync`` it only accumulates them.

    With gradient accumulation only the last micro-batch of a step needs the all-reduce.
    A model that is not wrapped in DDP has nothing to sync.
    """
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


# ---------------------------------------------------------------------------- stopping & RNG

class StopRequested:
    """Turns SIGINT / SIGTERM into a flag the loop checks, so it can save before exiting.

    ``signal`` holds the number of the signal that asked (None until one does).
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread (Streamlit): no handlers
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.signal = signum

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


# ---------------------------------------------------------------------------- the bookkeeping

@dataclass
class Bookkeeping:
    """What ``train_model``'s bookkeeping needs from its caller, none of it part of the loop.

    ``log_path``: the metrics file (JSON lines; None: none). ``save_fn(state)``: called with
    the full training state every ``checkpoint_interval`` steps, at the end and on Ctrl-C or
    SIGTERM. ``best_fn(state)``: called after each evaluation with a new lowest val loss.
    ``tokens_per_batch`` and ``flops_per_token``: what tokens/s and MFU are counted from.
    ``desc``: the progress bar's label.
    """

    log_path: str | Path | None = None
    save_fn: Callable[[dict], None] | None = None
    best_fn: Callable[[dict], None] | None = None
    tokens_per_batch: int | None = None
    flops_per_token: int | None = None
    desc: str = "train"


class TrainingRun:
    """What ``train_model`` does around its steps (resume, Ctrl-C and SIGTERM inside ``with
    run:``, the log, best-val and interval saves, the stop at a NaN loss, the summary), so that
    its loop shows only the step. Only the main process (``is_main``) logs, shows progress and
    saves."""

    def __init__(self, cfg: Any, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: torch.amp.GradScaler, device: torch.device, dtype: torch.dtype,
                 bookkeeping: Bookkeeping, is_main: bool) -> None:
        self.cfg, self.model, self.optimizer, self.scaler = cfg, model, optimizer, scaler
        self.device, self.dtype, self.is_main, self.book = device, dtype, is_main, bookkeeping
        self.save_fn = bookkeeping.save_fn if is_main else None  # only the main process saves
        self.step, self.elapsed_before, self.best_val, self.best_step = 0, 0.0, math.inf, 0
        self.elapsed, self.train_loss, self.val_loss = 0.0, float("nan"), None
        self.resumed_at, self.loss_sum = 0, None  # the step this run began at; its last loss
        self.stop, self.bar = StopRequested(), None

    def resume(self, state: dict | None) -> int:
        """Load a state saved by a run that stopped; its step is where the loop goes on."""
        if state is not None:
            misfit = {(KeyError, TypeError, ValueError, RuntimeError): lambda e: (
                "The state to resume from (--resume) does not fit this run "
                f"({first_line(e)}); start a run without --resume.")}
            with one_sentence(ValueError, misfit):
                self.model.load_state_dict(state["model"])
                self.optimizer.load_state_dict(state["optimizer"])
                check_optimizer_state(self.optimizer)
                if "scaler" in state:
                    self.scaler.load_state_dict(state["scaler"])
                set_rng_state(state["rng"])
            self.step, self.elapsed_before = state["step"], state.get("elapsed", 0.0)
            self.best_val, self.best_step = state.get("best_val", (math.inf, 0))
        self.elapsed, self.resumed_at = self.elapsed_before, self.step
        return self.step

    def __enter__(self) -> TrainingRun:
        self.stop.__enter__()
        self.log = MetricsLog(self.book.log_path if self.is_main else None)
        self.throughput = Throughput(self.book.tokens_per_batch, self.book.flops_per_token,
                                     self.device, self.dtype)
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
        self.log.close()
        self.stop.__exit__(*exc)

    @property
    def stop_requested(self) -> bool:
        return self.stop.requested

    def state(self) -> dict:
        """Everything an exact resume needs, as ``save_fn`` and ``best_fn`` receive it."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "step": self.step, "rng": rng_state(), "elapsed": self.elapsed,
                 "best_val": (self.best_val, self.best_step),
                 "train_config": self.cfg.to_dict()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def after_step(self, step: int, loss_sum: torch.Tensor, lr: float,
                   val_loss: float | None) -> None:
        """Log, keep the best model, save a checkpoint and move the bar, as each is due."""
        cfg = self.cfg
        self.step, self.elapsed = step, self.elapsed_before + time.perf_counter() - self.started
        self.loss_sum = loss_sum
        self.throughput.count(cfg.grad_accum_steps)
        logging = step % cfg.log_interval == 0 or val_loss is not None or step == cfg.max_steps
        saving = self.save_fn and cfg.checkpoint_interval and step % cfg.checkpoint_interval == 0 \
            and step < cfg.max_steps and not self.stop_requested
        if logging or saving:  # .item() waits for the GPU: only then
            self.check_finite(val_loss)
        if logging:
            record = {"step": step, "train_loss": self.train_loss, "lr": lr,
                      "elapsed": round(self.elapsed, 3), **self.throughput.measure()}
            if val_loss is not None:
                record["val_loss"] = self.val_loss = val_loss
                if val_loss < self.best_val:
                    self.best_val, self.best_step = val_loss, step
                    if self.book.best_fn:
                        self.book.best_fn(self.state())
            self.log.write(record)
        self.show_progress(step, logging)
        if saving:
            self.save_fn(self.state())

    def check_finite(self, val_loss: float | None = None) -> None:
        """Stop with one sentence once the loss is not a number: the weights that gave it are
        not, and no file may receive them (a NaN model otherwise trains on and is saved)."""
        self.train_loss = self.loss_sum.item()
        for kind, loss in (("training", self.train_loss), ("val", val_loss)):
            if loss is not None and not math.isfinite(loss):
                raise ValueError(f"The {kind} loss became {loss:g} at step {self.step}: the "
                                 "weights are no longer numbers, so training stopped without "
                                 "saving them. Lower --lr (or --alpha) and run again.")

    def show_progress(self, step: int, new_losses: bool) -> None:
        if self.bar is None:
            # The bar (and so its clock) starts after the first step: that step carries the
            # one-time costs (allocations, kernel choices, torch.compile), and an estimate
            # extrapolated from it promised hours for a five-minute run.
            self.bar = tqdm(total=self.cfg.max_steps, initial=step, desc=self.book.desc,
                            disable=not self.is_main, dynamic_ncols=True)
        else:
            self.bar.update(1)
        if new_losses:
            self.bar.set_postfix(loss=f"{self.train_loss:.3f}",
                                 **({"val": f"{self.val_loss:.3f}"} if self.val_loss else {}))

    def finish(self) -> dict:
        """Save the last state (also when stopped early) and sum the run up."""
        if self.save_fn:
            if self.step > self.resumed_at:
                self.check_finite()
            self.save_fn(self.state())
        return {"steps": self.step, "train_loss": self.train_loss, "val_loss": self.val_loss,
                "elapsed": self.elapsed, "best_val_loss": self.best_val if self.best_step else None,
                "best_step": self.best_step, "interrupted": self.stop_requested,
                "stop_signal": self.stop.signal, "dtype": str(self.dtype).removeprefix("torch.")}
