"""Teach the pretrained GPT to follow instructions with QLoRA: a 4-bit base + LoRA adapters.

    python finetune_qlora_instructions.py                  # Dolly-15k subset: minutes on a CPU
    python finetune_qlora_instructions.py --data-file instruction-data-1100.jsonl
    python finetune_qlora_instructions.py --train-size all --backend bitsandbytes

The recipe, top to bottom in ``main``: load the base model from main.py; split the
instructions 95 / 5 (seeded) and encode them with the template of instructions.py (the loss
covers only the response); score the held-out 5 % with the dense base; quantize its linear
layers to 4-bit NF4 with double quantization (quantization.py, our code or bitsandbytes),
add LoRA adapters on top (lora.py) and freeze all but them (``instructions.make_qlora``,
the same three steps the adapters are loaded with); score again; train only the
adapters with ``training.train_model``; score once more, answer a few held-out instructions
and save the adapters with the base model's identity. Measuring and reporting live in
``QLoRABook`` below ``main``.

Reported: held-out response loss and perplexity of the base (fp32 and 4-bit, same template)
and of the tuned model, trainable parameters, wall time, the memory a step holds by kind
(weights, gradients, optimizer state, activations) and the measured peak, the bytes of the
quantized weights (fp32 vs NF4 vs NF4 + double quantization) and the quantization error.
runs/<run-name>/ gets metrics.jsonl (training curve), metrics.json (the summary) and
samples.jsonl (instruction, reference, base answer, tuned answer).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from checkpoint import weights_fingerprint
from finetuning import (
    SizeDefaults,
    add_instruction_args,
    check_args,
    example_length,
    instruction_report,
    load_instruction_splits,
    memory_before_training,
    parse_finetune_args,
    stop_if_interrupted,
    train_config,
)
from hf_gpt2 import load_base
from instructions import (
    answer_records,
    encode_examples,
    instruction_dataloader,
    make_qlora,
    response_loss,
    sample_records,
    save_instruction_adapters,
)
from lora import DEFAULT_TARGETS, count_parameters
from quantization import (
    BACKENDS,
    dense_weights,
    quantization_line,
    quantization_report,
)
from support.cli import FlagParser, run
from support.metrics import append_record
from support.runtime import Bookkeeping, Launch, cleanup_distributed, launch
from training import lm_loss, train_model

# LoRA on every linear layer (lora.DEFAULT_TARGETS)
DEFAULT_RANK, DEFAULT_ALPHA, DEFAULT_DROPOUT = 8, 16.0, 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    add_instruction_args(p, out="qlora_adapters.pth", run_name="qlora-instruct",
                         ours=SizeDefaults(lr=2e-3, batch_size=16),
                         gpt2=SizeDefaults(lr=5e-4, batch_size=8, max_length=256),
                         max_steps=300, train_size=2000, backends=BACKENDS,
                         rank=DEFAULT_RANK, alpha=DEFAULT_ALPHA,
                         dropout=DEFAULT_DROPOUT, samples=5, max_new_tokens=80)
    return parse_finetune_args(p, argv)


def main(argv: list[str] | None = None) -> int:
    """Load the base, quantize its linears to NF4, wrap them with LoRA, train, save."""
    args = parse_args(argv)
    check_args(args)
    started = time.perf_counter()  # the report's wall time
    run = launch(args.device)  # one process, or this process's share under torchrun
    torch.manual_seed(args.seed)
    base, tokenizer, _ = load_base(args.base)  # the pretrained GPT: main.py's, or GPT-2
    book = QLoRABook.open(args, run, base, tokenizer, started)  # data; the dense base's score

    # QLoRA (instructions.make_qlora, which the loader rebuilds with too): quantize the target
    # linears to frozen 4-bit NF4 -> wrap them with LoRA adapters -> freeze all but the adapters.
    model = make_qlora(base, args.backend, **book.lora)  # the settings the adapters are saved with

    book.before_training(model)  # bytes, error, memory; the 4-bit base's score and answers
    with book.peak:
        summary = train_model(run.wrap(model), book.train_loader, book.test_loader,
                              train_config(args), run.device, loss_fn=lm_loss,
                              is_main=run.is_main, bookkeeping=book.bookkeeping)
    cleanup_distributed()
    stop_if_interrupted(summary, args, "QLoRA", book.log_path)  # 130 / 143; --out left as it was
    if run.is_main:
        tuned_loss = book.after_training(model, summary)
        save_instruction_adapters(args.out, model, tokenizer,
                                  **book.adapter_metadata(summary, tuned_loss))
        book.report(summary, tuned_loss)
    return 0


class QLoRABook:
    """What ``main`` measures and writes around the idea: the data and its loaders, the
    held-out scores before and after, the bytes and error of the 4-bit weights, the memory a
    step holds, metrics.jsonl, metrics.json, samples.jsonl and the printed table."""

    def __init__(self, args: argparse.Namespace, run: Launch, tokenizer, splits: dict,
                 ctx: int, loaders: tuple, facts: dict, started: float):
        self.args, self.run, self.tokenizer = args, run, tokenizer
        self.splits, self.ctx = splits, ctx
        self.train_loader, self.test_loader = loaders
        self.facts, self.started = facts, started
        self.log_path = Path("runs") / args.run_name / "metrics.jsonl"
        self.bookkeeping = Bookkeeping(log_path=self.log_path, desc="qlora")
        self.lora = {"r": args.rank, "alpha": args.alpha, "dropout": args.dropout,
                     "targets": list(DEFAULT_TARGETS)}

    @classmethod
    def open(cls, args: argparse.Namespace, run: Launch, base: nn.Module, tokenizer,
             started: float) -> QLoRABook:
        """Split and encode the instructions; move ``base`` to the device and score it."""
        facts = {"base_fingerprint": weights_fingerprint(base.state_dict())}
        ctx = example_length(args, base)
        splits = load_instruction_splits(args)
        train, facts["train_stats"] = encode_examples(splits["train"], tokenizer, ctx)
        test, facts["test_stats"] = encode_examples(splits["test"], tokenizer, ctx)
        if run.is_main:  # only the main process reports
            print(f"Base {args.base}: {base.num_parameters() / 1e6:.2f} M parameters, context "
                  f"{ctx}; device {run.device}"
                  + (f"; {run.world_size} processes" if run.world_size > 1 else "")
                  + f"\nTrain: {facts['train_stats'].summary()}\n"
                  f"Held-out: {facts['test_stats'].summary()}")
        loaders = (instruction_dataloader(train, args.batch_size, tokenizer.eot_id, shuffle=True,
                                          seed=args.seed, rank=run.rank,
                                          world_size=run.world_size),
                   instruction_dataloader(test, 2 * args.batch_size, tokenizer.eot_id,
                                          shuffle=False))
        # The reference: the dense base with the same template and held-out tokens (main only).
        base.to(run.device)
        facts["dense"] = dense_weights(base) if run.is_main else {}
        facts["dense_loss"] = response_loss(base, loaders[1]) if run.is_main else math.nan
        return cls(args, run, tokenizer, splits, ctx, loaders, facts, started)

    def before_training(self, model: nn.Module) -> None:
        """Measure the quantized model and score the 4-bit base (fresh adapters change
        nothing: B = 0); start a fresh log; ``self.peak`` is ready to measure training."""
        args, facts = self.args, self.facts
        # The fp32 copy of the quantized weights serves only this report: popped, so it does
        # not stay in memory through training.
        facts.update(quantization_report(model, facts.pop("dense")))
        facts["trainable"], facts["total"] = trainable, total = count_parameters(model)
        # What a step holds, by kind, counted exactly at the largest batch (memory.py).
        facts["memory"], self.peak = memory_before_training(model, lm_loss, args, self.ctx,
                                                            self.run.device, labelled=False)
        if self.run.is_main:
            print(quantization_line(args.backend, facts))
            print(f"LoRA r={args.rank} alpha={args.alpha:g} on {' '.join(DEFAULT_TARGETS)}: "
                  f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f} %)")
            facts["nf4_loss"] = response_loss(model, self.test_loader)
            facts["shown"] = sample_records(self.splits["test"], self.tokenizer, self.ctx,
                                            args.samples)
            facts["base_answers"] = answer_records(model, self.tokenizer, facts["shown"],
                                                   args.max_new_tokens, args.seed)
            self.log_path.unlink(missing_ok=True)  # a fresh run, a fresh log

    def after_training(self, model: nn.Module, summary: dict) -> float:
        """Score the tuned model and answer the shown instructions; log the score."""
        tuned_loss = response_loss(model, self.test_loader)
        self.facts["tuned_answers"] = answer_records(model, self.tokenizer, self.facts["shown"],
                                                     self.args.max_new_tokens, self.args.seed)
        append_record(self.log_path, {"step": summary["steps"],
                                      "heldout_response_loss": tuned_loss,
                                      "base_response_loss": self.facts["nf4_loss"]})
        return tuned_loss

    def adapter_metadata(self, summary: dict, tuned_loss: float) -> dict:
        """What save_instruction_adapters records beside the adapters."""
        args = self.args
        return dict(base_path=args.base, base_fingerprint=self.facts["base_fingerprint"],
                    backend=args.backend, lora=self.lora, run_name=args.run_name,
                    steps=summary["steps"], data=str(args.data_file or "databricks-dolly-15k"),
                    train_examples=self.facts["train_stats"].kept, heldout_loss=tuned_loss,
                    base_heldout_loss=self.facts["nf4_loss"])

    def report(self, summary: dict, tuned_loss: float) -> None:
        """The results table, samples.jsonl and metrics.json (finetuning.instruction_report)."""
        args, facts = self.args, self.facts
        rows = [
            {"model": "base, fp32", "loss": facts["dense_loss"]},
            {"model": f"base, NF4+DQ ({args.backend})", "loss": facts["nf4_loss"]},
            {"model": f"QLoRA r={args.rank} ({args.backend})", "loss": tuned_loss,
             "trainable": facts["trainable"], "total": facts["total"],
             "train_time_s": round(summary["elapsed"], 1), "memory": facts["memory"],
             "peak_mem_mb": round(self.peak.mb, 1), "peak_mem_source": self.peak.source,
             **{key: summary[key] for key in ("steps", "train_loss", "dtype", "interrupted")}},
        ]
        samples = [{"instruction": r["instruction"], "context": r["context"],
                    "reference": r["response"], "base_answer": b, "tuned_answer": a}
                   for r, b, a in zip(facts["shown"], facts["base_answers"],
                                      facts["tuned_answers"], strict=True)]
        instruction_report(
            args, rows, samples, self.started, summary["steps"], base=str(args.base),
            base_fingerprint=facts["base_fingerprint"], backend=args.backend, lora=self.lora,
            quantized_bytes=facts["quantized_bytes"],
            quantization_error=facts["quantization_error"],
            encoding={"train": facts["train_stats"].to_dict(),
                      "heldout": facts["test_stats"].to_dict()},
            heldout_examples=facts["test_stats"].kept, train_examples=facts["train_stats"].kept)


if __name__ == "__main__":
    run(main)
