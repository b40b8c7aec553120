"""What every finetuning script shares: flags, base model, data, loss, accuracy, memory, report.

``finetune_classifier.py`` (every weight trains) and ``finetune_lora_classifier.py`` (only
LoRA adapters and the head train) are the same experiment with a different set of trainable
weights, so everything else lives here, once:

- ``add_common_args``      the flags every finetuning script takes (--base, --max-steps, ...);
                           ``add_classifier_args`` adds what only the SST-2 scripts take.
- ``load_base``            the pretrained model; a missing file says "run python main.py first".
- ``load_sst2_splits``     SST-2 with the training sentences subsampled (seeded) if asked.
- ``make_loaders``         sentences -> ids once, then right-padded random batches of
                           similar-length sentences (``LengthGroupedBatches``).
- ``classification_loss``  cross-entropy on the class logits, for ``training.train_model``.
- ``evaluate_accuracy``    share of correctly classified sentences in a loader.
- ``finetune``             train with ``training.train_model``, then measure everything the
                           report needs: accuracy, trainable share, wall time, peak memory.
- ``baseline_rows``        the majority class and a TF-IDF + logistic regression baseline.
- ``print_table`` / ``write_metrics``   the results table and ``runs/<name>/metrics.json``.
- ``prepare`` / ``Experiment``   the set-up both classifier scripts share, and their report.

Both run under ``torchrun --nproc_per_node=N`` too (DistributedDataParallel, each process
its own share of the batches, only rank 0 evaluates, logs and saves).

Which data is used for what. SST-2's GLUE dev set (``load_sst2``'s "test", 872 sentences)
is only ever scored, once, at the end: nothing is trained, tuned or selected on it. The "val"
split, carved from GLUE train, is what the training loop evaluates its loss on, and the
place for any tuning. The final model is simply the last step's, with no selection at all.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler

from checkpoint import check_writable, load_checkpoint, weights_fingerprint
from classifier import encode_text
from data_utils import ShardedSampler, load_sst2, pad_batch
from lora import count_parameters
from model import GPTModel
from tokenizer import BPETokenizer
from training import Launch, TrainConfig, cleanup_distributed, launch, train_model

Example = tuple[str, int]  # (sentence, label)

# ---------------------------------------------------------------------------- flags


def train_size_arg(value: str) -> int:
    """--train-size: a number of training examples; 0 or "all" means the whole training split."""
    if value.lower() == "all":
        return 0
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got '{value}'") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 means all), got {size}")
    return size


def add_common_args(p: argparse.ArgumentParser, *, out: str, run_name: str, lr: float,
                    train_size_help: str, max_steps: int = 600, train_size: int = 20_000,
                    batch_size: int = 32) -> argparse.ArgumentParser:
    """The flags every finetuning script takes; each script picks its own defaults and says
    what its --train-size counts (``train_size_help``)."""
    p.add_argument("--base", default="model_weights.pth", help="pretrained model from main.py")
    p.add_argument("--out", default=out, help="where to save the finetuned checkpoint")
    p.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps")
    p.add_argument("--train-size", type=train_size_arg, default=train_size,
                   help=f"{train_size_help}; 0 or 'all': every one")
    p.add_argument("--batch-size", type=int, default=batch_size, help="examples per step")
    p.add_argument("--lr", type=float, default=lr, help="peak learning rate (cosine to lr/10)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of max-steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's, on matrices only")
    p.add_argument("--eval-interval", type=int, default=100,
                   help="log the val loss every N steps")
    p.add_argument("--seed", type=int, default=1337,
                   help="drives the subsample, batch order and new weights")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--data-dir", default=None, help="read datasets from this folder; unset: "
                   "$LLM_DATA_DIR, else download into data/")
    p.add_argument("--run-name", default=run_name, help="metrics go to runs/<run-name>/")
    return p


def add_classifier_args(p: argparse.ArgumentParser, *, out: str, run_name: str, lr: float
                        ) -> argparse.ArgumentParser:
    """The flags of both SST-2 classifier scripts: the common ones plus --group-by-length."""
    add_common_args(p, out=out, run_name=run_name, lr=lr,
                    train_size_help="training sentences, seeded subsample of SST-2's 66k")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch sentences of similar length (3x less padding on SST-2)")
    return p


def check_args(args: argparse.Namespace) -> None:
    """One clear sentence for a flag value that would fail later in a confusing way."""
    for name in ("max_steps", "batch_size", "eval_interval"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                             f"got {getattr(args, name)}.")
    if not args.lr > 0:  # also catches nan
        raise ValueError(f"--lr must be positive, got {args.lr}.")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {args.warmup_steps}.")
    if args.weight_decay < 0:  # it would push the weights away from zero
        raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}.")
    check_writable(args.out)  # now, not after the training


def train_config(args: argparse.Namespace) -> TrainConfig:
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 10)
    return TrainConfig(max_steps=args.max_steps, learning_rate=args.lr, min_lr=args.lr / 10,
                       warmup_steps=warmup, weight_decay=args.weight_decay,
                       eval_interval=args.eval_interval, log_interval=10,
                       dtype=args.dtype, seed=args.seed)


# ---------------------------------------------------------------------------- model and data


def load_base(path: str | Path) -> tuple[GPTModel, BPETokenizer, dict]:
    """The pretrained GPT from main.py. Missing file: 'No checkpoint at ...: run python main.py
    first.' (checkpoint.read_checkpoint's message)."""
    return load_checkpoint(path)


def load_sst2_splits(data_dir: str | Path | None, train_size: int, seed: int
                     ) -> dict[str, list[Example]]:
    """SST-2 {"train", "val", "test"}; train cut to a seeded ``train_size`` sample (0: all)."""
    splits = load_sst2(data_dir)
    if 0 < train_size < len(splits["train"]):
        splits["train"] = random.Random(seed).sample(splits["train"], train_size)
    return splits


class ClassificationDataset(Dataset):
    """(ids, label) pairs, encoded once up front (encoding is slower than a forward pass)."""

    def __init__(self, examples: list[Example], tokenizer: BPETokenizer, context_length: int):
        if not examples:
            raise ValueError("No examples to classify.")
        self.ids = [encode_text(tokenizer, text, context_length) for text, _ in examples]
        self.labels = [label for _, label in examples]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[list[int], int]:
        return self.ids[i], self.labels[i]


def collate(pad_id: int):
    """Right-pad a list of (ids, label) into (ids [B, T], lengths [B], labels [B])."""
    def fn(items: list[tuple[list[int], int]]) -> tuple[torch.Tensor, ...]:
        ids, lengths = pad_batch([ids for ids, _ in items], pad_id)
        return ids, lengths, torch.tensor([label for _, label in items], dtype=torch.long)
    return fn


class LengthGroupedBatches(Sampler[list[int]]):
    """Random batches of sentences of similar length, so that little of a batch is padding.

    A batch is padded to its longest sentence. SST-2's training phrases are 21 tokens long on
    average but a random batch of 32 is padded to about 65, so two thirds of the computed
    positions would be padding. Each epoch: shuffle (seed + epoch), sort each window of
    ``window`` batches by length, cut it into batches, and shuffle the batches. Every batch
    is still a random draw, only of neighbours in length (Hugging Face's group_by_length);
    the padded share drops to a few percent, so a CPU step is about 3x faster.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50,
                 rank: int = 0, world_size: int = 1):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.rank, self.world_size = rank, world_size  # under DDP: every world_size-th batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.window * self.batch_size
        grouped = [i for start in range(0, len(order), span)
                   for i in sorted(order[start : start + span], key=self.lengths.__getitem__)]
        batches = [grouped[i * self.batch_size : (i + 1) * self.batch_size]
                   for i in range(len(self.lengths) // self.batch_size)]
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return iter(shuffled[self.rank : len(self) * self.world_size : self.world_size])


def make_loader(examples: list[Example], tokenizer: BPETokenizer, context_length: int,
                batch_size: int, shuffle: bool, seed: int = 0, group_by_length: bool = True,
                rank: int = 0, world_size: int = 1) -> DataLoader:
    """Batches of (ids, lengths, labels).

    Training (``shuffle``): a new seeded shuffle each epoch, a pure function of (seed, epoch),
    in batches of similar length (LengthGroupedBatches) unless ``group_by_length`` is off;
    under DDP, process ``rank`` takes its own share of the batches.
    Evaluation: the file's order, every sentence.
    """
    dataset = ClassificationDataset(examples, tokenizer, context_length)
    pad = collate(tokenizer.eot_id)
    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=pad)
    if len(dataset) < batch_size:
        raise ValueError(f"{len(dataset)} training sentences cannot fill one batch of "
                         f"{batch_size}; use a larger --train-size or a smaller --batch-size.")
    if group_by_length:
        batches = LengthGroupedBatches([len(ids) for ids in dataset.ids], batch_size, seed,
                                       rank=rank, world_size=world_size)
        return DataLoader(dataset, batch_sampler=batches, collate_fn=pad)
    sampler = ShardedSampler(len(dataset), shuffle=True, seed=seed, rank=rank,
                             world_size=world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                      collate_fn=pad)


def make_loaders(splits: dict[str, list[Example]], tokenizer: BPETokenizer, context_length: int,
                 batch_size: int, seed: int, group_by_length: bool = True, rank: int = 0,
                 world_size: int = 1) -> dict[str, DataLoader]:
    return {name: make_loader(examples, tokenizer, context_length,
                              batch_size if name == "train" else 2 * batch_size,
                              shuffle=name == "train", seed=seed,
                              group_by_length=group_by_length, rank=rank, world_size=world_size)
            for name, examples in splits.items()}


# ---------------------------------------------------------------------------- loss and accuracy


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """Cross-entropy of the class logits (the ``loss_fn`` that train_model calls)."""
    ids, lengths, labels = batch
    return F.cross_entropy(model(ids, lengths).float(), labels)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Share of sentences in ``loader`` whose highest-scoring class is the label."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = total = 0
    for ids, lengths, labels in loader:
        logits = model(ids.to(device), lengths.to(device))
        correct += (logits.argmax(dim=-1).cpu() == labels).sum().item()
        total += len(labels)
    model.train(was_training)
    return correct / max(total, 1)


# ---------------------------------------------------------------------------- memory


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

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.mb = 0.0

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


# ---------------------------------------------------------------------------- finetune


def finetune(model: nn.Module, loaders: dict[str, DataLoader], args: argparse.Namespace,
             run: Launch, name: str, log_path: str | Path) -> dict | None:
    """Train ``model``'s trainable weights on loaders["train"]; return its results row.

    The row holds: dev (GLUE dev = our "test") and val accuracy, trainable and total
    parameters, wall time of training (with its periodic val-loss evaluations), peak memory
    during training (PeakMemory), and the loss summary.
    The JSON-lines log gets train_model's records plus one final record with the accuracies.
    Under torchrun every process trains (DistributedDataParallel) and only the main one
    measures and reports: the others return None.
    """
    log_path = Path(log_path)
    if run.is_main:
        log_path.unlink(missing_ok=True)  # a fresh run, a fresh log
    model.to(run.device)
    trainable, total = count_parameters(model)
    warm_up_optimizer()
    with PeakMemory(run.device) as memory:
        summary = train_model(run.wrap(model), loaders["train"], loaders["val"],
                              train_config(args), run.device, loss_fn=classification_loss,
                              log_path=log_path, is_main=run.is_main, desc=name)
    if not run.is_main:
        return None
    row = {
        "model": name,
        "dev_acc": evaluate_accuracy(model, loaders["test"]),
        "val_acc": evaluate_accuracy(model, loaders["val"]),
        "trainable": trainable,
        "total": total,
        "train_time_s": round(summary["elapsed"], 1),
        "peak_mem_mb": round(memory.mb, 1),
        "steps": summary["steps"],
        "train_loss": summary["train_loss"],
        "val_loss": summary["val_loss"],
        "dtype": summary["dtype"],
        "processes": run.world_size,
        "interrupted": summary["interrupted"],
    }
    if summary["interrupted"]:
        print(f"note: {name} was stopped early, at step {summary['steps']}.")
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": summary["steps"], "val_acc": row["val_acc"],
                            "dev_acc": row["dev_acc"]}) + "\n")
    return row


