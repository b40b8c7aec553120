"""The experiment flow the three finetuning scripts share: their flags, their data, their report.

The scripts show their ideas themselves (finetune_classifier.py: a classifier head, every
weight trains; finetune_lora_classifier.py: frozen base, LoRA adapters; and
finetune_qlora_instructions.py: a 4-bit base plus LoRA). What they set up the same way sits
here, once, above the chapters it ties together:

- ``add_common_args`` / ``add_classifier_args`` / ``add_instruction_args`` (``add_lora_args``
  in both LoRA scripts)   the flags, with their defaults in view;
  ``parse_finetune_args`` fills the size flags (--lr, --batch-size, --max-length) from the
  base's ``SizeDefaults``, ours or GPT-2's; ``check_args`` checks them before anything is
  loaded; ``train_config`` turns them into ``training.TrainConfig``.
- ``--base`` is our main.py checkpoint or GPT-2 in Hugging Face format (``hf_gpt2.load_base``
  reads either), so every script here runs on OpenAI's pretrained GPT-2 as well.
- ``load_sst2_splits`` / ``load_instruction_splits``   the data, subsampled (seeded) if asked.
- ``sst2_experiment``   both SST-2 scripts' set-up: sentences -> batches of (ids, lengths,
  labels), the baseline rows; ``SST2Experiment.score`` makes a trained model's row of the
  results table and ``finish`` prints the table and writes runs/<name>/metrics.json.
- ``stop_if_interrupted``   Ctrl-C / SIGTERM end a script with 130 / 143, as main.py's do,
  and leave --out as it was: a finetune cannot resume, so a half-trained model is not saved.

``memory_at_full_batch`` counts a run's training memory by kind (weights, gradients,
optimizer state, activations) at its largest batch, before it trains;
``memory_before_training`` adds the meter of what the training then holds at its peak.

Counting memory is memory.py's; baselines, tables and metric files support/metrics.py's;
batching data_utils.py's, the flag types support/cli.py's (a bad value fails as it is parsed).

All three run under ``torchrun --nproc_per_node=N`` too (DistributedDataParallel, each
process its own share of the batches, only rank 0 evaluates, logs and saves).

Which data is used for what. SST-2's GLUE dev set (``load_sst2``'s "test", 872 sentences)
is only ever scored, once, at the end: nothing is trained, tuned or selected on it. The "val"
split, carved from GLUE train, is what the training loop evaluates its loss on, and the
place for any tuning. The final model is simply the last step's, with no selection at all.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from checkpoint import weights_fingerprint
from classifier import encode_text, evaluate_accuracy
from data_utils import example_loader, load_instructions, load_sst2, pad_labelled
from hf_gpt2 import is_hf_base
from memory import memory_record
from model import GPTModel
from support.cli import (
    fraction,
    new_tokens_arg,
    nonnegative_float,
    nonnegative_int,
    path_arg,
    positive_float,
    positive_int,
    run_name_arg,
    seed_arg,
    train_size_arg,
    whole,
)
from support.datasets import INSTRUCTIONS_1100, LabelledText
from support.errors import DataMissingError, TrainingStopped
from support.files import check_writable
from support.metrics import (
    CLASSIFIER_COLUMNS,
    INSTRUCTION_COLUMNS,
    PeakMemory,
    append_record,
    baseline_rows,
    format_table,
    write_jsonl,
    write_metrics,
)
from support.runtime import Launch, cleanup_distributed
from tokenizer import BPETokenizer
from training import TrainConfig, configure_optimizer

DATA_FILE_HINT = ("This script takes such a file as --data-file (a path, or the name of a file "
                  f"in the data folder), e.g. --data-file {INSTRUCTIONS_1100}.")

# ---------------------------------------------------------------------------- flags


@dataclass(frozen=True)
class SizeDefaults:
    """The settings that depend on the base's size: each script's for our tiny base, and one
    set for GPT-2 (124 M+ parameters, pretrained on 1,024-token windows of web text), whose
    pretrained weights want a gentler learning rate, smaller batches and shorter windows."""

    lr: float
    batch_size: int
    max_length: int | None = None  # tokens per example; None: the base's whole context


def add_common_args(p: argparse.ArgumentParser, *, out: str, run_name: str,
                    ours: SizeDefaults, gpt2: SizeDefaults, train_size_help: str,
                    max_steps: int = 600, train_size: int = 20_000) -> argparse.ArgumentParser:
    """The flags every finetuning script takes; each script picks its own defaults and says
    what its --train-size counts (``train_size_help``). --lr, --batch-size and --max-length
    default to ``ours`` or, on a GPT-2 base, ``gpt2`` (``parse_finetune_args`` picks)."""
    p.add_argument("--base", type=path_arg, default="model_weights.pth",
                   help="pretrained model: a checkpoint of main.py, or GPT-2 in Hugging Face "
                   "format (a name such as gpt2 or gpt2-medium, or a folder)")
    p.add_argument("--out", type=path_arg, default=out,
                   help="where to save the finetuned checkpoint")
    p.add_argument("--max-steps", type=positive_int, default=max_steps, help="optimizer steps")
    p.add_argument("--train-size", type=train_size_arg, default=train_size,
                   help=f"{train_size_help}; 0 or 'all': every one")
    p.add_argument("--batch-size", type=positive_int, default=None, help="examples per step "
                   f"(default: {ours.batch_size}; {gpt2.batch_size} on a GPT-2 base)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate, cosine "
                   f"to lr/10 (default: {ours.lr:g}; {gpt2.lr:g} on a GPT-2 base)")
    p.add_argument("--max-length", type=whole(2), default=None, help="tokens per example, "
                   f"longer ones cut (default: the base's context; {gpt2.max_length} on a "
                   "GPT-2 base)")
    p.add_argument("--warmup-steps", type=nonnegative_int, default=None,
                   help="default: 10%% of max-steps")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.1,
                   help="AdamW's, on matrices only")
    p.add_argument("--eval-interval", type=positive_int, default=100,
                   help="log the val loss every N steps")
    p.add_argument("--seed", type=seed_arg, default=1337,
                   help="drives the subsample, batch order and new weights")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast precision; auto: bfloat16 on a CUDA GPU that has it, "
                   "else float32")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="read datasets from this folder; unset: "
                   "$LLM_DATA_DIR, else download into data/")
    p.add_argument("--run-name", type=run_name_arg, default=run_name,
                   help="metrics go to runs/<run-name>/")
    p.set_defaults(size_defaults={"ours": ours, "gpt2": gpt2})
    return p


def parse_finetune_args(p: argparse.ArgumentParser, argv: list[str] | None
                        ) -> argparse.Namespace:
    """Parse, then fill each size flag the user left out from the base's defaults: the one
    place a GPT-2 base changes a default."""
    args = p.parse_args(argv)
    defaults = args.__dict__.pop("size_defaults")["gpt2" if is_hf_base(args.base) else "ours"]
    for name, value in vars(defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def add_classifier_args(p: argparse.ArgumentParser, *, out: str, run_name: str,
                        ours: SizeDefaults, gpt2: SizeDefaults) -> argparse.ArgumentParser:
    """The flags of both SST-2 classifier scripts: the common ones plus --group-by-length."""
    add_common_args(p, out=out, run_name=run_name, ours=ours, gpt2=gpt2,
                    train_size_help="training sentences, seeded subsample of SST-2's 66k")
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=True,
                   help="batch sentences of similar length (3x less padding on SST-2)")
    return p


def add_lora_args(p: argparse.ArgumentParser, *, rank: int, alpha: float,
                  dropout: float) -> argparse.ArgumentParser:
    """The LoRA settings both LoRA scripts take, with each script's defaults."""
    p.add_argument("--rank", type=positive_int, default=rank, help="LoRA rank r")
    p.add_argument("--alpha", type=positive_float, default=alpha,
                   help="LoRA alpha: the update is scaled by alpha / r")
    p.add_argument("--dropout", type=fraction, default=dropout,
                   help="dropout on the adapter input")
    return p


