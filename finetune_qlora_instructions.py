"""Teach the pretrained GPT to follow instructions with QLoRA: a 4-bit base + LoRA adapters.

    python finetune_qlora_instructions.py                  # Dolly-15k subset: minutes on a CPU
    python finetune_qlora_instructions.py --data-file instruction-data-1100.jsonl
    python finetune_qlora_instructions.py --train-size all --backend bitsandbytes

The recipe, top to bottom in ``main``: load the base model from main.py; split the
instructions 95 / 5 (seeded) and encode them with the template of instructions.py (the loss
covers only the response); score the held-out 5 % with the dense base; quantize its linear
layers to 4-bit NF4 with double quantization (quantization.py, our code or bitsandbytes) and
add LoRA adapters on top (lora.py): ``instructions.make_qlora``; score again; train only the
adapters with ``training.train_model``; score once more, answer a few held-out instructions
and save the adapters with the base model's identity.

Reported: held-out response loss and perplexity of the base (fp32 and 4-bit, same template)
and of the tuned model, trainable parameters, wall time, the memory a step holds by kind
(weights, gradients, optimizer state, activations) and the measured peak, the bytes of the
quantized weights (fp32 vs NF4 vs NF4 + double quantization) and the quantization error.
runs/<run-name>/ gets metrics.jsonl (training curve), metrics.json (the summary) and
samples.jsonl (instruction, reference, base answer, tuned answer).
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from checkpoint import weights_fingerprint
from data_utils import INSTRUCTIONS_1100
from finetuning import (
    SizeDefaults,
    add_common_args,
    check_args,
    example_length,
    load_instruction_splits,
    memory_at_full_batch,
    parse_finetune_args,
    stop_if_interrupted,
    train_config,
)
from hf_gpt2 import load_base
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
from support.flags import (
    FlagParser,
    fraction,
    nonnegative_int,
    path_arg,
    positive_float,
    positive_int,
)
from support.measure import (
    INSTRUCTION_COLUMNS,
    PeakMemory,
    append_record,
    format_table,
    warm_up_optimizer,
    write_jsonl,
    write_metrics,
)
from support.runtime import Bookkeeping
from training import cleanup_distributed, launch, lm_loss, train_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, out="qlora_adapters.pth", run_name="qlora-instruct",
                    ours=SizeDefaults(lr=2e-3, batch_size=16),
                    gpt2=SizeDefaults(lr=5e-4, batch_size=8, max_length=256),
                    max_steps=300, train_size=2000,
                    train_size_help="training instructions, seeded subsample of the data "
                    "file's 95 %% train split")
    p.add_argument("--data-file", type=path_arg, default=None,
                   help="any Dolly-schema JSONL (default: databricks-dolly-15k.jsonl from the "
                   f"data folder): a path, or the name of a file in the data folder, e.g. "
                   f"{INSTRUCTIONS_1100}")
    p.add_argument("--backend", choices=BACKENDS, default="scratch",
                   help="NF4 implementation: ours (quantization.py) or bitsandbytes")
    p.add_argument("--rank", type=positive_int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=positive_float, default=16.0,
                   help="LoRA alpha: the update is scaled by alpha / r")
    p.add_argument("--dropout", type=fraction, default=0.05, help="dropout on the adapter input")
    p.add_argument("--samples", type=nonnegative_int, default=5,
                   help="held-out instructions to answer")
    p.add_argument("--max-new-tokens", type=positive_int, default=80,
                   help="length limit of an answer")
    return parse_finetune_args(p, argv)




def quantization_error(dense: dict[str, torch.Tensor], model: nn.Module) -> float:
    """||W - dequant(quant(W))|| / ||W|| over all quantized weights (Frobenius norms)."""
    err = ref = 0.0
    for name, weight in dense.items():
        diff = dequantized_weight(model.get_submodule(name)).cpu() - weight
        err += diff.pow(2).sum().item()
        ref += weight.pow(2).sum().item()
    return math.sqrt(err / ref)


def dense_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights make_qlora will quantize, to measure what quantizing lost."""
    return {name: m.weight.detach().float().cpu().clone() for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS}


