"""Pretrain the base GPT model on TinyShakespeare or your own text; save it to model_weights.pth.

    python main.py                       # CPU preset: a few minutes on a laptop
    python main.py --preset gpu          # a bigger model for one GPU
    torchrun --nproc_per_node=4 main.py --preset gpu   # several GPUs (DDP)
    python main.py --resume              # continue an interrupted run
    python main.py --text notes.txt docs/ --include '*.md'   # your own text files
    python main.py --hf-dataset roneneldan/TinyStories   # a Hugging Face dataset, streamed

Steps: train (or reuse) the BPE tokenizer, encode the corpus once into token files (reused by
later runs), train the model with ``training.train_model`` on windows of those files (each
once per epoch, in a seeded order), save a self-describing checkpoint, and print a sample.
Ctrl-C (or SIGTERM) stops cleanly: it saves, says what it saved where, and exits 130 (143);
``--resume`` continues exactly where it stopped.

Read ``main`` first: settings, tokenizer, data, model, train, save. Below it are its steps, then
the presets and their flags, then resuming, the two savers and the closing report.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import torch

from checkpoint import (
    config_and_tokenizer,
    load_checkpoint,
    make_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from corpus import (
    DEFAULT_ROOT,
    Corpus,
    add_corpus_args,
    corpus_facts,
    corpus_from_args,
    corpus_tokenizer,
    open_tokens,
    read_token_meta,
    ready_token_files,
    saved_tokenizer,
    survey,
)
from data_utils import (
    WindowBatches,
    tinyshakespeare_corpus,
    tokenizer_training_corpus,
    val_loader,
)
from generation import generate_text
from model import GPTConfig, GPTModel
from support.checks import NEW_TOKENS, check_fills_window, check_model_fits
from support.cli import (
    FlagParser,
    flag,
    fraction,
    nonnegative_float,
    nonnegative_int,
    path_arg,
    positive_float,
    positive_int,
    run,
    run_name_arg,
    seed_arg,
)
from support.file_checks import resume_settings
from support.files import atomic_save, check_writable
from support.metrics import forget_steps_after
from support.runtime import Bookkeeping, Launch, cleanup_distributed, launch
from tokenizer import BPETokenizer
from training import TrainConfig, train_model


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # the --preset's values, each overridden by its flag if given
    run = launch(args.device)  # under torchrun: this process's rank and its own device
    torch.manual_seed(args.seed)
    run_dir = Path("runs") / args.run_name
    state_path = run_dir / "state.pt"
    # The settings and the tokenizer (trained, or reused): a new run's, or the resumed run's.
    resume_state = None
    if args.resume:
        model_cfg, train_cfg, tokenizer, meta, resume_state = resume_run(args, state_path, run)
    else:
        model_cfg, train_cfg, tokenizer, meta = start_run(args, run, run_dir)
    batch_size, ctx, seed = meta["batch_size"], model_cfg.context_length, train_cfg.seed

    # The data: the corpus as token files on disk. Training visits every window once per
    # epoch in a seeded order; val reads its windows in order.
    folder = Path(meta["prepared"])
    tokens = read_token_meta(folder)
    check_fills_window(tokens["splits"], ctx, Corpus.from_dict(tokens["corpus"]).label())
    train_batches = WindowBatches(lambda: open_tokens(folder, "train", tokens), ctx, batch_size,
                                  seed, ctx // 2, run.rank, run.world_size)
    val_batches = val_loader(lambda: open_tokens(folder, "val", tokens), ctx, batch_size)

    model = GPTModel(model_cfg).to(run.device)
    if run.is_main:
        print(f"Model: {model.num_parameters() / 1e6:.2f} M parameters "
              f"({json.dumps(model_cfg.to_dict())}); {meta['trained_on']}; "
              f"device {run.device}; "
              f"global batch {batch_size * train_cfg.grad_accum_steps * run.world_size} x {ctx}")

    # Train, saving as it goes: the best-val weights to --out, the state to resume from.
    save, save_best = checkpoint_savers(model, tokenizer, model_cfg, meta, state_path,
                                        resume_state)
    bookkeeping = Bookkeeping(run_dir / "metrics.jsonl", save, save_best,
                              tokens_per_batch=batch_size * ctx * run.world_size,
                              flops_per_token=model.flops_per_token(), desc="pretrain")
    summary = train_model(run.wrap(model), train_batches, val_batches, train_cfg, run.device,
                          resume_state=resume_state, is_main=run.is_main,
                          bookkeeping=bookkeeping)
    cleanup_distributed()
    if not run.is_main:
        return 0
    print(report(summary, meta["out"], state_path, args.run_name))
    if summary["interrupted"]:  # the shell's convention: 130 after Ctrl-C, 143 after SIGTERM
        return 128 + summary["stop_signal"]
    if args.sample_tokens:
        print_sample(meta, tokenizer, folder, tokens, args.sample_tokens, seed)
    return 0


# --------------------------------- its steps: settings, tokenizer, token files

def start_run(args: argparse.Namespace, run: Launch, run_dir: Path
              ) -> tuple[GPTConfig, TrainConfig, BPETokenizer, dict]:
    """A new run: the model and training settings, a tokenizer, and what the checkpoints say."""
    s = settings(args)
    # Both configs check their values before minutes go into the tokenizer.
    model_cfg = GPTConfig(**{name: s[name] for name in MODEL_FIELDS})
    train_cfg = TrainConfig(**{name: s[name] for name in TRAIN_FIELDS},
                            checkpoint_interval=args.checkpoint_interval, dtype=args.dtype,
                            compile=args.compile, seed=args.seed)
    check_model_fits(model_cfg, run.device)  # not an allocator's traceback minutes from now
    meta = {"run_name": args.run_name, "preset": args.preset,
            "split": "nanogpt" if args.nanogpt_split else "standard",
            "out": args.out or "model_weights.pth", "batch_size": s["batch_size"]}
    check_writable(meta["out"])
    tokenizer, facts = prepare_corpus(args, run, s["vocab_size"])
    meta.update(facts)
    # Round the embedding table up to a multiple of 64: faster matmuls, unused rows unused.
    model_cfg = replace(model_cfg, vocab_size=(tokenizer.vocab_size + 63) // 64 * 64)
    if run.is_main:
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # a fresh run, a fresh log
    return model_cfg, train_cfg, tokenizer, meta


def settings(args: argparse.Namespace) -> dict:
    """The preset's values, each replaced by its flag where the user gave one."""
    return {name: preset_value if getattr(args, name) is None else getattr(args, name)
            for name, preset_value in PRESETS[args.preset].items()}


