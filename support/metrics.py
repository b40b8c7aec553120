"""What a run measures and reports about itself: its metrics log and throughput, peak memory,
the baselines a classifier must beat, the report tables and the metric files the app reads.
(memory.py counts the bytes a training step needs; ``PeakMemory`` measures them.)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from support.checks import is_number
from support.datasets import LabelledText
from support.files import atomic_write
from support.optional_packages import require

# ---------------------------------------------------------------------------- the metrics log

# Dense peak FLOP/s of one H100 SXM, the GPU the "gpu" preset was tuned on.
PEAK_FLOPS = {"half": 989e12, "float32": 67e12}


class MetricsLog:
    """runs/<name>/metrics.jsonl: one JSON record per line, flushed as it happens, so a killed
    run keeps every line it wrote and the app can plot a run still going (no file: ``path``
    None)."""

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


# ---------------------------------------------------------------------------- peak memory


class PeakMemory:
    """How much memory the code inside ``with PeakMemory(device) as mem:`` needed: ``mem.mb``.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak, i.e. the most memory
    that tensors (weights, gradients, optimizer state, activations) held at once.
    CPU: the growth of the process's peak resident set size (``getrusage``'s ru_maxrss) over
    its size at the start: what the block itself added (gradients, optimizer state,
    activations, allocator slack). On Linux, freed heap memory is first handed back to the
    system (glibc ``malloc_trim``) and the peak is reset to the current size
    (``/proc/self/clear_refs``), so an earlier run in the same process does not hide this
    one. Where the peak cannot be reset, a block that stays below an earlier peak shows less
    than it used.
    """

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.mb = 0.0
        self.source = ("torch.cuda.max_memory_allocated" if self.device.type == "cuda"
                       else "process peak RSS growth")  # what ``mb`` is, in the reports

    @staticmethod
    def _maxrss_mb() -> float:
        kb_or_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb_or_bytes / (2**20 if sys.platform == "darwin" else 2**10)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            gc.collect()
            with contextlib.suppress(OSError, AttributeError):  # not Linux / not glibc
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages to the OS
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # peak RSS := current RSS
            self._start = self._maxrss_mb()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = self._maxrss_mb() - self._start


# ---------------------------------------------------------------------------- baselines


def majority_row(train: list[LabelledText], test: list[LabelledText]) -> dict:
    """Always predict the most common training label."""
    majority = Counter(label for _, label in train).most_common(1)[0][0]
    return {"model": "majority class", "dev_acc": sum(y == majority for _, y in test) / len(test),
            "trainable": 0}


def tfidf_row(train: list[LabelledText], test: list[LabelledText]) -> dict:
    """TF-IDF of unigrams + bigrams into logistic regression, on the same training sentences.

    scikit-learn is in requirements.txt, so every user gets this row; it is imported here,
    not at the top, because the import takes a second that only this row needs.
    """
    require("sklearn", "scikit-learn is not installed, and the TF-IDF baseline needs it: "
            "pip install -r requirements.txt.")
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    features = vectorizer.fit_transform([text for text, _ in train])
    classifier = LogisticRegression(C=4.0, max_iter=1000)
    classifier.fit(features, [label for _, label in train])
    elapsed = time.perf_counter() - t0
    predictions = classifier.predict(vectorizer.transform([text for text, _ in test]))
    correct = sum(int(p) == y for p, (_, y) in zip(predictions, test, strict=True))
    return {"model": "TF-IDF 1-2gram + logistic regression", "dev_acc": correct / len(test),
            "trainable": classifier.coef_.size + classifier.intercept_.size,
            "train_time_s": round(elapsed, 1)}


def baseline_rows(splits: dict[str, list[LabelledText]]) -> list[dict]:
    """The majority class and the TF-IDF baseline, trained on "train", scored on "test"."""
    return [majority_row(splits["train"], splits["test"]),
            tfidf_row(splits["train"], splits["test"])]


# ---------------------------------------------------------------------------- tables

Column = tuple[str, Callable[[dict], str]]  # (header, the cell of one row)


BYTE_UNITS = ("B", "KB", "MB", "GB")  # each 1,024 of the one before


def human_bytes(n_bytes: float, unit: str | None = None, decimals: int = 1) -> str:
    """``n_bytes`` with thousands separators, in ``unit`` with ``decimals`` places (a table
    column: one unit for every row, "2,550.05 MB"); without a unit, or where the figure would
    be under a tenth of it, in the largest unit that keeps it at least 1 ("25.0 KB")."""
    if unit is None or n_bytes < 1024 ** BYTE_UNITS.index(unit) / 10:
        power = max((p for p in range(len(BYTE_UNITS)) if n_bytes >= 1024**p), default=0)
        unit, decimals = BYTE_UNITS[power], (1 if power else 0)
    return f"{n_bytes / 1024 ** BYTE_UNITS.index(unit):,.{decimals}f} {unit}"


def measured_peak(row: dict) -> str:
    """``PeakMemory``'s figure and what it measured: "1,186 MB process RSS" (a CPU; older rows
    name no source) or "9 MB CUDA allocated"; '-' where the run has none, or none a report can
    show (NaN, not a number, a source that is not words: a hand-edited metrics.json)."""
    peak, source = row.get("peak_mem_mb"), row.get("peak_mem_source", "")
    if not (is_number(peak) and not math.isnan(peak) and isinstance(source, str)):
        return "-"
    kind = "CUDA allocated" if source.startswith("torch.cuda") else "process RSS"
    return f"{peak:,.0f} MB {kind}"


def _cell(key: str, fmt: Callable[[float], str]) -> Callable[[dict], str]:
    """The row's ``key`` through ``fmt``, or '-' where the row has no such value."""
    return lambda row: "-" if row.get(key) is None else fmt(row[key])