def quantization_line(backend: str, nbytes: dict, q_error: float) -> str:
    return (f"NF4 ({backend}) on {nbytes['layers']} linear layers, {nbytes['params']:,} "
            f"weights: fp32 {nbytes['fp32'] / 2**20:.2f} MB -> NF4 {nbytes['nf4'] / 2**20:.2f} MB "
            f"-> NF4+DQ {nbytes['nf4_dq'] / 2**20:.2f} MB ({nbytes['nf4_dq'] / nbytes['fp32']:.3f}"
            f" x fp32, {8 * nbytes['nf4_dq'] / nbytes['params']:.3f} bits/weight); relative "
            f"weight error {q_error:.4f}")


def sample_records(records: list[dict], tokenizer, context_length: int, n: int) -> list[dict]:
    """The first n held-out records whose prompt leaves at least half the window to answer."""
    fits = (r for r in records if len(tokenizer.encode(
        format_prompt(r["instruction"], r["context"]))) <= context_length // 2)
    return list(itertools.islice(fits, n))


def answer_samples(model: nn.Module, tokenizer, records: list[dict], args) -> list[str]:
    return [answer(model, tokenizer, r["instruction"], r["context"],
                   max_new_tokens=args.max_new_tokens, seed=args.seed) for r in records]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_args(args)
    started = time.perf_counter()
    run = launch(args.device)  # one process, or this process's share under torchrun
    say = print if run.is_main else lambda *_: None  # only the main process reports
    torch.manual_seed(args.seed)

    base, tokenizer, _ = load_base(args.base)  # the pretrained GPT: main.py's, or GPT-2
    facts = {"base_fingerprint": weights_fingerprint(base.state_dict())}
    ctx = example_length(args, base)
    splits = load_instruction_splits(args)
    train, facts["train_stats"] = encode_examples(splits["train"], tokenizer, ctx)
    test, facts["test_stats"] = encode_examples(splits["test"], tokenizer, ctx)
    say(f"Base {args.base}: {base.num_parameters() / 1e6:.2f} M parameters, context {ctx}; "
        f"device {run.device}" + (f"; {run.world_size} processes" if run.world_size > 1 else "")
        + f"\nTrain: {facts['train_stats'].summary()}\nHeld-out: {facts['test_stats'].summary()}")
    train_loader = instruction_dataloader(train, args.batch_size, tokenizer.eot_id, shuffle=True,
                                          seed=args.seed, rank=run.rank,
                                          world_size=run.world_size)
    test_loader = instruction_dataloader(test, 2 * args.batch_size, tokenizer.eot_id,
                                         shuffle=False)
    # The reference: the dense base with the same template and held-out tokens (main only).
    base = base.to(run.device)
    dense = dense_weights(base) if run.is_main else {}
    facts["dense_loss"] = response_loss(base, test_loader) if run.is_main else math.nan

    # QLoRA: the target linears frozen in 4-bit NF4, LoRA adapters on top; only they train.
    lora = {"r": args.rank, "alpha": args.alpha, "dropout": args.dropout,
            "targets": list(DEFAULT_TARGETS)}
    model = make_qlora(base, args.backend, **lora)
    facts["quantized_bytes"] = quantized_nbytes(model)
    facts["quantization_error"] = quantization_error(dense, model) if dense else math.nan
    facts["trainable"], facts["total"] = trainable, total = count_parameters(model)
    # What a step holds, by kind, counted exactly at the largest batch (support/measure.py),
    # before an eval-mode pass lets bitsandbytes repack its weights for CPU inference.
    facts["memory"] = memory_at_full_batch(model, lm_loss, args, ctx, run.device, labelled=False)
    say(quantization_line(args.backend, facts["quantized_bytes"], facts["quantization_error"]))
    say(f"LoRA r={args.rank} alpha={args.alpha:g} on {' '.join(DEFAULT_TARGETS)}: "
        f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f} %)")

    log_path = Path("runs") / args.run_name / "metrics.jsonl"
    if run.is_main:  # fresh adapters change nothing (B = 0): this is the 4-bit base's score
        facts["nf4_loss"] = response_loss(model, test_loader)
        facts["shown"] = sample_records(splits["test"], tokenizer, ctx, args.samples)
        facts["base_answers"] = answer_samples(model, tokenizer, facts["shown"], args)
        log_path.unlink(missing_ok=True)  # a fresh run, a fresh log
    warm_up_optimizer()  # a one-time import would count as the run's memory
    with PeakMemory(run.device) as peak:
        summary = train_model(run.wrap(model), train_loader, test_loader, train_config(args),
                              run.device, loss_fn=lm_loss, is_main=run.is_main,
                              bookkeeping=Bookkeeping(log_path=log_path, desc="qlora"))
    cleanup_distributed()
    stop_if_interrupted(summary, args, "QLoRA", log_path)  # 130 / 143; --out left as it was
    if run.is_main:
        report(args, model, tokenizer, test_loader, summary, peak, lora, facts, started)
    return 0


