"""What the Streamlit showcase (app.py) computes, kept apart from how the page is laid out.

The app is a window onto the other modules. It loads checkpoints with the loaders the scripts
use (``checkpoint.load_checkpoint``, ``classifier.load_classifier``,
``instructions.load_instruction_model``) and asks the models what the scripts ask them
(``generation.stream_text``, ``classifier.predict``, ``instructions.stream_answer``,
``GPTModel.attention_maps``). This file is the thin glue in between, without Streamlit:

- ``MODELS``           the four checkpoints: where each lives and which command creates it;
                       ``checkpoint_choices`` the files the sidebar offers for each.
- ``load_model``       one loader for any of them; ``model_facts`` is what the overview shows.
- ``stream_to``        the app's streaming loop: the text so far, redrawn at most 20 times a
                       second, and the number of tokens generated.
- ``token_pieces``     the tokenizer view; ``tokens_html`` colours the pieces.
- ``attention_grid``   one layer and head of attention as a long table for a heatmap.
- ``read_runs``        every ``runs/*/metrics.jsonl`` and ``metrics.json``; the ``*_frame``
                       functions turn them into chart-ready tables.
- ``memory_frame`` / ``projected_memory``   what a training step holds by kind (weights,
                       gradients, optimizer state, activations): the runs' exact counts, and
                       the same for GPT-2 124 M, counted on the meta device; ``memory_notes``
                       says what they teach, and where the totals do not show it.
- the chart functions  Altair specifications for those tables, titled in words.

Where things are: checkpoints and ``runs/`` are read from ``$LLM_APP_DIR`` (default: the
folder the app is started in); ``$LLM_APP_BASE``, ``$LLM_APP_CLASSIFIER``, ``$LLM_APP_LORA``
and ``$LLM_APP_QLORA`` override single files, and ``$LLM_APP_DEVICE`` the device (default:
a GPU when there is one, else the CPU). The base model may also be GPT-2 in Hugging Face
format: a folder in the app folder, or the one ``$LLM_APP_BASE`` names.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import shlex
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import altair as alt
import pandas as pd
import torch
import torch.nn as nn

import finetune_lora_classifier
import finetune_qlora_instructions
import training
from classifier import GPTClassifier, classification_loss, load_classifier
from finetuning import full_batch
from hf_gpt2 import load_base
from instructions import load_instruction_model
from lora import (
    DEFAULT_TARGETS,
    apply_lora,
    count_parameters,
    freeze_all_but_lora,
    lora_layers,
    lora_state_dict,
)
from memory import MEMORY_KINDS, training_memory, weight_bytes
from model import GPTConfig, GPTModel
from quantization import is_quantized, quantize_model, quantized_nbytes
from support import runtime
from support.checks import is_number
from support.hub import WEIGHTS
from support.metrics import human_bytes
from tokenizer import BPETokenizer

APP_DIR_ENV = "LLM_APP_DIR"
DEVICE_ENV = "LLM_APP_DEVICE"
MAX_ATTENTION_TOKENS = 40  # a bigger heatmap has cells too small to read


@dataclass(frozen=True)
class ModelSpec:
    key: str
    title: str
    default: str  # file name, relative to the app folder
    env: str  # environment variable that points elsewhere
    script: str  # the script that writes it
    needs_base: bool  # stores adapters only, so loading it reads the base model too


MODELS = (
    ModelSpec("base", "Base language model", "model_weights.pth", "LLM_APP_BASE",
              "main.py", False),
    ModelSpec("classifier", "Sentiment, full finetune", "classifier.pth",
              "LLM_APP_CLASSIFIER", "finetune_classifier.py", False),
    ModelSpec("lora", "Sentiment, LoRA", "lora_classifier.pth", "LLM_APP_LORA",
              "finetune_lora_classifier.py", True),
    ModelSpec("qlora", "Instructions, QLoRA", "qlora_adapters.pth", "LLM_APP_QLORA",
              "finetune_qlora_instructions.py", True),
)
SPECS = {spec.key: spec for spec in MODELS}


# ---------------------------------------------------------------------------- where things are


def app_dir() -> Path:
    return Path(os.environ.get(APP_DIR_ENV) or ".").expanduser().resolve()


def default_path(spec: ModelSpec) -> str:
    return os.environ.get(spec.env) or spec.default


def resolve(path: str, folder: Path) -> Path:
    """``path`` as given if absolute, else inside the app folder."""
    path = Path(path.strip()).expanduser()
    return path if path.is_absolute() else folder / path


MAX_CHOICES = 200  # checkpoints offered per model: a folder full of files stays a short list


def checkpoint_choices(spec: ModelSpec, folder: Path) -> list[str]:
    """The files the sidebar offers for ``spec``: its default (or the file its environment
    variable names), then every ``*.pth`` in the app folder and one level below it (for the
    base model also every Hugging Face GPT-2 folder there: one with a model.safetensors).

    A visitor picks from this list and never types a path, so the page cannot be made to
    read, or say anything about, a file the person who started the app did not put there.
    A symbolic link in the folder is followed, wherever it leads: only that person can make
    one, and linking a Hugging Face folder (or a checkpoint kept elsewhere) in is how they
    offer it; the page never offers the path behind a link, only its name in the folder.
    """
    found = sorted({str(p.relative_to(folder)) for pattern in ("*.pth", "*/*.pth")
                    for p in folder.glob(pattern) if p.is_file()})
    if spec.key == "base":
        found += sorted(str(p.parent.relative_to(folder)) for p in folder.glob(f"*/{WEIGHTS}"))
    first = default_path(spec)
    return [first, *(name for name in found if name != first)][:MAX_CHOICES]


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(modification time, size) of a file, or None if there is none: part of the cache key,
    so a retrained checkpoint is loaded again. A Hugging Face folder's is its weights'."""
    if path.is_dir():
        path = path / WEIGHTS
    try:
        stat = path.stat()
    except (OSError, ValueError):  # ValueError: a NUL character in the path
        return None
    return (stat.st_mtime_ns, stat.st_size) if path.is_file() else None