def prepare_corpus(args: argparse.Namespace, run: Launch, vocab_size: int
                   ) -> tuple[BPETokenizer, dict]:
    """Rank 0 trains (or reuses) the tokenizer and makes (or reuses) the token files; the
    other ranks wait, then read them. Returns the tokenizer and the checkpoints' corpus facts."""
    corpus, folder = corpus_of(args)
    own_text = corpus.name != "tinyshakespeare"
    tokenizer_path = Path(args.tokenizer or (folder / "tokenizer.json" if own_text
                                             else "tokenizer.json"))

    def tokenizer_and_token_files() -> tuple[BPETokenizer, dict]:
        found = survey(corpus)
        tokenizer = (corpus_tokenizer(tokenizer_path, vocab_size, found, args.tokenizer_sample)
                     if own_text else get_tokenizer(tokenizer_path, vocab_size, args.data_dir,
                                                    args.instruction_file))
        return tokenizer, ready_token_files(found, tokenizer, folder, args.workers)

    tokenizer, token_meta = made_on_rank_zero(
        run, tokenizer_and_token_files,
        read=lambda: (BPETokenizer.load(tokenizer_path), read_token_meta(folder)))
    return tokenizer, corpus_facts(corpus, folder, token_meta)


T = TypeVar("T")


def made_on_rank_zero(run: Launch, make: Callable[[], T], read: Callable[[], T]) -> T:
    """``make()`` on rank 0, the one process that writes files; the other ranks wait for it,
    then ``read()`` what it wrote."""
    made = make() if run.is_main else None
    if run.world_size > 1:
        torch.distributed.barrier()
    return made if run.is_main else read()


def corpus_of(args: argparse.Namespace) -> tuple[Corpus, Path]:
    """The corpus the flags name (TinyShakespeare without any), and its token files' folder."""
    corpus = corpus_from_args(args) or tinyshakespeare_corpus(args.data_dir, args.nanogpt_split)
    return corpus, Path(args.prepared_dir or DEFAULT_ROOT / corpus.folder_name())


