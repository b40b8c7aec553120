"""Teach the pretrained GPT to follow instructions with QLoRA: a 4-bit base + LoRA adapters.

    python finetune_qlora_instructions.py                  # Dolly-15k subset: minutes on a CPU
    python finetune_qlora_instructions.py --data-file ../shared/data/instruction-data-1100.jsonl
    python finetune_qlora_instructions.py --train-size all --backend bitsandbytes

Steps: load the base model from main.py; split the instructions 95 / 5 (seeded) and encode
them with the template of instructions.py (the loss covers only the response); score the
held-out 5 % with the dense base; quantize its linear layers to NF4 with double quantization
(quantization.py, our code or bitsandbytes) and add LoRA adapters (lora.py); score again;
train only the adapters; score once more, answer a few held-out instructions and save the
adapters with the base model's identity.

Reported: held-out response loss and perplexity of the base (fp32 and 4-bit, same template)
and of the tuned model, trainable parameters, wall time, peak memory, the bytes of the
quantized weights (fp32 vs NF4 vs NF4 + double quantization) and the quantization error.
runs/<run-name>/ gets metrics.jsonl (training curve), metrics.json (the summary) and
samples.jsonl (instruction, reference, base answer, tuned answer).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn as nn

from checkpoint import weights_fingerprint
from data_utils import INSTRUCTIONS_1100, DataMissingError, load_instructions
from finetuning import (
    PeakMemory,
    add_common_args,
    check_args,
    load_base,
    train_config,
    warm_up_optimizer,
    write_metrics,
)
from instructions import (
    answer,
    encode_examples,
    format_prompt,
    instruction_dataloader,
    make_qlora,
    response_loss,
    save_instruction_adapters,
)
from lora import DEFAULT_TARGETS, count_parameters
from quantization import BACKENDS, dequantized_weight, quantized_nbytes
from support.cli import run
from training import cleanup_distributed, launch, lm_loss, train_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(p, out="qlora_adapters.pth", run_name="qlora-instruct", lr=2e-3,
                    max_steps=300, train_size=2000, batch_size=16,
                    train_size_help="training instructions, seeded subsample of the data "
                    "file's 95 %% train split")
    p.add_argument("--data-file", default=None,
                   help="any Dolly-schema JSONL (default: databricks-dolly-15k.jsonl from the "
                   f"data folder): a path, or the name of a file in the data folder, e.g. "
                   f"{INSTRUCTIONS_1100}")
    p.add_argument("--backend", choices=BACKENDS, default="scratch",
                   help="NF4 implementation: ours (quantization.py) or bitsandbytes")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16.0,
                   help="LoRA alpha: the update is scaled by alpha / r")
    p.add_argument("--dropout", type=float, default=0.05, help="dropout on the adapter input")
    p.add_argument("--samples", type=int, default=5, help="held-out instructions to answer")
    p.add_argument("--max-new-tokens", type=int, default=80, help="length limit of an answer")
    return p.parse_args(argv)


def check_qlora_args(args: argparse.Namespace) -> None:
    """One clear sentence for a QLoRA flag value that would fail later in a confusing way."""
    if args.rank < 1:
        raise ValueError(f"--rank must be at least 1, got {args.rank}.")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}.")
    if args.samples < 0 or args.max_new_tokens < 1:
        raise ValueError("--samples must be >= 0 and --max-new-tokens >= 1.")


def load_splits(args: argparse.Namespace) -> dict[str, list[dict]]:
    """The fixed 95 / 5 split, train cut to a seeded --train-size sample (0: all of it).

    The split keeps load_instructions' own seed, not --seed: it is the split the tokenizer
    corpus leaves the test records out of (as SST-2's is), so they stay unseen whatever --seed.
    """
    try:
        splits = load_instructions(args.data_file, args.data_dir)
    except DataMissingError as err:
        if args.data_file is not None:
            raise
        raise DataMissingError(f"{err} This script takes such a file as --data-file (a path, "
                               f"or the name of a file in the data folder), e.g. "
                               f"--data-file {INSTRUCTIONS_1100}.") from None
    if 0 < args.train_size < len(splits["train"]):
        splits["train"] = random.Random(args.seed).sample(splits["train"], args.train_size)
    return splits


def quantization_error(dense: dict[str, torch.Tensor], model: nn.Module) -> float:
    """||W - dequant(quant(W))|| / ||W|| over all quantized weights (Frobenius norms)."""
    err = ref = 0.0
    for name, weight in dense.items():
        diff = dequantized_weight(model.get_submodule(name)).cpu() - weight
        err += diff.pow(2).sum().item()
        ref += weight.pow(2).sum().item()
    return math.sqrt(err / ref)


def sample_records(records: list[dict], tokenizer, context_length: int, n: int) -> list[dict]:
    """The first n held-out records whose prompt leaves at least half the window to answer."""
    fits = (r for r in records if len(tokenizer.encode(
        format_prompt(r["instruction"], r["context"]))) <= context_length // 2)
    return list(itertools.islice(fits, n))


def answer_samples(model: nn.Module, tokenizer, records: list[dict], args) -> list[str]:
    return [answer(model, tokenizer, r["instruction"], r["context"],
                   max_new_tokens=args.max_new_tokens, seed=args.seed) for r in records]


def format_table(rows: list[dict]) -> str:
    header = ("model", "held-out loss", "perplexity", "trainable", "share", "train time",
              "peak mem")
    lines = [(r["model"], f"{r['loss']:.3f}", f"{math.exp(r['loss']):.1f}",
              f"{r['trainable']:,}" if "trainable" in r else "-",
              f"{100 * r['trainable'] / r['total']:.2f} %" if "trainable" in r else "-",
              f"{r['train_time_s']:.0f} s" if "train_time_s" in r else "-",
              f"{r['peak_mem_mb']:.0f} MB" if "peak_mem_mb" in r else "-") for r in rows]
    widths = [max(len(c) for c in col) for col in zip(header, *lines, strict=True)]
    out = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(line, widths, strict=True)))
           for line in (header, *lines)]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    check_qlora_args(args)
    started = time.perf_counter()
    run = launch(args.device)  # under torchrun: this process's rank and its own device
    device = run.device
    run_dir = Path("runs") / args.run_name
    torch.manual_seed(args.seed)

    base, tokenizer, _ = load_base(args.base)  # missing: "run python main.py first"
    base_fingerprint = weights_fingerprint(base.state_dict())
    ctx = base.config.context_length
    splits = load_splits(args)
    train, train_stats = encode_examples(splits["train"], tokenizer, ctx)
    test, test_stats = encode_examples(splits["test"], tokenizer, ctx)
    say = print if run.is_main else lambda *_: None  # only the main process reports
    say(f"Base {args.base}: {base.num_parameters() / 1e6:.2f} M parameters, context {ctx}; "
        f"device {device}" + (f"; {run.world_size} processes" if run.world_size > 1 else "")
        + f"\nTrain: {train_stats.summary()}\nHeld-out: {test_stats.summary()}")
    train_loader = instruction_dataloader(train, args.batch_size, tokenizer.eot_id,
                                          shuffle=True, seed=args.seed, rank=run.rank,
                                          world_size=run.world_size)
    test_loader = instruction_dataloader(test, 2 * args.batch_size, tokenizer.eot_id,
                                         shuffle=False)

    # The reference: the pretrained model, dense, with the same template and held-out tokens.
    # Only the main process reports, so only it measures the reference.
    base = base.to(device)
    dense_loss, dense = math.nan, {}
    if run.is_main:
        dense_loss = response_loss(base, test_loader)
        dense = {name: m.weight.detach().float().cpu().clone() for name, m in
                 base.named_modules()
                 if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS}

    lora = {"r": args.rank, "alpha": args.alpha, "dropout": args.dropout,
            "targets": list(DEFAULT_TARGETS)}
    model = make_qlora(base, args.backend, **lora)
    nbytes = quantized_nbytes(model)
    q_error = quantization_error(dense, model) if dense else math.nan
    trainable, total = count_parameters(model)
    say(f"NF4 ({args.backend}) on {nbytes['layers']} linear layers, {nbytes['params']:,} "
          f"weights: fp32 {nbytes['fp32'] / 2**20:.2f} MB -> NF4 {nbytes['nf4'] / 2**20:.2f} MB "
          f"-> NF4+DQ {nbytes['nf4_dq'] / 2**20:.2f} MB ({nbytes['nf4_dq'] / nbytes['fp32']:.3f}"
          f" x fp32, {8 * nbytes['nf4_dq'] / nbytes['params']:.3f} bits/weight); relative "
          f"weight error {q_error:.4f}")
    say(f"LoRA r={args.rank} alpha={args.alpha:g} on {' '.join(DEFAULT_TARGETS)}: "
        f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f} %)")

    log_path = run_dir / "metrics.jsonl"
    if run.is_main:
        # Fresh adapters change nothing (B = 0), so this is the 4-bit base model's score.
        nf4_loss = response_loss(model, test_loader)
        shown = sample_records(splits["test"], tokenizer, ctx, args.samples)
        base_answers = answer_samples(model, tokenizer, shown, args)
        log_path.unlink(missing_ok=True)  # a fresh run, a fresh log
    warm_up_optimizer()  # measured as finetuning.finetune measures: no one-time import
    with PeakMemory(device) as memory:
        summary = train_model(run.wrap(model), train_loader, test_loader, train_config(args),
                              device, loss_fn=lm_loss, log_path=log_path, is_main=run.is_main,
                              desc="qlora")
    cleanup_distributed()
    if not run.is_main:
        return 0
    if summary["interrupted"]:
        print(f"note: QLoRA was stopped early, at step {summary['steps']}.")
    tuned_loss = response_loss(model, test_loader)
    tuned_answers = answer_samples(model, tokenizer, shown, args)
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": summary["steps"], "heldout_response_loss": tuned_loss,
                            "base_response_loss": nf4_loss}) + "\n")

    save_instruction_adapters(
        args.out, model, tokenizer, base_path=args.base, base_fingerprint=base_fingerprint,
        backend=args.backend, lora=lora, run_name=args.run_name, steps=summary["steps"],
        data=str(args.data_file or "databricks-dolly-15k"), train_examples=len(train),
        heldout_loss=tuned_loss, base_heldout_loss=nf4_loss)

    rows = [
        {"model": "base, fp32", "loss": dense_loss},
        {"model": f"base, NF4+DQ ({args.backend})", "loss": nf4_loss},
        {"model": f"QLoRA r={args.rank} ({args.backend})", "loss": tuned_loss,
         "trainable": trainable, "total": total, "train_time_s": round(summary["elapsed"], 1),
         "peak_mem_mb": round(memory.mb, 1), "steps": summary["steps"],
         "train_loss": summary["train_loss"], "dtype": summary["dtype"],
         "interrupted": summary["interrupted"]},
    ]
    for row in rows:
        row["perplexity"] = math.exp(row["loss"])
    samples_path = run_dir / "samples.jsonl"
    with open(samples_path, "w", encoding="utf-8") as f:
        for record, before, after in zip(shown, base_answers, tuned_answers, strict=True):
            f.write(json.dumps({"instruction": record["instruction"],
                                "context": record["context"], "reference": record["response"],
                                "base_answer": before, "tuned_answer": after},
                               ensure_ascii=False) + "\n")
    metrics_path = write_metrics(
        run_dir, rows, args, base=str(args.base), base_fingerprint=base_fingerprint,
        backend=args.backend, lora=lora, quantized_bytes=nbytes, quantization_error=q_error,
        encoding={"train": train_stats.to_dict(), "heldout": test_stats.to_dict()},
        heldout_examples=len(test), train_examples=len(train),
        wall_time_s=round(time.perf_counter() - started, 1))

    print(f"\nHeld-out response tokens ({len(test)} examples); trained on {len(train):,} "
          f"examples, {summary['steps']} steps\n{format_table(rows)}\n")
    for record, before, after in zip(shown[:2], base_answers, tuned_answers, strict=False):
        print(f"### Instruction: {record['instruction']}" +
              (f"\n### Input: {record['context']}" if record["context"] else "") +
              f"\n  reference: {record['response']!r}\n  base:      {before!r}"
              f"\n  tuned:     {after!r}\n")
    print(f"Saved {args.out}; results in {metrics_path}, answers in {samples_path} "
          f"({time.perf_counter() - started:.0f} s in all)")
    return 0


if __name__ == "__main__":
    run(main)