def create_command(spec: ModelSpec, path: Path, base: Path, folder: Path) -> str:
    """The shell command, run in ``folder``, that writes ``path`` (and the base if needed)."""
    def shown(p: Path) -> str:
        return str(p.relative_to(folder)) if p.is_relative_to(folder) else str(p)

    # Quoted, so that a path with spaces or $ is copied into the shell as one argument.
    base_flag = f" --base {shlex.quote(shown(base))}" if shown(base) != SPECS["base"].default \
        else ""
    out_flag = f" --out {shlex.quote(shown(path))}" if shown(path) != spec.default else ""
    if spec.key == "base":
        return f"python main.py{out_flag}"
    command = f"python {spec.script}{base_flag}{out_flag}"
    if file_stamp(base) is None:  # every finetuning script starts from the base model
        command = f"python main.py{base_flag.replace('--base', '--out')} && {command}"
    return command


# ---------------------------------------------------------------------------- models


def pick_device() -> str:
    """$LLM_APP_DEVICE if set, else a GPU if there is one, else the CPU (ValueError if the
    requested device is not there)."""
    return str(runtime.pick_device(os.environ.get(DEVICE_ENV) or "auto"))


@dataclass
class Slot:
    """One of ``MODELS`` as the app found it: loaded, missing (and how to make it), or broken."""

    spec: ModelSpec
    path: Path
    command: str
    model: nn.Module | None = None
    tokenizer: BPETokenizer | None = None
    meta: dict = field(default_factory=dict)
    facts: dict = field(default_factory=dict)
    error: str | None = None
    dense: nn.Module | None = None  # QLoRA only: the same model in dense layers, to generate

    @property
    def ready(self) -> bool:
        return self.model is not None

    @property
    def generator(self) -> nn.Module | None:
        """The model to generate with: the dense twin if there is one (same tokens, faster)."""
        return self.dense if self.dense is not None else self.model


def load_model(key: str, path: Path, base: Path, device: str
               ) -> tuple[nn.Module, BPETokenizer, dict]:
    """(model, tokenizer, metadata) for one of ``MODELS``, in eval mode on ``device``.

    Raises what the loaders raise: FileNotFoundError (a missing file, with the command that
    makes it), CheckpointError (corrupt, foreign, or adapters for another base model).
    """
    if key == "base":
        return load_base(path, map_location=device)  # ours, or a GPT-2 folder
    if key in ("classifier", "lora"):
        return load_classifier(path, base=base, map_location=device)
    if key == "qlora":
        return load_instruction_model(path, base=base, map_location=device)
    raise ValueError(f"Unknown model '{key}'; expected one of {list(SPECS)}.")


def trained_parameters(model: nn.Module) -> int:
    """Parameters that training changed: every one, or only the LoRA adapters (and the head
    of a classifier). A loaded model's requires_grad flags do not tell, so look at its layers."""
    total = count_parameters(model)[1]
    if not lora_layers(model):
        return total
    head = getattr(model, "head", None)
    return sum(t.numel() for t in lora_state_dict(model).values()) + \
        (sum(p.numel() for p in head.parameters()) if head is not None else 0)


