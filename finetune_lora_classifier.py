"""Finetune the pretrained GPT as an SST-2 sentiment classifier with LoRA.

    python finetune_lora_classifier.py                      # CPU defaults: a few minutes
    python finetune_lora_classifier.py --rank 8 --targets qkv out_proj fc_in fc_out

The same task, data and loop as finetune_classifier.py (its ``finetune``), but the pretrained
weights stay frozen: each chosen linear layer W is wrapped as W x + (alpha / r) B A x with a
low-rank pair A, B (lora.py's ``apply_lora``; B starts at zero, so training starts from the
pretrained model exactly), and only A, B and the classifier head train
(``freeze_all_but_lora``): under 1 % of the parameters with the defaults on the CPU preset
model. The checkpoint holds just those tensors plus the base model's fingerprint and path, so
it is small and refuses to load on top of a different base.

Results are scored on the GLUE dev set and printed in one table with the baselines and, if
finetune_classifier.py has been run on the same base model (--compare), its full-finetuning
rows.
"""

from __future__ import annotations

import argparse

import torch

from classifier import GPTClassifier, save_lora_classifier
from finetune_classifier import finetune
from finetuning import (
    SizeDefaults,
    add_classifier_args,
    add_lora_args,
    check_args,
    parse_finetune_args,
    sst2_experiment,
)
from hf_gpt2 import load_base
from lora import DEFAULT_TARGETS, apply_lora, count_parameters, freeze_all_but_lora
from support.cli import FlagParser, path_arg, run
from support.metrics import checkpoint_row, compared_rows
from support.runtime import launch

# Rank 2 on the attention projections: 0.68 % of the CPU preset model (4 x 128) trains,
# 6,402 of 947,202 parameters.
DEFAULT_RANK, DEFAULT_ALPHA, DEFAULT_LORA_TARGETS = 2, 4.0, ("qkv", "out_proj")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    add_classifier_args(p, out="lora_classifier.pth", run_name="lora-classifier",
                        ours=SizeDefaults(lr=2e-3, batch_size=32),
                        gpt2=SizeDefaults(lr=5e-4, batch_size=8, max_length=128))
    add_lora_args(p, rank=DEFAULT_RANK, alpha=DEFAULT_ALPHA, dropout=0.0)
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_LORA_TARGETS),
                   choices=DEFAULT_TARGETS, help="linear layers to adapt")
    p.add_argument("--compare", type=path_arg, default="runs/classifier/metrics.json",
                   help="add the model rows of this finetune_classifier.py result if it exists")
    return parse_finetune_args(p, argv)


def add_lora(model: GPTClassifier, args: argparse.Namespace) -> dict:
    """Wrap the target layers, freeze everything but adapters and head; the LoRA settings."""
    settings = {"r": args.rank, "alpha": args.alpha, "dropout": args.dropout,
                "targets": list(args.targets)}
    apply_lora(model.gpt, **settings)  # W x + (alpha / r) B A x, with B = 0 at first
    freeze_all_but_lora(model, trainable_extra=("head",))  # the new head must learn too
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    run = launch(args.device)  # one process, or this process's share under torchrun
    base, tokenizer, _ = load_base(args.base)  # the pretrained GPT: main.py's, or GPT-2
    sst2 = sst2_experiment(args, run, base, tokenizer)  # sentences -> batches; baseline rows

    torch.manual_seed(args.seed)
    model = GPTClassifier(base)  # as in finetune_classifier.py, then frozen and wrapped:
    lora = add_lora(model, args)
    trainable, total = count_parameters(model)
    if run.is_main:
        print(f"LoRA r={args.rank} alpha={args.alpha:g} on {' '.join(args.targets)}: "
              f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f} %)")
    name = f"LoRA r={args.rank} ({'+'.join(args.targets)})"
    row = finetune(model, name, sst2, sst2.run_dir / "metrics.jsonl")
    if run.is_main:  # only the adapters and the head are saved, with the base's identity
        save_lora_classifier(args.out, model, tokenizer, base_path=args.base,
                             base_fingerprint=sst2.base_fingerprint, lora=lora,
                             run_name=args.run_name, dev_acc=row["dev_acc"],
                             val_acc=row["val_acc"], train_size=len(sst2.splits["train"]),
                             steps=row["steps"])
        sst2.rows.append(checkpoint_row(row, args.out))
        sst2.rows += compared_rows(args.compare, sst2.base_fingerprint)
    return sst2.finish(lora=lora)


if __name__ == "__main__":
    run(main)
