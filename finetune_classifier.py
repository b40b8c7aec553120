"""Finetune every weight of the pretrained GPT as an SST-2 sentiment classifier.

    python finetune_classifier.py                     # CPU defaults: a few minutes
    python finetune_classifier.py --train-size all --max-steps 4000
    python finetune_classifier.py --skip-random-init  # only the pretrained run

The recipe, top to bottom in ``main``: load the pretrained GPT of main.py; replace its language
model head (hidden state -> next-token logits over the vocabulary) by a classifier head
(hidden state of the last token -> two logits, negative and positive: classifier.py's
``GPTClassifier``); train every weight with ``training.train_model`` and a cross-entropy loss
on the class logits; score the GLUE dev set; save. For context the same run also trains:

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

from classifier import GPTClassifier, classification_loss, save_classifier
from finetuning import (
    SizeDefaults,
    SST2Experiment,
    add_classifier_args,
    check_args,
    example_length,
    memory_before_training,
    parse_finetune_args,
    sst2_experiment,
    train_config,
)
from hf_gpt2 import load_base
from lora import count_parameters
from model import GPTModel
from support.cli import FlagParser, run
from support.metrics import checkpoint_row
from support.runtime import Bookkeeping, launch
from training import train_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    add_classifier_args(p, out="classifier.pth", run_name="classifier",
                        ours=SizeDefaults(lr=5e-4, batch_size=32),
                        gpt2=SizeDefaults(lr=5e-5, batch_size=8, max_length=128))
    p.add_argument("--skip-random-init", action="store_true",
                   help="do not also train the classifier from random weights")
    return parse_finetune_args(p, argv)


def finetune(model: GPTClassifier, name: str, sst2: SST2Experiment, log_path: Path
             ) -> dict | None:
    """Train ``model``'s trainable weights on SST-2's sentences; its row of the results table.

    The loop is pretraining's (``train_model``); only the loss differs: cross-entropy of the
    two class logits instead of next-token logits. Under torchrun every process trains
    (DistributedDataParallel) and only the main one scores: the others get None.
    """
    device = sst2.run.device
    sst2.fresh_log(log_path)
    model.to(device)
    parameters = count_parameters(model)  # (trainable, total)
    # What a step holds, by kind, counted exactly at the largest batch (memory.py).
    memory, peak = memory_before_training(model, classification_loss, sst2.args,
                                          example_length(sst2.args, model.gpt), device,
                                          labelled=True)
    with peak:
        summary = train_model(sst2.run.wrap(model), sst2.loaders["train"], sst2.loaders["val"],
                              train_config(sst2.args), device, loss_fn=classification_loss,
                              is_main=sst2.run.is_main,
                              bookkeeping=Bookkeeping(log_path=log_path, desc=name))
    return sst2.score(model, name, summary, peak, memory, parameters, log_path)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    run = launch(args.device)  # one process, or this process's share under torchrun
    base, tokenizer, _ = load_base(args.base)  # the pretrained GPT: main.py's, or GPT-2
    sst2 = sst2_experiment(args, run, base, tokenizer)  # sentences -> batches; baseline rows

    # The GPT body with a new head: Linear(n_embd, 2) on the last token's hidden state.
    torch.manual_seed(args.seed)
    model = GPTClassifier(base)
    row = finetune(model, "full finetune (pretrained)", sst2, sst2.run_dir / "metrics.jsonl")
    if run.is_main:
        save_classifier(args.out, model, tokenizer, base_path=str(args.base),
                        base_fingerprint=sst2.base_fingerprint, run_name=args.run_name,
                        dev_acc=row["dev_acc"], val_acc=row["val_acc"],
                        train_size=len(sst2.splits["train"]), steps=row["steps"])
        sst2.rows.append(checkpoint_row(row, args.out))

    if not args.skip_random_init:  # the same recipe from random weights: what pretraining buys
        torch.manual_seed(args.seed)
        scratch = GPTClassifier(GPTModel(base.config))
        row = finetune(scratch, "full finetune (random init)", sst2,
                       Path("runs") / f"{args.run_name}-random-init" / "metrics.jsonl")
        sst2.rows += [row] if row else []
    return sst2.finish()


if __name__ == "__main__":
    run(main)
