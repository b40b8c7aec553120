"""What a training run measures about itself: the JSON-lines metrics log, tokens/s and MFU.

The log is one JSON object per line, appended and flushed as it happens, so a run that is
killed keeps every line it wrote and the Streamlit app can plot a run that is still going.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

# Dense peak FLOP/s of one H100 SXM, the GPU the "gpu" preset was tuned on.
PEAK_FLOPS = {"half": 989e12, "float32": 67e12}


class MetricsLog:
    """Appends one JSON record per line to ``path`` (nothing at all when ``path`` is None)."""

    def __init__(self, path: str | Path | None) -> None:
        self.file = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def forget_steps_after(log_path: Path, step: int) -> None:
    """Drop the records after ``step``: a run resumed from that step is about to redo them."""
    if log_path.exists():
        lines = log_path.read_text().splitlines(keepends=True)
        log_path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))


def mfu(flops_per_token: int, tokens_per_sec: float, dtype: torch.dtype, gpus: int) -> float:
    """Model FLOPs utilisation: the share of the GPUs' peak that the model's FLOPs reach."""
    half = dtype in (torch.bfloat16, torch.float16)
    peak = PEAK_FLOPS["half" if half else "float32"] * gpus
    return round(flops_per_token * tokens_per_sec / peak, 4)


class Throughput:
    """Tokens per second since the last measurement (and MFU on CUDA when FLOPs are known).

    ``tokens_per_batch`` counts every process's tokens, so the figure is the whole run's.
    """

    def __init__(self, tokens_per_batch: int | None, flops_per_token: int | None,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.tokens_per_batch, self.flops_per_token = tokens_per_batch, flops_per_token
        self.device, self.dtype = device, dtype
        self.since, self.tokens = time.perf_counter(), 0

    def count(self, batches: int) -> None:
        self.tokens += (self.tokens_per_batch or 0) * batches

    def measure(self) -> dict:
        """{"tokens_per_sec": ..., "mfu": ...} since the last call (empty without a token count)."""
        now = time.perf_counter()
        figures = {}
        if self.tokens_per_batch:
            figures["tokens_per_sec"] = round(self.tokens / (now - self.since), 1)
            if self.flops_per_token and self.device.type == "cuda":
                dist = torch.distributed
                gpus = dist.get_world_size() if dist.is_initialized() else 1
                figures["mfu"] = mfu(self.flops_per_token, figures["tokens_per_sec"], self.dtype,
                                     gpus)
        self.since, self.tokens = now, 0
        return figures