def get_tokenizer(path: Path, vocab_size: int, data_dir, instruction_file) -> BPETokenizer:
    """Reuse the saved tokenizer if it has the requested size, else train and save one."""
    tokenizer = saved_tokenizer(path, vocab_size)
    if tokenizer is not None:
        if instruction_file:
            print(f"Note: --instruction-file is not used: {path} exists already; delete it "
                  "to train a tokenizer that includes that file.")
        return tokenizer
    corpus = tokenizer_training_corpus(data_dir, instruction_file=instruction_file)
    print(f"Training a {vocab_size}-token BPE tokenizer on {len(corpus):,} characters ...")
    tokenizer = BPETokenizer()
    tokenizer.train(corpus, vocab_size)
    tokenizer.save(path)
    return tokenizer


# ----------------------------------------------------------- presets and flags

# Each preset: model shape, tokenizer size and training schedule. A flag overrides any value
# (--max-steps 500 and so on); nothing else changes them.
PRESETS: dict[str, dict] = {
    # About 5 minutes on 2 CPU cores. Chosen by measurement at equal CPU time (docs/history.md):
    # Muon lets a 4th layer pay for its cost (with AdamW, 3 layers win), more steps of a
    # smaller batch beat fewer large ones, and dropout only slows learning this early.
    "cpu": {
        "vocab_size": 1024, "context_length": 128, "n_layer": 4, "n_head": 4, "n_embd": 128,
        "dropout": 0.0, "batch_size": 8, "grad_accum_steps": 1, "max_steps": 1800,
        "learning_rate": 3e-3, "min_lr": 0.0, "warmup_steps": 50, "eval_interval": 200,
        "weight_decay": 0.1, "optimizer": "muon", "muon_lr": 0.02,
    },
    # One GPU, under a minute on an H100. TinyShakespeare is only ~400 k tokens, so this
    # 11.5 M-parameter model memorises it within ~600 steps (train loss -> 0, val loss up):
    # heavy dropout, a short schedule, and the best-val weights are what is kept.
    "gpu": {
        "vocab_size": 2048, "context_length": 256, "n_layer": 6, "n_head": 6, "n_embd": 384,
        "dropout": 0.3, "batch_size": 64, "grad_accum_steps": 1, "max_steps": 1000,
        "learning_rate": 1e-3, "min_lr": 1e-4, "warmup_steps": 200, "eval_interval": 250,
        "weight_decay": 0.1, "optimizer": "adamw", "muon_lr": 0.02,
    },
    # Seconds, for tests and smoke runs.
    "tiny": {
        "vocab_size": 320, "context_length": 32, "n_layer": 2, "n_head": 2, "n_embd": 32,
        "dropout": 0.0, "batch_size": 8, "grad_accum_steps": 1, "max_steps": 30,
        "learning_rate": 3e-3, "min_lr": 3e-4, "warmup_steps": 5, "eval_interval": 10,
        "weight_decay": 0.1, "optimizer": "muon", "muon_lr": 0.02,
    },
}

# The flag of each preset value: what it parses (and checks) and what it means.
PRESET_FLAGS = {
    "vocab_size": (positive_int, "tokens in the BPE vocabulary"),
    "context_length": (positive_int, "tokens the model sees at once"),
    "n_layer": (positive_int, "transformer blocks"),
    "n_head": (positive_int, "attention heads per block"),
    "n_embd": (positive_int, "width of the token vectors"),
    "dropout": (fraction, "dropout probability while training"),
    "batch_size": (positive_int, "sequences per micro-batch (per process)"),
    "grad_accum_steps": (positive_int, "micro-batches per optimizer step"),
    "max_steps": (positive_int, "optimizer steps"),
    "learning_rate": (positive_float, "peak learning rate"),
    "min_lr": (nonnegative_float, "learning rate at the end of the cosine decay"),
    "warmup_steps": (nonnegative_int, "steps of linear warmup"),
    "eval_interval": (positive_int, "measure the val loss every N steps"),
    "weight_decay": (nonnegative_float, "AdamW's weight decay, on matrices only"),
    "optimizer": (str, "adamw, or muon: Muon for the blocks' matrices, AdamW for the rest"),
    "muon_lr": (positive_float, "peak learning rate of the Muon matrices"),
}
MODEL_FIELDS = ("vocab_size", "context_length", "n_layer", "n_head", "n_embd", "dropout")
TRAIN_FIELDS = ("max_steps", "learning_rate", "min_lr", "warmup_steps", "grad_accum_steps",
                "eval_interval", "weight_decay", "optimizer", "muon_lr")