def add_instruction_args(p: argparse.ArgumentParser, *, out: str, run_name: str,
                         ours: SizeDefaults, gpt2: SizeDefaults, max_steps: int,
                         train_size: int, backends: tuple[str, ...], rank: int, alpha: float,
                         dropout: float, samples: int,
                         max_new_tokens: int) -> argparse.ArgumentParser:
    """The instruction-tuning flags: the common ones, the data file, the NF4 backend (one of
    ``backends``), the LoRA settings and the held-out answers shown before and after."""
    add_common_args(p, out=out, run_name=run_name, ours=ours, gpt2=gpt2, max_steps=max_steps,
                    train_size=train_size, train_size_help="training instructions, seeded "
                    "subsample of the data file's 95 %% train split")
    p.add_argument("--data-file", type=path_arg, default=None,
                   help="any Dolly-schema JSONL (default: databricks-dolly-15k.jsonl from the "
                   f"data folder): a path, or the name of a file in the data folder, e.g. "
                   f"{INSTRUCTIONS_1100}")
    p.add_argument("--backend", choices=backends, default=backends[0],
                   help="NF4 implementation: ours (quantization.py) or bitsandbytes")
    add_lora_args(p, rank=rank, alpha=alpha, dropout=dropout)
    p.add_argument("--samples", type=nonnegative_int, default=samples,
                   help="held-out instructions to answer")
    p.add_argument("--max-new-tokens", type=new_tokens_arg, default=max_new_tokens,
                   help="length limit of an answer")
    return p