def model_facts(model: nn.Module, tokenizer: BPETokenizer, meta: dict, path: Path) -> dict:
    """The numbers the overview shows for one loaded model."""
    config = model.config
    total = count_parameters(model)[1]
    trained = trained_parameters(model)
    facts = {
        "parameters": total, "trained": trained, "trained_share": trained / total,
        "checkpoint_bytes": path.stat().st_size, "memory_bytes": weight_bytes(model),
        "shape": f"{config.n_layer} layers x {config.n_head} heads x {config.n_embd}, "
                 f"context {config.context_length}, vocab {tokenizer.vocab_size}",
    }
    if any(is_quantized(m) for m in model.modules()):
        facts["quantized"] = quantized_nbytes(model)
    for name in ("step", "steps", "dev_acc", "heldout_loss"):
        if isinstance(meta.get(name), int | float):
            facts[name] = meta[name]
    if isinstance(meta.get("trained_on"), str):  # main.py: what the base model read
        facts["trained_on"] = meta["trained_on"]
    return facts


@contextmanager
def counting_forward_passes(model: nn.Module) -> Iterator[list[int]]:
    """Count the forward passes this thread makes through ``model`` while the block runs.

    Generation runs the model once per new token, so this is the number of tokens sampled
    (<|endoftext|> included when the model chose it). Re-encoding the generated text would
    not be: bytes that are no character decode to U+FFFD, which encodes again as 3 bytes.
    The thread check leaves out another visitor generating with the same cached model.
    """
    count, thread = [0], threading.get_ident()

    def hook(*_) -> None:
        if threading.get_ident() == thread:
            count[0] += 1

    handle = model.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


UPDATE_INTERVAL_S = 0.05  # redraw streamed text at most 20 times a second


def stream_to(pieces: Iterator[str], model: nn.Module, show: Callable[[str], None],
              interval: float = UPDATE_INTERVAL_S) -> tuple[str, int]:
    """Join the generated ``pieces``, showing the text so far at most every ``interval``
    seconds and once at the end (also when generation raises); (text, tokens generated).

    Redrawing the page on every token cost the app about a quarter of its speed: each redraw sends
    the whole text so far to the browser. 20 redraws a second still look like typing.
    """
    text, shown, last = "", "", time.perf_counter()
    try:
        with counting_forward_passes(model) as tokens:  # pieces are not tokens: count passes
            for piece in pieces:
                text += piece
                if time.perf_counter() - last >= interval:
                    show(text)
                    shown, last = text, time.perf_counter()
    finally:
        if text != shown:
            show(text)
    return text, tokens[0]


README = Path(__file__).with_name("README.md")


def readme_section(heading: str) -> str:
    """The body of README.md's ``## <heading>`` section, so the app quotes the README
    instead of keeping a second copy of it ('' if there is no such section)."""
    text = README.read_text(encoding="utf-8") if README.is_file() else ""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    return match.group(1).strip() if match else ""


def human_count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K" if n >= 1e3 else str(n)


# ---------------------------------------------------------------------------- tokens


PALETTE = ("#fde68a", "#bfdbfe", "#bbf7d0", "#fbcfe8", "#ddd6fe", "#fed7aa", "#a5f3fc",
           "#e5e7eb")


PARTIAL_NOTE = (
    "A token holds bytes, not characters: one beyond ASCII takes 2-4 bytes in UTF-8, and a "
    "token can end inside one. Such bytes show as \\xNN (é is \\xc3\\xa9, which may be "
    "split over two tokens); hover for every token's bytes.")
EMPTY_SENTENCE = "Type a sentence to classify: an empty one has nothing to read."
EMPTY_INSTRUCTION = "Type an instruction to answer: an empty one asks nothing."


def token_pieces(tokenizer: BPETokenizer, text: str) -> list[tuple[int, bytes]]:
    """(id, the token's bytes) for every token of ``text``."""
    return [(i, tokenizer.token_bytes(i)) for i in tokenizer.encode(text)]


