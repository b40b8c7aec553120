"""Finetune every weight of the pretrained GPT as an SST-2 sentiment classifier.

    python finetune_classifier.py                     # CPU defaults: a few minutes
    python finetune_classifier.py --train-size all --max-steps 4000
    python finetune_classifier.py --skip-random-init  # only the pretrained run

The classifier is the GPT body plus a linear head on the last token (classifier.py). Every
weight trains. For context the same run also trains:

- the same classifier from random weights, with the same data, steps and learning rate, so
  the table shows what pretraining buys (``--skip-random-init`` leaves it out);
- a TF-IDF (unigrams + bigrams) logistic regression on the same training sentences, and the
  majority class: what a bag of words and a constant reach.

Everything is scored on the GLUE dev set, which is never trained, tuned or selected on. The
table is printed and written to runs/<run-name>/metrics.json; the training curves go to
runs/<run-name>/metrics.jsonl (runs/<run-name>-random-init/ for the random-init run).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from checkpoint import CheckpointError, weights_fingerprint
from classifier import GPTClassifier, save_classifier
from data_utils import DataMissingError
from finetuning import (
    add_common_args,
    baseline_rows,
    check_args,
    checkpoint_row,
    describe_setup,
    finetune,
    load_base,
    load_sst2_splits,
    make_loaders,
    print_table,
    write_metrics,
)
from model import GPTModel
from training import pick_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, out="classifier.pth", run_name="classifier", lr=5e-4)
    p.add_argument("--skip-random-init", action="store_true",
                   help="do not also train the classifier from random weights")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    device = pick_device(args.device)
    run_dir = Path("runs") / args.run_name
    base, tokenizer, _ = load_base(args.base)
    base_fingerprint = weights_fingerprint(base.state_dict())
    splits = load_sst2_splits(args.data_dir, args.train_size, args.seed)
    describe_setup(args.base, base, device, splits)
    loaders = make_loaders(splits, tokenizer, base.config.context_length, args.batch_size,
                           args.seed, args.group_by_length)
    rows = baseline_rows(splits)

    torch.manual_seed(args.seed)
    model = GPTClassifier(base)
    row = finetune(model, loaders, args, device, "full finetune (pretrained)",
                   run_dir / "metrics.jsonl")
    save_classifier(args.out, model, tokenizer, base_path=str(args.base),
                    base_fingerprint=base_fingerprint, run_name=args.run_name,
                    dev_acc=row["dev_acc"], val_acc=row["val_acc"], train_size=len(splits["train"]),
                    steps=row["steps"])
    rows.append(checkpoint_row(row, args.out))

    if not args.skip_random_init:
        torch.manual_seed(args.seed)
        scratch = GPTClassifier(GPTModel(base.config))
        rows.append(finetune(scratch, loaders, args, device, "full finetune (random init)",
                             Path("runs") / f"{args.run_name}-random-init" / "metrics.jsonl"))

    print_table(rows, f"SST-2, GLUE dev set ({len(splits['test'])} sentences); "
                f"trained on {len(splits['train']):,} sentences, {args.max_steps} steps")
    path = write_metrics(run_dir, rows, args, base=str(args.base),
                         base_fingerprint=base_fingerprint, train_size=len(splits["train"]))
    print(f"Saved {args.out}; results in {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (DataMissingError, CheckpointError, FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