def example_length(args: argparse.Namespace, base: GPTModel) -> int:
    """Tokens per example: --max-length, at most the base's context."""
    return min(args.max_length or base.config.context_length, base.config.context_length)


def check_args(args: argparse.Namespace) -> None:
    """An --out that cannot be written is refused now, not after the training. (Each flag's
    value was checked by its type when it was parsed.)"""
    check_writable(args.out)


def train_config(args: argparse.Namespace) -> TrainConfig:
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.max_steps // 10)
    return TrainConfig(max_steps=args.max_steps, learning_rate=args.lr, min_lr=args.lr / 10,
                       warmup_steps=warmup, weight_decay=args.weight_decay,
                       eval_interval=args.eval_interval, log_interval=10,
                       dtype=args.dtype, seed=args.seed)


def memory_at_full_batch(model: nn.Module, loss_fn, args: argparse.Namespace, length: int,
                         device: torch.device, labelled: bool) -> dict:
    """The bytes a training step holds, by kind (``memory.memory_record``), at the
    largest batch the run allows: --batch-size examples of ``length`` tokens, (ids, lengths,
    labels) if ``labelled``, else (inputs, targets); the optimizer the run will build."""
    optimizer = configure_optimizer(model, train_config(args), device)
    return memory_record(model, optimizer, loss_fn,
                         full_batch(args.batch_size, length, device, labelled))


def memory_before_training(model: nn.Module, loss_fn, args: argparse.Namespace, length: int,
                           device: torch.device, labelled: bool) -> tuple[dict, PeakMemory]:
    """(the bytes a training step holds, by kind, counted as ``memory_at_full_batch`` counts
    them; a ``PeakMemory`` to measure the training with). The meter comes after the one-time
    import a process's first AdamW makes (torch._dynamo, ~90 MB): the AdamW that
    ``memory_at_full_batch`` builds pays it, so it is not counted as the run's memory."""
    memory = memory_at_full_batch(model, loss_fn, args, length, device, labelled)
    return memory, PeakMemory(device)


def full_batch(examples: int, length: int, device: torch.device | str, labelled: bool
               ) -> tuple[torch.Tensor, ...]:
    """A batch of ``examples`` full-length examples of ``length`` tokens (all id 0), the shape
    memory is counted at: (ids, lengths, labels) if ``labelled``, else (inputs, targets)."""
    ids = torch.zeros(examples, length, dtype=torch.long, device=device)
    return (ids, torch.full((examples,), length, device=device), ids[:, 0]) if labelled \
        else (ids, ids)


def stop_if_interrupted(summary: dict, args: argparse.Namespace, name: str,
                        log_path: Path) -> None:
    """After Ctrl-C or SIGTERM, end the script as main.py does: exit 130 / 143 and say what was
    kept. A finetune cannot resume, so its half-trained model is not saved: --out keeps the
    last run that finished (an early model over it would pass for a trained one)."""
    if summary["interrupted"]:
        out = Path(args.out)
        kept = f"{out} still holds the last finished run" if out.exists() else \
            f"{out} was not written"
        raise TrainingStopped(f"{name} stopped early at step {summary['steps']} of "
                              f"{args.max_steps}; the half-trained model was not saved ({kept})"
                              f". Its training curve is in {log_path}.", summary["stop_signal"])


