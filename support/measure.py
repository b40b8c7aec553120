"""What the finetuning scripts measure and report, beside the training itself.

- ``training_memory``     the exact bytes one training step holds, by kind: weights (as
                          stored, NF4 too), gradients, optimizer state and the activations
                          autograd saves for backward; counted from the tensors, on any device,
                          the meta device included (a 124 M projection allocates nothing).
- ``PeakMemory``          what a block of code measurably needed: ``torch.cuda.max_memory_
                          allocated`` on a GPU, the growth of the process's peak RSS on a CPU
                          (allocator, data and caches included); ``warm_up_optimizer`` keeps a
                          one-time import out of that figure.
- ``majority_row`` / ``tfidf_row`` / ``baseline_rows``   what a constant and a bag of words
                          reach on the same sentences: the floor a classifier must beat.
- ``format_table``        one plain-text table formatter; ``CLASSIFIER_COLUMNS`` and
                          ``INSTRUCTION_COLUMNS`` are the two reports' columns.
- ``write_metrics``       runs/<name>/metrics.json, the file the app reads.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from support.datasets import LabelledText

# ---------------------------------------------------------------------------- memory


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


MEMORY_KINDS = ("weights", "grads", "optimizer", "activations")


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
        state = getattr(p, "quant_state", None)
        if state is not None:
            tensors.append(state.absmax)
            if getattr(state, "nested", False):
                tensors += [state.state2.absmax, state.offset]
    return tensors


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


def training_memory(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable,
                    batch) -> TrainingMemory:
    """The bytes a training step of ``model`` with ``optimizer`` on ``batch`` holds, by kind.

    Counted from the tensors themselves, so it is exact and the same on every machine, and it
    works on the meta device: a model built there allocates nothing and is counted the same.
    """
    return TrainingMemory(weights=weight_bytes(model), grads=gradient_bytes(model),
                          optimizer=optimizer_state_bytes(optimizer),
                          activations=saved_activation_bytes(model, loss_fn, batch))


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
            try:
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages to the OS
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # peak RSS := current RSS
            except (OSError, AttributeError):  # not Linux / not glibc
                pass
            self._start = self._maxrss_mb()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mb = self._maxrss_mb() - self._start


def warm_up_optimizer() -> None:
    """Call before ``PeakMemory`` around training: the first AdamW in a process imports
    torch._dynamo (~90 MB of code and data), and the peak should be the run's tensors, not
    a one-time import."""
    torch.optim.AdamW([nn.Parameter(torch.zeros(1))])


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
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise ImportError("scikit-learn is not installed, and the TF-IDF baseline needs it: "
                          "pip install -r requirements.txt.") from None
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


def _cell(key: str, fmt: Callable[[float], str]) -> Callable[[dict], str]:
    """The row's ``key`` through ``fmt``, or '-' where the row has no such value."""
    return lambda row: "-" if row.get(key) is None else fmt(row[key])


def _share(row: dict) -> str:
    return f"{100 * row['trainable'] / row['total']:.2f} %" if row.get("total") else "-"


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.2f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KB"


def _step_memory(row: dict) -> str:
    """The counted bytes of a training step (``training_memory``), all kinds together."""
    memory = row.get("memory")
    return _size(memory["total"]) if isinstance(memory, dict) and "total" in memory else "-"


def _measured_peak(row: dict) -> str:
    """``PeakMemory``'s figure and what it is: process RSS on a CPU, allocated on a GPU."""
    if row.get("peak_mem_mb") is None:
        return "-"
    kind = "CUDA" if row.get("peak_mem_source", "").startswith("torch.cuda") else "RSS"
    return f"{row['peak_mem_mb']:.0f} MB {kind}"


COST_COLUMNS: list[Column] = [
    ("trainable", _cell("trainable", lambda n: f"{n:,}")),
    ("share", _share),
    ("train time", _cell("train_time_s", lambda s: f"{s:.0f} s")),
    ("step memory", _step_memory),
    ("measured peak", _measured_peak),
]
CLASSIFIER_COLUMNS: list[Column] = [
    ("model", lambda row: row["model"]),
    ("dev acc", _cell("dev_acc", lambda acc: f"{100 * acc:.1f} %")),
    ("val acc", _cell("val_acc", lambda acc: f"{100 * acc:.1f} %")),
    *COST_COLUMNS,
    ("checkpoint", _cell("checkpoint_bytes", _size)),
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
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2, allow_nan=False, default=str) + "\n",
                          encoding="utf-8")
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
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        print(f"note: {path} is not a finetune_classifier.py result; not compared.")
        return []
    if fingerprint != base_fingerprint:
        print(f"note: {path} was trained on a different base model (its base_fingerprint "
              "differs); not compared.")
        return []
    return rows