def report(args: argparse.Namespace, model: nn.Module, tokenizer, test_loader, summary: dict,
           peak: PeakMemory, lora: dict, facts: dict, started: float) -> None:
    """Score and save the tuned model; write metrics.jsonl's last record, samples.jsonl and
    metrics.json; print the table and two answers before and after."""
    run_dir = Path("runs") / args.run_name
    tuned_loss = response_loss(model, test_loader)
    shown, before = facts["shown"], facts["base_answers"]
    after = answer_samples(model, tokenizer, shown, args)
    append_record(run_dir / "metrics.jsonl", {"step": summary["steps"],
                                              "heldout_response_loss": tuned_loss,
                                              "base_response_loss": facts["nf4_loss"]})
    train_examples, heldout = facts["train_stats"].kept, facts["test_stats"].kept
    save_instruction_adapters(
        args.out, model, tokenizer, base_path=args.base, base_fingerprint=facts["base_fingerprint"],
        backend=args.backend, lora=lora, run_name=args.run_name, steps=summary["steps"],
        data=str(args.data_file or "databricks-dolly-15k"), train_examples=train_examples,
        heldout_loss=tuned_loss, base_heldout_loss=facts["nf4_loss"])
    rows = [
        {"model": "base, fp32", "loss": facts["dense_loss"]},
        {"model": f"base, NF4+DQ ({args.backend})", "loss": facts["nf4_loss"]},
        {"model": f"QLoRA r={args.rank} ({args.backend})", "loss": tuned_loss,
         "trainable": facts["trainable"], "total": facts["total"],
         "train_time_s": round(summary["elapsed"], 1), "memory": facts["memory"],
         "peak_mem_mb": round(peak.mb, 1), "peak_mem_source": peak.source,
         **{key: summary[key] for key in ("steps", "train_loss", "dtype", "interrupted")}},
    ]
    for row in rows:
        row["perplexity"] = math.exp(row["loss"])
    samples_path = write_jsonl(run_dir / "samples.jsonl", [
        {"instruction": r["instruction"], "context": r["context"], "reference": r["response"],
         "base_answer": b, "tuned_answer": a}
        for r, b, a in zip(shown, before, after, strict=True)])
    metrics_path = write_metrics(
        run_dir, rows, args, base=str(args.base), base_fingerprint=facts["base_fingerprint"],
        backend=args.backend, lora=lora, quantized_bytes=facts["quantized_bytes"],
        quantization_error=facts["quantization_error"],
        encoding={"train": facts["train_stats"].to_dict(),
                  "heldout": facts["test_stats"].to_dict()},
        heldout_examples=heldout, train_examples=train_examples,
        wall_time_s=round(time.perf_counter() - started, 1))

    print(f"\nHeld-out response tokens ({heldout} examples); trained on {train_examples:,} "
          f"examples, {summary['steps']} steps\n{format_table(rows, INSTRUCTION_COLUMNS)}\n")
    for record, b, a in zip(shown[:2], before, after, strict=False):
        print(f"### Instruction: {record['instruction']}" +
              (f"\n### Input: {record['context']}" if record["context"] else "") +
              f"\n  reference: {record['response']!r}\n  base:      {b!r}"
              f"\n  tuned:     {a!r}\n")
    print(f"Saved {args.out}; results in {metrics_path}, answers in {samples_path} "
          f"({time.perf_counter() - started:.0f} s in all)")


if __name__ == "__main__":
    run(main)