# ---------------------------------------------------------------------------- data


def load_sst2_splits(data_dir: str | Path | None, train_size: int, seed: int
                     ) -> dict[str, list[LabelledText]]:
    """SST-2 {"train", "val", "test"}; train cut to a seeded ``train_size`` sample (0: all)."""
    splits = load_sst2(data_dir)
    if 0 < train_size < len(splits["train"]):
        splits["train"] = random.Random(seed).sample(splits["train"], train_size)
    return splits


def load_instruction_splits(args: argparse.Namespace) -> dict[str, list[dict]]:
    """The fixed 95 / 5 split, train cut to a seeded --train-size sample (0: all of it).

    The split keeps load_instructions' own seed, not --seed: it is the split the tokenizer
    corpus leaves the test records out of (as SST-2's is), so they stay unseen whatever --seed.
    """
    try:
        splits = load_instructions(args.data_file, args.data_dir)
    except DataMissingError as err:  # the default file is missing: name the flag for another
        if args.data_file is not None:
            raise
        raise DataMissingError(f"{err} {DATA_FILE_HINT}") from None
    if 0 < args.train_size < len(splits["train"]):
        splits["train"] = random.Random(args.seed).sample(splits["train"], args.train_size)
    return splits


def sst2_loaders(splits: dict[str, list[LabelledText]], tokenizer: BPETokenizer,
                 context_length: int, batch_size: int, seed: int,
                 group_by_length: bool = True, rank: int = 0, world_size: int = 1
                 ) -> dict[str, DataLoader]:
    """Each split's sentences encoded once (``classifier.encode_text``: encoding is slower
    than a forward pass), then batches of (ids, lengths, labels): training batches seeded,
    sharded under DDP and of similar-length sentences unless ``group_by_length`` is off;
    evaluation batches (twice as large) in the file's order."""
    loaders = {}
    for name, sentences in splits.items():
        examples = [(encode_text(tokenizer, text, context_length), label)
                    for text, label in sentences]
        train = name == "train"
        loaders[name] = example_loader(
            examples, batch_size if train else 2 * batch_size, pad_labelled(tokenizer.eot_id),
            shuffle=train, seed=seed, group_by_length=group_by_length, rank=rank,
            world_size=world_size, unit="sentences", too_few="use a larger --train-size")
    return loaders


# ---------------------------------------------------------------------------- SST-2 runs


@dataclass
class SST2Experiment:
    """What both classifier scripts set up the same way, and the rows of their report."""

    args: argparse.Namespace
    run: Launch
    base_fingerprint: str
    splits: dict[str, list[LabelledText]]
    loaders: dict[str, DataLoader]
    rows: list[dict]

    @property
    def run_dir(self) -> Path:
        return Path("runs") / self.args.run_name

    def fresh_log(self, log_path: Path) -> None:
        if self.run.is_main:
            log_path.unlink(missing_ok=True)  # a fresh run, a fresh log

    def score(self, model: nn.Module, name: str, summary: dict, peak: PeakMemory,
              memory: dict, parameters: tuple[int, int], log_path: Path) -> dict | None:
        """A trained model's row: dev (GLUE dev = our "test") and val accuracy, trainable and
        total ``parameters``, wall time, the ``memory`` by kind and the ``peak`` measured in
        training (``PeakMemory``: its ``source`` says what it measured), the loss summary. Its
        log gets a final record with the accuracies. Only the main process scores: the
        others return None. A run stopped by Ctrl-C / SIGTERM ends the script here."""
        stop_if_interrupted(summary, self.args, name, log_path)
        if not self.run.is_main:
            return None
        row = {"model": name, "dev_acc": evaluate_accuracy(model, self.loaders["test"]),
               "val_acc": evaluate_accuracy(model, self.loaders["val"]),
               "trainable": parameters[0], "total": parameters[1],
               "train_time_s": round(summary["elapsed"], 1), "memory": memory,
               "peak_mem_mb": round(peak.mb, 1), "peak_mem_source": peak.source,
               **{key: summary[key] for key in ("steps", "train_loss", "val_loss", "dtype")},
               "processes": self.run.world_size, "interrupted": summary["interrupted"]}
        append_record(log_path, {"step": summary["steps"], "val_acc": row["val_acc"],
                                 "dev_acc": row["dev_acc"]})
        return row

    def finish(self, **extra) -> int:
        """Print the table and write runs/<name>/metrics.json (main process); end the run."""
        cleanup_distributed()
        if not self.run.is_main:
            return 0
        print(f"\nSST-2, GLUE dev set ({len(self.splits['test'])} sentences); trained on "
              f"{len(self.splits['train']):,} sentences, {self.args.max_steps} steps x "
              f"{self.run.world_size} process(es)\n{format_table(self.rows, CLASSIFIER_COLUMNS)}"
              "\n")
        path = write_metrics(self.run_dir, self.rows, self.args, base=str(self.args.base),
                             base_fingerprint=self.base_fingerprint,
                             train_size=len(self.splits["train"]),
                             processes=self.run.world_size, **extra)
        print(f"Saved {self.args.out}; results in {path}")
        return 0