# ---------------------------------------------------------------------------- baselines


def majority_row(train: list[Example], test: list[Example]) -> dict:
    """Always predict the most common training label."""
    majority = Counter(label for _, label in train).most_common(1)[0][0]
    return {"model": "majority class", "dev_acc": sum(y == majority for _, y in test) / len(test),
            "trainable": 0}


def tfidf_row(train: list[Example], test: list[Example]) -> dict | None:
    """TF-IDF of unigrams + bigrams into logistic regression, on the same training sentences.

    scikit-learn is a benchmark-only dependency (requirements-dev.txt): without it the row is
    skipped with a note.
    """
    try:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        print("note: scikit-learn is not installed, so the TF-IDF baseline is skipped "
              "(pip install -r requirements-dev.txt).")
        return None
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


def baseline_rows(splits: dict[str, list[Example]]) -> list[dict]:
    rows = [majority_row(splits["train"], splits["test"]), tfidf_row(splits["train"],
                                                                     splits["test"])]
    return [row for row in rows if row is not None]


# ---------------------------------------------------------------------------- report


def checkpoint_row(row: dict, path: str | Path) -> dict:
    """The row with the saved checkpoint's path and size added."""
    return {**row, "checkpoint": str(path), "checkpoint_bytes": os.path.getsize(path)}