def _share(row: dict) -> str:
    return f"{100 * row['trainable'] / row['total']:.2f} %" if row.get("total") else "-"


def _step_memory(row: dict) -> str:
    """The counted bytes of a training step (``training_memory``), all kinds together."""
    memory = row.get("memory")
    counted = isinstance(memory, dict) and "total" in memory
    return human_bytes(memory["total"], "MB", 2) if counted else "-"


COST_COLUMNS: list[Column] = [
    ("trainable", _cell("trainable", lambda n: f"{n:,}")),
    ("share", _share),
    ("train time", _cell("train_time_s", lambda s: f"{s:.0f} s")),
    ("step memory", _step_memory),
    ("measured peak", measured_peak),
]
CLASSIFIER_COLUMNS: list[Column] = [
    ("model", lambda row: row["model"]),
    ("dev acc", _cell("dev_acc", lambda acc: f"{100 * acc:.1f} %")),
    ("val acc", _cell("val_acc", lambda acc: f"{100 * acc:.1f} %")),
    *COST_COLUMNS,
    ("checkpoint", _cell("checkpoint_bytes", lambda n: human_bytes(n, "MB", 2))),
]
INSTRUCTION_COLUMNS: list[Column] = [
    ("model", lambda row: row["model"]),
    ("held-out loss", _cell("loss", lambda loss: f"{loss:.3f}")),
    ("perplexity", _cell("loss", lambda loss: f"{math.exp(loss):.1f}")),
    *COST_COLUMNS,
]


def format_table(rows: list[dict], columns: Sequence[Column]) -> str:
    """A plain-text table: a header, a rule, one line per row; '-' where a column does not
    apply. The first column is left-aligned, the numbers right-aligned."""
    lines = [tuple(header for header, _ in columns),
             *(tuple(cell(row) for _, cell in columns) for row in rows)]
    widths = [max(len(c) for c in col) for col in zip(*lines, strict=True)]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths, strict=True)))
           for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


# ---------------------------------------------------------------------------- metric files


def checkpoint_row(row: dict, path: str | Path) -> dict:
    """The row with the saved checkpoint's path and size added."""
    return {**row, "checkpoint": str(path), "checkpoint_bytes": os.path.getsize(path)}


def append_record(log_path: str | Path, record: dict) -> None:
    """One more JSON line in a run's metrics.jsonl (after train_model's own records)."""
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _finite_or_null(value, where: str, replaced: list[str]):
    """``value`` with every NaN / inf float replaced by None (noting where in ``replaced``)."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced.append(f"{where} ({value})")
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v, f"{where}.{k}".lstrip("."), replaced)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v, f"{where}[{i}]", replaced) for i, v in enumerate(value)]
    return value


def write_json(path: str | Path, record: dict) -> list[str]:
    """``record`` as valid JSON at ``path``: NaN and inf, which JSON has no words for (Python
    would write the non-standard ``NaN``), become null. Returns where that happened."""
    replaced: list[str] = []
    record = _finite_or_null(record, "", replaced)
    # The app reads these files while runs write them: it sees the old file or the new one.
    atomic_write(path, json.dumps(record, indent=2, allow_nan=False, default=str) + "\n")
    return replaced


def write_metrics(run_dir: str | Path, rows: list[dict], args: argparse.Namespace,
                  **extra) -> Path:
    """runs/<name>/metrics.json: every row, the flags the run used and anything in ``extra``."""
    path = Path(run_dir) / "metrics.json"
    write_json(path, {"rows": rows, "args": vars(args), **extra})
    return path


def write_jsonl(path: str | Path, records: list[dict]) -> Path:
    """One JSON object per line, non-ASCII text kept readable (samples.jsonl)."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


def compared_rows(path: str | Path, base_fingerprint: str) -> list[dict]:
    """The finetuned-model rows of an earlier finetune_classifier.py run on the same base
    model (``base_fingerprint``), if there is one: on another base they compare nothing."""
    path = Path(path)
    if not path.is_file():
        return []
    try:  # a file from elsewhere may hold anything, nested any depth
        result = json.loads(path.read_text(encoding="utf-8"))
        rows = [{**row, "model": f"{row['model']} [{path.parent.name}]"}
                for row in result["rows"] if row.get("total")]
        fingerprint = result.get("base_fingerprint")
        format_table(rows, CLASSIFIER_COLUMNS)  # a hand-edited value would end the run here
        if any(row.get("peak_mem_mb") is not None and measured_peak(row) == "-" for row in rows):
            raise TypeError("a measured peak the table cannot show")
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        print(f"note: {path} is not a finetune_classifier.py result; not compared.")
        return []
    if fingerprint != base_fingerprint:
        print(f"note: {path} was trained on a different base model (its base_fingerprint "
              "differs); not compared.")
        return []
    return rows