def sst2_experiment(args: argparse.Namespace, run: Launch, base: GPTModel,
                    tokenizer: BPETokenizer) -> SST2Experiment:
    """SST-2, its batches for ``base``'s context window and, on the main process, the
    baselines' rows.

    Under torchrun each process gets its own share of the training batches (--batch-size is
    per process, so the global batch is batch size x processes); only the main process
    prints and computes the baselines.
    """
    splits = load_sst2_splits(args.data_dir, args.train_size, args.seed)
    if run.is_main:
        sizes = ", ".join(f"{name} {len(rows):,}" for name, rows in splits.items())
        print(f"Base {args.base}: {base.num_parameters() / 1e6:.2f} M parameters, context "
              f"{example_length(args, base)}; SST-2 sentences: {sizes} "
              f"(test = GLUE dev); device {run.device}"
              + (f"; {run.world_size} processes" if run.world_size > 1 else ""))
    loaders = sst2_loaders(splits, tokenizer, example_length(args, base), args.batch_size,
                           args.seed, args.group_by_length, rank=run.rank,
                           world_size=run.world_size)
    return SST2Experiment(args, run, weights_fingerprint(base.state_dict()), splits, loaders,
                          baseline_rows(splits) if run.is_main else [])


# ---------------------------------------------------------------------------- instruction runs


def instruction_report(args: argparse.Namespace, rows: list[dict], samples: list[dict],
                       started: float, steps: int, **metrics: Any) -> None:
    """Write runs/<name>/samples.jsonl and metrics.json; print the table (each row's held-out
    ``loss`` gets its perplexity), two answers before and after, and where it all went.

    ``samples`` are held-out records with the "base_answer" and "tuned_answer"; ``metrics``
    (with "heldout_examples" and "train_examples") go into metrics.json as given, followed
    by the wall time since ``started``."""
    run_dir = Path("runs") / args.run_name
    for row in rows:
        row["perplexity"] = math.exp(row["loss"])
    samples_path = write_jsonl(run_dir / "samples.jsonl", samples)
    metrics_path = write_metrics(run_dir, rows, args, **metrics,
                                 wall_time_s=round(time.perf_counter() - started, 1))
    print(f"\nHeld-out response tokens ({metrics['heldout_examples']} examples); trained on "
          f"{metrics['train_examples']:,} examples, {steps} steps\n"
          f"{format_table(rows, INSTRUCTION_COLUMNS)}\n")
    for s in samples[:2]:
        print(f"### Instruction: {s['instruction']}" +
              (f"\n### Input: {s['context']}" if s["context"] else "") +
              f"\n  reference: {s['reference']!r}\n  base:      {s['base_answer']!r}"
              f"\n  tuned:     {s['tuned_answer']!r}\n")
    print(f"Saved {args.out}; results in {metrics_path}, answers in {samples_path} "
          f"({time.perf_counter() - started:.0f} s in all)")