def holds_part_of_a_character(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def tokens_html(pieces: list[tuple[int, bytes]]) -> str:
    """Each token as a coloured box, its id and bytes on hover; newlines and tabs drawn as ↵
    and →, and bytes that are part of a character as \\xNN (alone they are no character)."""
    boxes = []
    for n, (token_id, raw) in enumerate(pieces):
        text = raw.decode("utf-8", errors="backslashreplace")
        shown = html.escape(text).replace("\t", "→").replace("\n", "↵<br>")
        boxes.append(f'<span title="id {token_id}, bytes {raw.hex(" ")}" '
                     f'style="background:{PALETTE[n % len(PALETTE)]};'
                     f'color:#111;border-radius:3px;padding:1px 0;margin-right:1px;'
                     f'white-space:pre-wrap">{shown}</span>')
    return f'<div style="line-height:2;font-family:monospace">{"".join(boxes)}</div>'


# ---------------------------------------------------------------------------- attention


def attention_grid(model: nn.Module, tokenizer: BPETokenizer, text: str
                   ) -> tuple[list[str], torch.Tensor]:
    """Token labels and the attention weights [n_layer, n_head, T, T] for the first
    ``MAX_ATTENTION_TOKENS`` tokens of ``text`` (an empty text is <|endoftext|>)."""
    ids = tokenizer.encode(text)[: min(MAX_ATTENTION_TOKENS, model.config.context_length)]
    ids = ids or [tokenizer.eot_id]
    device = next(model.parameters()).device
    maps = model.attention_maps(torch.tensor([ids], device=device)).float().cpu()
    # Position numbers keep labels unique: the same token can occur twice.
    labels = [f"{n:>2} {tokenizer.decode([i])!r}"[:24] for n, i in enumerate(ids)]
    return labels, maps


def attention_frame(labels: list[str], maps: torch.Tensor, layer: int, head: int
                    ) -> pd.DataFrame:
    """Long table (query, key, weight) of one head; future positions (weight 0) left out."""
    weights = maps[layer, head]
    return pd.DataFrame([
        {"query": labels[q], "key": labels[k], "weight": float(weights[q, k])}
        for q in range(len(labels)) for k in range(q + 1)
    ])


# ---------------------------------------------------------------------------- metrics


@dataclass
class Runs:
    """Everything under runs/: curves (run -> JSON lines), summaries (run -> metrics.json),
    samples (run -> samples.jsonl records), and files that could not be read."""

    curves: dict[str, list[dict]] = field(default_factory=dict)
    summaries: dict[str, dict] = field(default_factory=dict)
    samples: dict[str, list[dict]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _json_lines(path: Path, problems: list[str]) -> list[dict]:
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # or nested thousands deep
            if line.strip():
                problems.append(f"{path}: line {n} is not JSON (skipped).")
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


PIPELINE = ("pretrain", "evaluate", "classifier", "lora-classifier", "qlora-instruct")


def _pipeline_order(run_dir: Path) -> tuple[int, str]:
    """The scripts' default runs in the order the pipeline makes them, then the rest by name."""
    name = run_dir.name
    return (PIPELINE.index(name) if name in PIPELINE else len(PIPELINE), name)


def read_runs(runs_dir: Path) -> Runs:
    runs = Runs()
    if not runs_dir.is_dir():
        return runs
    for run_dir in sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=_pipeline_order):
        name = run_dir.name
        try:
            if (run_dir / "metrics.jsonl").is_file():
                runs.curves[name] = _json_lines(run_dir / "metrics.jsonl", runs.problems)
            if (run_dir / "samples.jsonl").is_file():
                runs.samples[name] = _json_lines(run_dir / "samples.jsonl", runs.problems)
            if (run_dir / "metrics.json").is_file():
                summary = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
                if isinstance(summary, dict):
                    runs.summaries[name] = summary
        except (OSError, ValueError, RecursionError) as e:  # ValueError: not JSON, not UTF-8
            runs.problems.append(f"{run_dir}: {e} (skipped).")
    return runs


def loss_frame(records: list[dict]) -> pd.DataFrame:
    """(step, split, loss) for the train_loss / val_loss entries of one run's log."""
    rows = [{"step": r["step"], "split": split, "loss": r[f"{split}_loss"]}
            for r in records for split in ("train", "val")
            if isinstance(r.get(f"{split}_loss"), int | float) and isinstance(r.get("step"), int)]
    return pd.DataFrame(rows, columns=["step", "split", "loss"])


def result_rows(runs: Runs) -> list[dict]:
    """Every result row of every metrics.json, each result once.

    Two kinds of rows repeat, and are dropped: a row a run copied from another for comparison
    ("name [run]") when that run's own metrics.json is here, and a row with an earlier row's
    name and numbers, wall time aside (the baselines each classifier script computes again).
    Other rows that share a name (runs/classifier and runs/classifier-all both train "full
    finetune (pretrained)") are all kept, named "name [run]" so that the charts tell them
    apart.
    """
    kept, results = [], set()
    for run, summary in runs.summaries.items():
        rows = summary.get("rows")
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not isinstance(row.get("model"), str):
                continue
            copied = re.fullmatch(r"(.*) \[([^\]]*)\]", row["model"])
            name, source = copied.groups() if copied else (row["model"], run)
            if copied and source in runs.summaries:
                continue
            result = json.dumps({**row, "model": name, "train_time_s": None}, sort_keys=True)
            if result not in results:
                results.add(result)
                kept.append((name, source, {**row, "run": run}))
    names = Counter(name for name, _, _ in kept)
    return [{**row, "model": f"{name} [{source}]" if names[name] > 1 else name}
            for name, source, row in kept]


def accuracy_frame(runs: Runs) -> pd.DataFrame:
    """Sentiment accuracy on the GLUE dev set per model, baselines included."""
    rows = [{"model": r["model"], "accuracy": r["dev_acc"], "run": r["run"]}
            for r in result_rows(runs) if isinstance(r.get("dev_acc"), int | float)]
    return pd.DataFrame(rows, columns=["model", "accuracy", "run"])


def methods_frame(runs: Runs) -> pd.DataFrame:
    """The cost of each finetuning method: trainable share, wall time, peak memory.

    Baselines train nothing and have no "total". A finetuned row whose counts or measurements
    are not numbers is skipped and named in ``runs.problems``.
    """
    rows = []
    for r in result_rows(runs):
        if "total" not in r:
            continue
        trainable, total = r.get("trainable"), r["total"]
        seconds, mb = r.get("train_time_s"), r.get("peak_mem_mb")
        source = r.get("peak_mem_source", "process peak RSS growth")  # older files: RSS
        if not (is_number(trainable) and is_number(total) and 0 <= trainable <= total
                and total > 0 and all(v is None or is_number(v) for v in (seconds, mb))
                and isinstance(source, str)):
            runs.problems.append(f"runs/{r['run']}/metrics.json: row '{r['model']}' needs "
                                 "numbers for trainable, total, train_time_s and peak_mem_mb, "
                                 "and words for peak_mem_source (skipped).")
            continue
        rows.append({"model": r["model"], "run": r["run"], "trainable": trainable,
                     "total": total, "trainable_share": trainable / total,
                     "train_time_s": seconds, "peak_mem_mb": mb,
                     "peak_mem_source": source if mb is not None else None})
    return pd.DataFrame(rows, columns=["model", "run", "trainable", "total", "trainable_share",
                                       "train_time_s", "peak_mem_mb", "peak_mem_source"])


def evaluation_frame(runs: Runs) -> pd.DataFrame:
    """evaluate.py's perplexity and bits per character: the model and its two references."""
    summary = runs.summaries.get("evaluate", {})
    checkpoint = summary.get("checkpoint")
    names = {"model": f"trained: {Path(checkpoint).name}" if isinstance(checkpoint, str)
             else "trained model",
             "unigram": "unigram of the training tokens", "untrained": "untrained (random)"}
    rows = [{"model": names[name], "perplexity": summary[name]["perplexity"],
             # nats per character is the README's unit; bits are the same over ln 2
             "nats_per_char": summary[name]["bits_per_char"] * math.log(2),
             "bits_per_char": summary[name]["bits_per_char"]}
            for name in names
            if isinstance(summary.get(name), dict)
            and all(is_number(summary[name].get(k)) for k in ("perplexity", "bits_per_char"))]
    return pd.DataFrame(rows, columns=["model", "perplexity", "nats_per_char", "bits_per_char"])


def nf4_frame(runs: Runs) -> pd.DataFrame:
    """Bytes of the quantized weights as fp32, NF4 and NF4 + double quantization.

    A run whose quantized_bytes lacks one of the three, or holds anything but positive
    numbers, is skipped and named in ``runs.problems``.
    """
    formats = {"fp32": "fp32", "nf4": "NF4", "nf4_dq": "NF4 + double quant"}
    rows = []
    for run, summary in runs.summaries.items():
        sizes = summary.get("quantized_bytes")
        if sizes is None:
            continue
        if not (isinstance(sizes, dict)
                and all(is_number(sizes.get(key)) and sizes[key] > 0 for key in formats)):
            runs.problems.append(f"runs/{run}/metrics.json: quantized_bytes needs positive "
                                 f"byte counts for {', '.join(formats)} (skipped).")
            continue
        rows += [{"run": run, "format": label, "bytes": sizes[key]}
                 for key, label in formats.items()]
    return pd.DataFrame(rows, columns=["run", "format", "bytes"])


# ---------------------------------------------------------------------------- memory by kind

MEMORY_TITLES = {"weights": "weights", "grads": "gradients", "optimizer": "optimizer state",
                 "activations": "activations (saved for backward)"}
MEMORY_COLOURS = ("#4c78a8", "#f58518", "#e45756", "#bab0ac")  # one per MEMORY_KINDS
MEMORY_LESSON = (
    "What it teaches: full finetuning pays a gradient and two AdamW moments for every weight, "
    "LoRA pays them only for its small adapters, and QLoRA also stores the frozen weights in "
    "4 bits instead of 32.")


def memory_rows(model: str, run: str, memory: dict, batch: str, **extra) -> list[dict]:
    """One row per memory kind: (model, run, kind, bytes, total, batch) and ``extra``'s
    columns, from ``memory``'s byte counts by kind (``TrainingMemory.to_dict``'s keys)."""
    total = sum(memory[kind] for kind in MEMORY_KINDS)
    return [{"model": model, "run": run, "kind": kind, "bytes": memory[kind], "total": total,
             "batch": batch, **extra} for kind in MEMORY_KINDS]


def memory_frame(runs: Runs) -> pd.DataFrame:
    """One row per finetuned model and memory kind: (model, run, kind, bytes, total, batch),
    from the ``memory`` field the finetuning scripts write (memory.memory_record).

    A row whose ``memory`` lacks a kind, or holds anything but byte counts, is skipped and
    named in ``runs.problems``.
    """
    rows = []
    for r in result_rows(runs):
        memory = r.get("memory")
        if memory is None:
            continue
        if not (isinstance(memory, dict)
                and all(is_number(memory.get(k)) and memory[k] >= 0 for k in MEMORY_KINDS)):
            runs.problems.append(f"runs/{r['run']}/metrics.json: row '{r['model']}' needs byte "
                                 f"counts for memory {', '.join(MEMORY_KINDS)} (skipped).")
            continue
        batch = memory.get("batch")
        shape = " x ".join(map(str, batch)) if isinstance(batch, list) else "?"
        cuda = memory.get("activations_cuda")  # on a GPU: the forward pass measured
        rows += memory_rows(r["model"], r["run"], memory, shape,
                            measured=cuda if is_number(cuda) else None)
    return pd.DataFrame(rows, columns=["model", "run", "kind", "bytes", "total", "batch",
                                       "measured"])


# The GPT-2 124 M shape, and the classifier scripts' batch on a GPT-2 base (8 x 128 tokens).
GPT2_SMALL = GPTConfig(vocab_size=50257, context_length=1024, n_layer=12, n_head=12, n_embd=768)
PROJECTION_BATCH = (8, 128)


@dataclass(frozen=True)
class Method:
    """One way to finetune the classifier: its optimizer and, for (Q)LoRA, its adapters."""

    optimizer: str  # training.TrainConfig's: adamw | muon
    lora: dict | None = None  # apply_lora's settings; None: every weight trains
    quantized: bool = False  # the LoRA targets frozen in NF4 + double quantization first

    def apply(self, model: GPTClassifier) -> None:
        if self.quantized:
            quantize_model(model.gpt, targets=self.lora["targets"])
        if self.lora is not None:
            apply_lora(model.gpt, **self.lora)
            freeze_all_but_lora(model, trainable_extra=("head",))  # the new head trains too


# finetune_lora_classifier.py's LoRA (r=2 on the attention projections) and
# finetune_qlora_instructions.py's (r=8 on every linear layer), from the scripts' defaults.
LORA = {"r": finetune_lora_classifier.DEFAULT_RANK,
        "alpha": finetune_lora_classifier.DEFAULT_ALPHA,
        "targets": finetune_lora_classifier.DEFAULT_LORA_TARGETS}
QLORA = {"r": finetune_qlora_instructions.DEFAULT_RANK,
         "alpha": finetune_qlora_instructions.DEFAULT_ALPHA, "targets": DEFAULT_TARGETS}
METHODS = {
    "full finetune (AdamW)": Method("adamw"),
    "full finetune (Muon)": Method("muon"),
    f"LoRA r={LORA['r']} (AdamW)": Method("adamw", LORA),
    f"QLoRA r={QLORA['r']} (AdamW)": Method("adamw", QLORA, quantized=True),
}


def projected_memory(config: GPTConfig = GPT2_SMALL, batch: tuple[int, int] = PROJECTION_BATCH,
                     device: str = "meta") -> pd.DataFrame:
    """``memory_frame``'s table for the SST-2 classifier on a ``config``-shaped GPT, trained
    each way of ``METHODS`` on ``batch`` (examples, tokens). On the meta device (the default)
    nothing is allocated: tensors there have shapes and dtypes but no data, which is all the
    count needs. There attention runs as plain matmuls and softmax, which save the attention
    weights (B x heads x T x T per layer) that a fused kernel would recompute."""
    rows = []
    for name, method in METHODS.items():
        torch.manual_seed(0)
        with torch.device(device):
            model = GPTClassifier(GPTModel(config))
        method.apply(model)
        step = full_batch(*batch, device, labelled=True)
        cfg = training.TrainConfig(optimizer=method.optimizer)
        memory = training_memory(model, training.configure_optimizer(
            model, cfg, torch.device(device)), classification_loss, step).to_dict()
        rows += memory_rows(name, "projection", memory, f"{batch[0]} x {batch[1]}")
    return pd.DataFrame(rows, columns=["model", "run", "kind", "bytes", "total", "batch"])


def memory_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per model, one column per kind, and the total (``memory_frame``'s rows)."""
    wide = frame.pivot_table(index="model", columns="kind", values="bytes", aggfunc="first",
                             sort=False)
    wide = wide.reindex(columns=list(MEMORY_KINDS))
    return wide.assign(total=wide.sum(axis=1)).reset_index()


def _method(model: str) -> str | None:
    """'full', 'lora' or 'qlora' from a row's name ("QLoRA r=8 ...", "full finetune ...")."""
    for prefix, method in (("full finetune", "full"), ("lora", "lora"), ("qlora", "qlora")):
        if model.lower().startswith(prefix):
            return method
    return None


def runs_memory_title(methods: pd.DataFrame) -> str:
    """The runs' memory chart's title, with the sizes of the models they trained
    (``methods_frame``'s totals): a tiny preset or a GPT-2 base is not the default's 0.94 M."""
    if methods.empty:
        return "This project's runs"
    sizes = dict.fromkeys(human_count(int(n)) for n in (methods["total"].min(),
                                                         methods["total"].max()))
    return f"This project's runs ({' to '.join(sizes)} parameters)"


def memory_notes(frame: pd.DataFrame) -> list[str]:
    """What ``frame`` (``memory_frame``'s table) shows of the lesson, sentence by sentence:
    gradients + optimizer state (full > LoRA), weights (QLoRA < LoRA), and whether the totals
    order full > LoRA > QLoRA; where they do not, what the activations' share is."""
    if frame.empty:
        return []
    wide = memory_wide(frame)
    first = {}
    for row in wide.itertuples():
        first.setdefault(_method(row.model), row)
    full, lora, qlora = (first.get(m) for m in ("full", "lora", "qlora"))
    notes = []
    if full is not None and lora is not None:
        paid = [m.grads + m.optimizer for m in (full, lora)]
        notes.append(f"Gradients + optimizer state: {full.model} {human_bytes(paid[0])} "
                     f"{'>' if paid[0] > paid[1] else '<='} {lora.model} "
                     f"{human_bytes(paid[1])}.")
    if lora is not None and qlora is not None:
        holds = qlora.weights < lora.weights
        notes.append(f"Weights: {qlora.model} {human_bytes(qlora.weights)} "
                     f"{'<' if holds else '>='} {lora.model} {human_bytes(lora.weights)}.")
    present = [m for m in (full, lora, qlora) if m is not None]
    totals = [m.total for m in present]
    if len(present) > 1 and all(a > b for a, b in zip(totals, totals[1:], strict=False)):
        notes.append("The totals order as the methods imply: "
                     + " > ".join(f"{m.model} {human_bytes(m.total)}" for m in present) + ".")
    elif len(present) > 1:
        share = max(m.activations / m.total for m in present)
        batches = sorted(set(frame.loc[frame["model"].isin([m.model for m in present]),
                                       "batch"]))
        notes.append("The totals do not order as the methods imply ("
                     + ", ".join(f"{m.model} {human_bytes(m.total)}" for m in present)
                     + f"): activations are up to {100 * share:.0f} % of a step's bytes here; "
                     "they grow with the batch, the context and the vocabulary, and LoRA trims "
                     "them only where a frozen linear layer carries no adapter (it need not "
                     "keep its input)"
                     + (f"; the runs' batches differ ({', '.join(batches)})"
                        if len(batches) > 1 else "")
                     + ". The GPT-2 124 M projection shows the picture at scale.")
    measured = frame[frame["kind"] == "activations"].dropna(subset=["measured"]) \
        if "measured" in frame else frame.iloc[:0]
    notes += [f"On the GPU, {r.model}'s forward pass took {human_bytes(r.measured)} above its "
              f"weights (torch.cuda.max_memory_allocated); counted: {human_bytes(r.bytes)} "
              "saved for backward, the rest short-lived." for r in measured.itertuples()]
    return notes


# ---------------------------------------------------------------------------- charts


# What each plotted field is called on an axis or in a tooltip: words, not field names.
FIELD_TITLES = {
    "perplexity": "perplexity per token", "bits_per_char": "bits per character",
    "nats_per_char": "nats per character",
    "accuracy": "dev accuracy", "probability": "probability", "label": "label",
    "trainable": "trainable parameters", "trained parameters": "trained parameters",
    "train_time_s": "training wall time (s)", "peak_mem_mb": "measured peak (MB)",
    "total": "parameters",
    "checkpoint KB": "checkpoint size (KB)", "KB": "size (KB)", "model": "model",
    "format": "format", "step": "optimizer step", "loss": "loss (cross-entropy)",
    "split": "split",
}
# 1, 10, 100, 1k, 10k, 100k, 1M: short labels for a log axis's powers of ten (Vega expression).
SHORT_NUMBER = ("datum.value >= 1e6 ? datum.value / 1e6 + 'M' : "
                "datum.value >= 1e3 ? datum.value / 1e3 + 'k' : datum.value")
SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e"}  # blue and orange: never confused


def loss_chart(frame: pd.DataFrame, title: str) -> alt.Chart:
    splits = alt.Scale(domain=list(SPLIT_COLOURS), range=list(SPLIT_COLOURS.values()))
    return alt.Chart(frame, title=title).mark_line(point=True).encode(
        x=alt.X("step:Q", title=FIELD_TITLES["step"], axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("loss:Q", title=FIELD_TITLES["loss"], scale=alt.Scale(zero=False)),
        color=alt.Color("split:N", title=FIELD_TITLES["split"], scale=splits),
        tooltip=[alt.Tooltip("step", title=FIELD_TITLES["step"]), "split",
                 alt.Tooltip("loss", format=".4f")])


def powers_of_ten(largest: float) -> list[int]:
    """1, 10, 100, ... up to the first power at or above ``largest``: the ticks of a log axis
    (a symlog scale would also tick 0, which a log axis has not)."""
    ticks = [1]
    while ticks[-1] < largest:
        ticks.append(ticks[-1] * 10)
    return ticks


def bar_chart(frame: pd.DataFrame, x: str, y: str, title: str, fmt: str = ",.3f",
              log: bool = False, domain: tuple[float, float] | None = None) -> alt.LayerChart:
    """Horizontal bars, one per row of ``frame``, labelled with their values."""
    # symlog, not log: a log scale has no 0 for the bars to start from.
    scale = alt.Scale(type="symlog") if log else alt.Scale(domain=domain) if domain else \
        alt.Scale()
    axis = alt.Axis(values=powers_of_ten(frame[x].max()), labelExpr=SHORT_NUMBER) if log \
        else alt.Axis()
    title_x, title_y = FIELD_TITLES.get(x, x), FIELD_TITLES.get(y, y)
    base = alt.Chart(frame).encode(
        y=alt.Y(f"{y}:N", sort=None, title=None, axis=alt.Axis(labelLimit=260)),
        x=alt.X(f"{x}:Q", scale=scale, axis=axis, title=title_x),
        tooltip=[alt.Tooltip(y, title=title_y), alt.Tooltip(x, format=fmt, title=title_x)])
    labels = base.mark_text(align="left", dx=3).encode(text=alt.Text(f"{x}:Q", format=fmt))
    return alt.layer(base.mark_bar(), labels).properties(title=title)


def memory_chart(frame: pd.DataFrame, title: str) -> alt.Chart:
    """Stacked horizontal bars, one per model: its bytes by kind (``memory_frame``'s table)."""
    frame = frame.assign(MB=frame["bytes"] / 2**20, total_MB=frame["total"] / 2**20,
                         order=frame["kind"].map(MEMORY_KINDS.index),
                         kind=frame["kind"].map(MEMORY_TITLES))
    kinds = alt.Scale(domain=[MEMORY_TITLES[k] for k in MEMORY_KINDS], range=MEMORY_COLOURS)
    return alt.Chart(frame, title=title).mark_bar().encode(
        y=alt.Y("model:N", sort=None, title=None, axis=alt.Axis(labelLimit=260)),
        x=alt.X("MB:Q", stack="zero", title="MB in one training step"),
        color=alt.Color("kind:N", scale=kinds, title=None, legend=alt.Legend(orient="bottom")),
        order=alt.Order("order:Q"),
        tooltip=["model", alt.Tooltip("kind", title="memory"),
                 alt.Tooltip("MB", format=",.2f", title="MB"),
                 alt.Tooltip("bytes", format=",d", title="bytes"),
                 alt.Tooltip("total_MB", format=",.2f", title="step total (MB)"),
                 alt.Tooltip("batch", title="batch (examples x tokens)")])


def attention_chart(frame: pd.DataFrame, labels: list[str], title: str) -> alt.Chart:
    cell = alt.Step(max(12, min(28, 560 // len(labels))))  # square cells, about 560 px in all
    return alt.Chart(frame, title=title, width=cell, height=cell).mark_rect().encode(
        x=alt.X("key:O", sort=labels, title="attends to (key)"),
        y=alt.Y("query:O", sort=labels, title="token (query)"),
        color=alt.Color("weight:Q", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=["query", "key", alt.Tooltip("weight", format=".3f")])
