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
from pathlib import Path

import torch

from classifier import GPTClassifier, save_classifier
from finetuning import add_classifier_args, checkpoint_row, prepare
from model import GPTModel
from support.cli import run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_classifier_args(p, out="classifier.pth", run_name="classifier", lr=5e-4)
    p.add_argument("--skip-random-init", action="store_true",
                   help="do not also train the classifier from random weights")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exp = prepare(args)  # flags checked, base model, SST-2, loaders, baseline rows

    torch.manual_seed(args.seed)
    model = GPTClassifier(exp.base)
    row = exp.finetune(model, "full finetune (pretrained)", exp.run_dir / "metrics.jsonl")
    if exp.run.is_main:
        save_classifier(args.out, model, exp.tokenizer, base_path=str(args.base),
                        base_fingerprint=exp.base_fingerprint, run_name=args.run_name,
                        dev_acc=row["dev_acc"], val_acc=row["val_acc"],
                        train_size=len(exp.splits["train"]), steps=row["steps"])
        exp.rows.append(checkpoint_row(row, args.out))

    if row is not None and row["interrupted"]:  # one Ctrl-C stops the script, not one run
        print("note: the random-init run is skipped.")
    elif not args.skip_random_init:  # the same recipe from random weights: what pretraining buys
        torch.manual_seed(args.seed)
        scratch = GPTClassifier(GPTModel(exp.base.config))
        row = exp.finetune(scratch, "full finetune (random init)",
                           Path("runs") / f"{args.run_name}-random-init" / "metrics.jsonl")
        exp.rows += [row] if row else []
    return exp.finish()


if __name__ == "__main__":
    run(main)