def preset_defaults(name: str) -> str:
    """E.g. "1800 (cpu preset), 1000 (gpu), 30 (tiny)", or "0.1 (every preset)"."""
    values = {preset: values[name] for preset, values in PRESETS.items()}
    if len(set(values.values())) == 1:
        return f"{next(iter(values.values()))} (every preset)"
    parts = [f"{value} ({preset})" for preset, value in values.items()]
    return ", ".join(parts).replace(")", " preset)", 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=PRESETS, default="cpu", help="model and schedule size")
    p.add_argument("--out", type=path_arg, default=None,
                   help="where to save the model (default: model_weights.pth, or a resumed "
                        "run's own file)")
    p.add_argument("--tokenizer", type=path_arg, default=None,
                   help="tokenizer file: reused if it exists with the right vocab size "
                        "(default: tokenizer.json; for --text/--hf-dataset: beside the token "
                        "files)")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="read datasets from this folder (default: "
                   "$LLM_DATA_DIR, else download into data/)")
    p.add_argument("--instruction-file", type=path_arg, default=None,
                   help="Dolly-schema JSONL added to the tokenizer corpus (default: Dolly-15k)")
    p.add_argument("--run-name", type=run_name_arg, default="pretrain",
                   help="metrics go to runs/<run-name>/")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast dtype; auto: bfloat16 on a CUDA GPU that has it, else float32")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (~30 s)")
    p.add_argument("--resume", action="store_true", help="continue runs/<run-name>/state.pt")
    p.add_argument("--seed", type=seed_arg, default=1337,
                   help="drives the weights, batch order and sample")
    p.add_argument("--nanogpt-split", action="store_true",
                   help="train on the first 90 %% of the text, as nanoGPT does, to compare with "
                        "its published losses on the same test slice (val is then trained on)")
    p.add_argument("--sample-tokens", type=flag(NEW_TOKENS), default=200,
                   help="sample length after training (0: no sample)")
    p.add_argument("--checkpoint-interval", type=nonnegative_int, default=500,
                   help="save weights and training state every N steps (0: only at the end)")
    add_corpus_args(p, training=True)
    values = p.add_argument_group("preset values", "each flag overrides one value of --preset")
    for name, (kind, meaning) in PRESET_FLAGS.items():
        values.add_argument("--" + name.replace("_", "-"), type=kind, default=None,
                            choices=["adamw", "muon"] if name == "optimizer" else None,
                            help=f"{meaning} (default: {preset_defaults(name)})")
    return p.parse_args(argv)


# -------------------------------------------------- resume, saving, the report

def resume_run(args: argparse.Namespace, state_path: Path, run: Launch
               ) -> tuple[GPTConfig, TrainConfig, BPETokenizer, dict, dict]:
    """The run saved in ``state_path``, to go on exactly as it started: its settings, seed,
    corpus, split and --out (unless given again). Only --max-steps can change."""
    ckpt = read_checkpoint(state_path, kind="train-state",
                           missing_hint="start a run without --resume first")
    model_cfg, tokenizer = config_and_tokenizer(ckpt, state_path)
    train_cfg = resume_settings(ckpt, state_path, TrainConfig)  # a hand edit: one sentence
    resume_state = {**ckpt["training"], "model": ckpt["state_dict"]}
    started = ckpt["metadata"]
    if args.max_steps is not None:
        train_cfg.max_steps = args.max_steps
    if train_cfg.max_steps <= resume_state["step"]:
        raise ValueError(f"The run in {state_path} is already at step {resume_state['step']} "
                         f"of {train_cfg.max_steps}; give a larger --max-steps to go on.")
    meta = {"run_name": args.run_name, "preset": started.get("preset", args.preset),
            "split": "nanogpt" if started.get("split") == "nanogpt" else "standard",
            "out": args.out or started.get("out", "model_weights.pth"),
            "batch_size": started["batch_size"]}
    check_writable(meta["out"])
    ignored = [name for name in PRESET_FLAGS if name != "max_steps"
               and getattr(args, name) is not None]
    ignored += ["nanogpt_split"] if args.nanogpt_split and meta["split"] != "nanogpt" else []
    ignored += [name for name in ("text", "hf_dataset") if getattr(args, name)]
    meta.update(resumed_corpus(args, started, tokenizer, run))
    if run.is_main:
        if ignored:
            flags = ", ".join("--" + name.replace("_", "-") for name in ignored)
            print(f"Note: {flags} ignored: a resumed run keeps the settings it started with "
                  "(only --max-steps can change).")
        print(f"Resuming {state_path} at step {resume_state['step']}")
        # Log lines written after that checkpoint are about to be redone: drop them.
        forget_steps_after(state_path.parent / "metrics.jsonl", resume_state["step"])
    return model_cfg, train_cfg, tokenizer, meta, resume_state