def _size(n_bytes: int | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / 2**20:.2f} MB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KB"


def format_table(rows: list[dict]) -> str:
    """A plain-text table: one line per row, '-' where a column does not apply."""
    header = ("model", "dev acc", "val acc", "trainable", "share", "train time", "peak mem",
              "checkpoint")
    lines = []
    for r in rows:
        share = f"{100 * r['trainable'] / r['total']:.2f} %" if r.get("total") else "-"
        lines.append((
            r["model"],
            f"{100 * r['dev_acc']:.1f} %",
            f"{100 * r['val_acc']:.1f} %" if r.get("val_acc") is not None else "-",
            f"{r['trainable']:,}",
            share,
            f"{r['train_time_s']:.0f} s" if r.get("train_time_s") is not None else "-",
            f"{r['peak_mem_mb']:.0f} MB" if r.get("peak_mem_mb") is not None else "-",
            _size(r.get("checkpoint_bytes")),
        ))
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    out = []
    for i, line in enumerate([header, *lines]):
        cells = [str(c).ljust(w) if j == 0 else str(c).rjust(w)
                 for j, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells))
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n{format_table(rows)}\n")


def write_metrics(run_dir: str | Path, rows: list[dict], args: argparse.Namespace,
                  **extra) -> Path:
    """runs/<name>/metrics.json: every row, the flags the run used and anything in ``extra``."""
    path = Path(run_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"rows": rows, "args": vars(args), **extra}
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def sizes_line(splits: dict[str, list[Example]]) -> str:
    return ", ".join(f"{name} {len(rows):,}" for name, rows in splits.items())


