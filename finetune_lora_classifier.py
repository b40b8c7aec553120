"""Finetune the pretrained GPT as an SST-2 sentiment classifier with LoRA.

    python finetune_lora_classifier.py                      # CPU defaults: a few minutes
    python finetune_lora_classifier.py --rank 8 --targets qkv out_proj fc_in fc_out

The same task, data and loop as finetune_classifier.py, but the pretrained weights stay
frozen: only the low-rank adapters (lora.py) on the chosen linear layers and the classifier
head train, under 1 % of the parameters with the defaults on the CPU preset model. The
checkpoint holds just those tensors plus the base model's fingerprint and path, so it is
small and refuses to load on top of a different base.

Results are scored on the GLUE dev set and printed in one table with the baselines and, if
finetune_classifier.py has been run on the same base model (--compare), its full-finetuning
rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from classifier import GPTClassifier, save_lora_classifier
from finetuning import add_classifier_args, checkpoint_row, prepare
from lora import DEFAULT_TARGETS, apply_lora, count_parameters, freeze_all_but_lora
from support.cli import run

# Rank 2 on the attention projections: 0.68 % of the CPU preset model (4 x 128) trains,
# 6,402 of 947,202 parameters.
DEFAULT_RANK, DEFAULT_ALPHA, DEFAULT_LORA_TARGETS = 2, 4.0, ("qkv", "out_proj")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_classifier_args(p, out="lora_classifier.pth", run_name="lora-classifier", lr=2e-3)
    p.add_argument("--rank", type=int, default=DEFAULT_RANK, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help="LoRA alpha: the update is scaled by alpha / r")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout on the adapter input")
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_LORA_TARGETS),
                   help=f"linear layers to adapt, any of {' '.join(DEFAULT_TARGETS)}")
    p.add_argument("--compare", default="runs/classifier/metrics.json",
                   help="add the model rows of this finetune_classifier.py result if it exists")
    return p.parse_args(argv)


def add_lora(model: GPTClassifier, args: argparse.Namespace) -> dict:
    """Wrap the target layers, freeze everything but adapters and head; the LoRA settings."""
    unknown = set(args.targets) - set(DEFAULT_TARGETS)
    if unknown:
        raise ValueError(f"Unknown --targets {sorted(unknown)}; "
                         f"choose from {' '.join(DEFAULT_TARGETS)}.")
    settings = {"r": args.rank, "alpha": args.alpha, "dropout": args.dropout,
                "targets": list(args.targets)}
    apply_lora(model.gpt, **settings)
    freeze_all_but_lora(model, trainable_extra=("head",))
    return settings


def compared_rows(path: str | Path, base_fingerprint: str) -> list[dict]:
    """The finetuned-model rows of an earlier finetune_classifier.py run on the same base
    model (``base_fingerprint``), if there is one: on another base they compare nothing."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
        rows = result["rows"]
    except (json.JSONDecodeError, KeyError, TypeError):
        print(f"note: {path} is not a finetune_classifier.py result; not compared.")
        return []
    if result.get("base_fingerprint") != base_fingerprint:
        print(f"note: {path} was trained on a different base model (its base_fingerprint "
              "differs); not compared.")
        return []
    return [{**row, "model": f"{row['model']} [{path.parent.name}]"}
            for row in rows if row.get("total")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exp = prepare(args)  # flags checked, base model, SST-2, loaders, baseline rows

    torch.manual_seed(args.seed)
    model = GPTClassifier(exp.base)
    lora = add_lora(model, args)
    trainable, total = count_parameters(model)
    if exp.run.is_main:
        print(f"LoRA r={args.rank} alpha={args.alpha:g} on {' '.join(args.targets)}: "
              f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f} %)")
    name = f"LoRA r={args.rank} ({'+'.join(args.targets)})"
    row = exp.finetune(model, name, exp.run_dir / "metrics.jsonl")
    if exp.run.is_main:
        save_lora_classifier(args.out, model, exp.tokenizer, base_path=args.base,
                             base_fingerprint=exp.base_fingerprint, lora=lora,
                             run_name=args.run_name, dev_acc=row["dev_acc"],
                             val_acc=row["val_acc"], train_size=len(exp.splits["train"]),
                             steps=row["steps"])
        exp.rows.append(checkpoint_row(row, args.out))
        exp.rows += compared_rows(args.compare, exp.base_fingerprint)
    return exp.finish(lora=lora)


if __name__ == "__main__":
    run(main)