def resumed_corpus(args: argparse.Namespace, started: dict, tokenizer: BPETokenizer,
                   run: Launch) -> dict:
    """The token files of the corpus a run started on (rebuilt if they changed since)."""
    if "corpus" in started:
        corpus, folder = Corpus.from_dict(started["corpus"]), Path(started["prepared"])
    else:  # a run from before token files: TinyShakespeare
        args.nanogpt_split = started.get("split") == "nanogpt"
        corpus, folder = corpus_of(args)
    token_meta = made_on_rank_zero(
        run, lambda: ready_token_files(survey(corpus), tokenizer, folder, args.workers),
        read=lambda: read_token_meta(folder))
    return corpus_facts(corpus, folder, token_meta)


def checkpoint_savers(model: GPTModel, tokenizer: BPETokenizer, model_cfg: GPTConfig,
                      meta: dict, state_path: Path, resume_state: dict | None):
    """``train_model``'s two callbacks: ``save`` (the state to resume from, every
    --checkpoint-interval steps and at the end) and ``save_best`` (the model, to --out)."""
    # A resumed run has already written its best model to --out (if it reached an evaluation).
    best_saved = resume_state is not None and resume_state.get("best_val", (0, 0))[1] > 0

    def model_meta(state: dict) -> dict:
        return {**meta, "step": state["step"], "elapsed": state["elapsed"],
                "train_config": state["train_config"]}

    def save_best(state: dict) -> None:
        # The weights users get are the ones with the lowest val loss (as nanoGPT does):
        # past that point a small corpus is being memorised, not learned.
        nonlocal best_saved
        best_saved = True
        save_checkpoint(meta["out"], model, tokenizer, **model_meta(state),
                        val_loss=state["best_val"][0])

    def save(state: dict) -> None:
        training = {k: state[k] for k in ("optimizer", "step", "rng", "elapsed", "best_val",
                                          "scaler") if k in state}
        checkpoint = make_checkpoint("train-state", state["model"], model_cfg, tokenizer,
                                     **model_meta(state))
        atomic_save({**checkpoint, "training": training}, state_path)
        if not best_saved:  # stopped before the first evaluation: keep what there is
            save_checkpoint(meta["out"], model, tokenizer, **model_meta(state))

    return save, save_best


def report(summary: dict, out: str, state_path: Path, run_name: str) -> str:
    """What happened and what was saved where, in one paragraph."""
    if summary["best_step"]:
        best = f"best val loss {summary['best_val_loss']:.3f} at step {summary['best_step']}"
        saved = f"Saved the best-val weights (step {summary['best_step']}) to {out}"
    else:
        best = "no evaluation yet"
        saved = f"Saved the last weights (step {summary['steps']}) to {out}"
    status = "stopped early" if summary["interrupted"] else "done"
    text = (f"Training {status} at step {summary['steps']} in {summary['elapsed']:.0f} s "
            f"(train loss {summary['train_loss']:.3f}, {best}, {summary['dtype']}). "
            f"{saved}; resume state in {state_path}.")
    if summary["interrupted"]:
        again = "" if run_name == "pretrain" else f" --run-name {run_name}"
        text += f" To go on: python main.py --resume{again}"
    return text


def print_sample(meta: dict, tokenizer: BPETokenizer, folder: Path, tokens: dict,
                 max_new_tokens: int, seed: int) -> None:
    """A sample from the saved (best-val) model, after a prompt of its corpus's kind."""
    best_model, _, _ = load_checkpoint(meta["out"])
    prompt = "ROMEO:" if meta["dataset"] == "tinyshakespeare" else tokenizer.decode(
        open_tokens(folder, "test", tokens)[:8].tolist())  # how a test document begins
    sample = generate_text(best_model, tokenizer, prompt, max_new_tokens=max_new_tokens,
                           temperature=0.8, top_k=50, seed=seed)
    print("\n--- sample ---\n" + prompt + sample)


if __name__ == "__main__":
    run(main)