# ---------------------------------------------------------------------------- one experiment


@dataclass
class Experiment:
    """What both classifier scripts set up the same way, and the rows of their report."""

    args: argparse.Namespace
    run: Launch
    base: GPTModel
    tokenizer: BPETokenizer
    base_fingerprint: str
    splits: dict[str, list[Example]]
    loaders: dict[str, DataLoader]
    rows: list[dict]

    @property
    def run_dir(self) -> Path:
        return Path("runs") / self.args.run_name

    def finetune(self, model: nn.Module, name: str, log_path: str | Path) -> dict | None:
        return finetune(model, self.loaders, self.args, self.run, name, log_path)

    def finish(self, **extra) -> int:
        """Print the table and write runs/<name>/metrics.json (main process); end the run."""
        cleanup_distributed()
        if not self.run.is_main:
            return 0
        print_table(self.rows, f"SST-2, GLUE dev set ({len(self.splits['test'])} sentences); "
                    f"trained on {len(self.splits['train']):,} sentences, "
                    f"{self.args.max_steps} steps x {self.run.world_size} process(es)")
        path = write_metrics(self.run_dir, self.rows, self.args, base=str(self.args.base),
                             base_fingerprint=self.base_fingerprint,
                             train_size=len(self.splits["train"]),
                             processes=self.run.world_size, **extra)
        print(f"Saved {self.args.out}; results in {path}")
        return 0


def prepare(args: argparse.Namespace) -> Experiment:
    """Check the flags, start the processes, load the base model and SST-2, build the loaders.

    Under torchrun each process gets its own share of the training batches (--batch-size is
    per process, so the global batch is batch size x processes); only the main process
    prints and computes the baselines.
    """
    check_args(args)
    run = launch(args.device)
    base, tokenizer, _ = load_base(args.base)
    splits = load_sst2_splits(args.data_dir, args.train_size, args.seed)
    if run.is_main:
        print(f"Base {args.base}: {base.num_parameters() / 1e6:.2f} M parameters, context "
              f"{base.config.context_length}; SST-2 sentences: {sizes_line(splits)} "
              f"(test = GLUE dev); device {run.device}"
              + (f"; {run.world_size} processes" if run.world_size > 1 else ""))
    loaders = make_loaders(splits, tokenizer, base.config.context_length, args.batch_size,
                           args.seed, args.group_by_length, rank=run.rank,
                           world_size=run.world_size)
    return Experiment(args, run, base, tokenizer, weights_fingerprint(base.state_dict()),
                      splits, loaders, baseline_rows(splits) if run.is_main else [])
