"""Pretrain the base GPT model on TinyShakespeare and save it to ``model_weights.pth``.

    python main.py                       # CPU preset: a few minutes on a laptop
    python main.py --preset gpu          # a bigger model for one GPU
    torchrun --nproc_per_node=4 main.py --preset gpu   # several GPUs (DDP)
    python main.py --resume              # continue an interrupted run

Steps: train (or reuse) the BPE tokenizer, encode the train/val splits, train the model with
``training.train_model``, save a self-describing checkpoint, and print a sample.
Ctrl-C (or SIGTERM) stops cleanly and saves; ``--resume`` continues exactly where it stopped.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from checkpoint import (
    atomic_save,
    check_writable,
    config_and_tokenizer,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from data_utils import (
    create_dataloader,
    load_tinyshakespeare,
    split_shakespeare,
    tokenizer_training_corpus,
)
from generation import generate_text
from model import GPTConfig, GPTModel
from support.cli import run
from tokenizer import BPETokenizer
from training import TrainConfig, cleanup_distributed, launch, train_model

# Each preset: model shape, tokenizer size and training schedule. Flags override any field.
PRESETS: dict[str, dict] = {
    # About 5 minutes on 2 CPU cores. Chosen by measurement at equal CPU time (README):
    # Muon lets a 4th layer pay for its cost (with AdamW, 3 layers win), more steps of a
    # smaller batch beat fewer large ones, and dropout only slows learning this early.
    "cpu": dict(vocab_size=1024, context_length=128, n_layer=4, n_head=4, n_embd=128,
                dropout=0.0, batch_size=8, grad_accum_steps=1, max_steps=1800,
                learning_rate=3e-3, min_lr=0.0, warmup_steps=50, eval_interval=200,
                optimizer="muon", muon_lr=0.02),
    # One GPU, under a minute on an H100. TinyShakespeare is only ~400 k tokens, so this
    # 11.5 M-parameter model memorises it within ~600 steps (train loss -> 0, val loss up):
    # heavy dropout, a short schedule, and the best-val weights are what is kept.
    "gpu": dict(vocab_size=2048, context_length=256, n_layer=6, n_head=6, n_embd=384,
                dropout=0.3, batch_size=64, grad_accum_steps=1, max_steps=1000,
                learning_rate=1e-3, min_lr=1e-4, warmup_steps=200, eval_interval=250,
                optimizer="adamw"),
    # Seconds, for tests and smoke runs.
    "tiny": dict(vocab_size=320, context_length=32, n_layer=2, n_head=2, n_embd=32,
                 dropout=0.0, batch_size=8, grad_accum_steps=1, max_steps=30,
                 learning_rate=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10,
                 optimizer="muon", muon_lr=0.02),
}


# Flags that override one preset field (unset: the preset's value).
INT_OVERRIDES = ("vocab_size", "context_length", "n_layer", "n_head", "n_embd", "batch_size",
                 "grad_accum_steps", "max_steps", "warmup_steps", "eval_interval")
FLOAT_OVERRIDES = ("dropout", "learning_rate", "min_lr", "weight_decay", "muon_lr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="cpu", help="model and schedule size")
    p.add_argument("--out", default=None,
                   help="where to save the model; unset: model_weights.pth, or a resumed "
                        "run's own file")
    p.add_argument("--tokenizer", default="tokenizer.json",
                   help="tokenizer file: reused if it exists with the right vocab size")
    p.add_argument("--data-dir", default=None, help="read datasets from this folder; unset: "
                   "$LLM_DATA_DIR, else download into data/")
    p.add_argument("--instruction-file", default=None,
                   help="Dolly-schema JSONL added to the tokenizer corpus; unset: Dolly-15k")
    p.add_argument("--run-name", default="pretrain", help="metrics go to runs/<run-name>/")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (~30 s)")
    p.add_argument("--resume", action="store_true", help="continue runs/<run-name>/state.pt")
    p.add_argument("--seed", type=int, default=1337,
                   help="drives the weights, batch order and sample")
    p.add_argument("--nanogpt-split", action="store_true",
                   help="train on the first 90 %% of the text, as nanoGPT does, to compare with "
                        "its published losses on the same test slice (val is then trained on)")
    p.add_argument("--sample-tokens", type=int, default=200, help="sample length after training")
    for name in INT_OVERRIDES:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help="override the preset")
    for name in FLOAT_OVERRIDES:
        p.add_argument("--" + name.replace("_", "-"), type=float, default=None,
                       help="override the preset")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default=None,
                   help="override the preset: muon trains the blocks' matrices with Muon")
    p.add_argument("--checkpoint-interval", type=int, default=500,
                   help="save weights and training state every N steps (0: only at the end)")
    return p.parse_args(argv)


def settings(args: argparse.Namespace) -> dict:
    """The preset with every flag the user gave laid over it."""
    merged = dict(PRESETS[args.preset])
    for key in list(merged) + ["weight_decay", "muon_lr"]:
        if getattr(args, key, None) is not None:
            merged[key] = getattr(args, key)
    return merged


def get_tokenizer(path: Path, vocab_size: int, data_dir, instruction_file) -> BPETokenizer:
    """Reuse the saved tokenizer if it has the requested size, else train and save one."""
    if path.exists():
        tokenizer = BPETokenizer.load(path)
        if tokenizer.vocab_size == vocab_size:
            print(f"Reusing tokenizer {path} ({vocab_size} tokens)")
            return tokenizer
    corpus = tokenizer_training_corpus(data_dir, instruction_file=instruction_file)
    print(f"Training a {vocab_size}-token BPE tokenizer on {len(corpus):,} characters ...")
    tokenizer = BPETokenizer()
    tokenizer.train(corpus, vocab_size)
    tokenizer.save(path)
    return tokenizer


def forget_steps_after(log_path: Path, step: int) -> None:
    if log_path.exists():
        lines = log_path.read_text().splitlines(keepends=True)
        log_path.write_text("".join(line for line in lines if json.loads(line)["step"] <= step))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.sample_tokens < 0:
        raise ValueError(f"--sample-tokens must be >= 0 (0: no sample), got {args.sample_tokens}.")
    s = settings(args)
    run = launch(args.device)  # under torchrun: this process's rank and its own device
    rank, world_size, is_main, device = run.rank, run.world_size, run.is_main, run.device
    torch.manual_seed(args.seed)
    run_dir = Path("runs") / args.run_name
    state_path = run_dir / "state.pt"

    resume_state = None
    if args.resume:  # the run it continues: settings, seed, split, --out; only --max-steps changes
        ckpt = read_checkpoint(state_path, kind="train-state",
                               missing_hint="start a run without --resume first")
        model_cfg, tokenizer = config_and_tokenizer(ckpt, state_path)
        resume_state = ckpt["training"]
        resume_state["model"] = ckpt["state_dict"]
        started = ckpt["metadata"]
        train_cfg = TrainConfig(**started["train_config"])
        if args.max_steps is not None:
            train_cfg.max_steps = args.max_steps
        if train_cfg.max_steps <= resume_state["step"]:
            raise ValueError(f"The run in {state_path} is already at step {resume_state['step']} "
                             f"of {train_cfg.max_steps}; give a larger --max-steps to go on.")
        batch_size = started["batch_size"]
        ignored = [name for name in INT_OVERRIDES + FLOAT_OVERRIDES + ("optimizer",)
                   if name != "max_steps" and getattr(args, name) is not None]
        started_nanogpt = started.get("split") == "nanogpt"
        if args.nanogpt_split and not started_nanogpt:
            ignored.append("nanogpt_split")
        if ignored and is_main:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            print(f"Note: {flags} ignored: a resumed run keeps the settings it started with "
                  "(only --max-steps can change).")
        args.nanogpt_split, args.seed = started_nanogpt, train_cfg.seed
        args.preset = started.get("preset", args.preset)
        args.out = args.out or started.get("out", "model_weights.pth")
        check_writable(args.out)
        if is_main:  # log lines written after that checkpoint are about to be redone: drop them
            print(f"Resuming {state_path} at step {resume_state['step']}")
            forget_steps_after(run_dir / "metrics.jsonl", resume_state["step"])
    else:  # both configs check their values before minutes go into the tokenizer
        model_cfg = GPTConfig(vocab_size=s["vocab_size"], context_length=s["context_length"],
                              n_layer=s["n_layer"], n_head=s["n_head"], n_embd=s["n_embd"],
                              dropout=s["dropout"])
        train_cfg = TrainConfig(
            max_steps=s["max_steps"], learning_rate=s["learning_rate"], min_lr=s["min_lr"],
            warmup_steps=s["warmup_steps"], grad_accum_steps=s["grad_accum_steps"],
            eval_interval=s["eval_interval"],
            weight_decay=s.get("weight_decay", TrainConfig.weight_decay),
            optimizer=s["optimizer"], muon_lr=s.get("muon_lr", TrainConfig.muon_lr),
            checkpoint_interval=args.checkpoint_interval, dtype=args.dtype,
            compile=args.compile, seed=args.seed)
        batch_size = s["batch_size"]
        args.out = args.out or "model_weights.pth"
        check_writable(args.out)
        if is_main:
            tokenizer = get_tokenizer(Path(args.tokenizer), s["vocab_size"], args.data_dir,
                                      args.instruction_file)
        if world_size > 1:  # the other ranks wait for rank 0's tokenizer file
            torch.distributed.barrier()
            tokenizer = BPETokenizer.load(args.tokenizer)
        # Round the embedding table up to a multiple of 64: faster matmuls, unused rows unused.
        model_cfg = replace(model_cfg, vocab_size=(tokenizer.vocab_size + 63) // 64 * 64)
        if is_main:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run, a fresh log

    splits = split_shakespeare(load_tinyshakespeare(args.data_dir), nanogpt=args.nanogpt_split)
    train_ids = tokenizer.encode(splits["train"])
    val_ids = tokenizer.encode(splits["val"])
    ctx = model_cfg.context_length
    train_loader = create_dataloader(train_ids, ctx, batch_size, stride=ctx // 2, shuffle=True,
                                     seed=args.seed, rank=rank, world_size=world_size)
    val_loader = create_dataloader(val_ids, ctx, batch_size, shuffle=False, drop_last=False)

    model = GPTModel(model_cfg).to(device)
    if is_main:
        print(f"Model: {model.num_parameters() / 1e6:.2f} M parameters "
              f"({json.dumps(model_cfg.to_dict())}); {len(train_ids):,} train tokens "
              f"({len(splits['train']) / len(train_ids):.2f} chars/token); device {device}; "
              f"global batch {batch_size * train_cfg.grad_accum_steps * world_size} x {ctx}")
    wrapped = run.wrap(model)  # DistributedDataParallel under torchrun

    meta = {"dataset": "tinyshakespeare", "run_name": args.run_name, "preset": args.preset,
            "split": "nanogpt" if args.nanogpt_split else "standard", "out": str(args.out)}
    # A resumed run has already written its best model to --out (if it reached an evaluation).
    best_saved = resume_state is not None and resume_state.get("best_val", (0, 0))[1] > 0

    def model_meta(state: dict) -> dict:
        return {**meta, "step": state["step"], "elapsed": state["elapsed"],
                "train_config": train_cfg.to_dict(), "batch_size": batch_size}

    def save_best(state: dict) -> None:
        # The weights users get are the ones with the lowest val loss (as nanoGPT does):
        # past that point a small corpus is being memorised, not learned.
        nonlocal best_saved
        best_saved = True
        save_checkpoint(args.out, model, tokenizer, **model_meta(state),
                        val_loss=state["best_val"][0])

    def save(state: dict) -> None:
        training = {k: state[k] for k in ("optimizer", "step", "rng", "elapsed", "best_val")}
        checkpoint = make_checkpoint("train-state", state["model"], model_cfg, tokenizer,
                                     **model_meta(state))
        atomic_save({**checkpoint, "training": training}, state_path)
        if not best_saved:  # stopped before the first evaluation: keep what there is
            save_checkpoint(args.out, model, tokenizer, **model_meta(state))

    summary = train_model(
        wrapped, train_loader, val_loader, train_cfg, device, log_path=run_dir / "metrics.jsonl",
        save_fn=save, best_fn=save_best, resume_state=resume_state,
        tokens_per_batch=batch_size * ctx * world_size,
        flops_per_token=model.flops_per_token(), is_main=is_main, desc="pretrain")
    cleanup_distributed()
    if not is_main:
        return 0
    status = "stopped early" if summary["interrupted"] else "done"
    best = (f"best val loss {summary['best_val_loss']:.3f} at step {summary['best_step']}"
            if summary["best_step"] else "no evaluation yet")
    print(f"Training {status} at step {summary['steps']} in {summary['elapsed']:.0f} s "
          f"(train loss {summary['train_loss']:.3f}, {best}, {summary['dtype']}). "
          f"Saved {args.out} (the best-val weights); resume state in {state_path}.")
    if args.sample_tokens:
        best_model, _, _ = load_checkpoint(args.out)
        sample = generate_text(best_model, tokenizer, "ROMEO:", max_new_tokens=args.sample_tokens,
                               temperature=0.8, top_k=50, seed=args.seed)
        print("\n--- sample ---\nROMEO:" + sample)
    return 0


if __name__ == "__main__":
    run(main)
