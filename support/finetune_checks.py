"""The edge checks of the finetuning chapters: flags, user text, adapter files against bases.

Each check turns a value that would fail later, in a confusing way, into one sentence that
names what to change (the flag a user typed, or the file to pass). The chapters call them at
their edges and otherwise trust their inputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from support.errors import CheckpointError

# ---------------------------------------------------------------------------- flags


def train_size_arg(value: str) -> int:
    """--train-size: a number of training examples; 0 or "all" means the whole training split."""
    if value.lower() == "all":
        return 0
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got '{value}'") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 means all), got {size}")
    return size


def check_finetune_flags(args: argparse.Namespace) -> None:
    """The flags every finetuning script takes (finetuning.add_common_args)."""
    for name in ("max_steps", "batch_size", "eval_interval"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, "
                             f"got {getattr(args, name)}.")
    if not args.lr > 0:  # also catches nan
        raise ValueError(f"--lr must be positive, got {args.lr}.")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        raise ValueError(f"--warmup-steps must be >= 0, got {args.warmup_steps}.")
    if args.weight_decay < 0:  # it would push the weights away from zero
        raise ValueError(f"--weight-decay must be >= 0, got {args.weight_decay}.")


def check_lora_flags(args: argparse.Namespace, known_targets: Iterable[str]) -> None:
    """--rank, --dropout and --targets (where the script takes it) of a LoRA script."""
    if args.rank < 1:
        raise ValueError(f"--rank must be at least 1, got {args.rank}.")
    if not 0 <= args.dropout < 1:
        raise ValueError(f"--dropout must be in [0, 1), got {args.dropout}.")
    unknown = set(getattr(args, "targets", ())) - set(known_targets)
    if unknown:
        raise ValueError(f"Unknown --targets {sorted(unknown)}; "
                         f"choose from {' '.join(known_targets)}.")


def check_answer_flags(args: argparse.Namespace) -> None:
    """--samples and --max-new-tokens of the QLoRA script."""
    if args.samples < 0 or args.max_new_tokens < 1:
        raise ValueError("--samples must be >= 0 and --max-new-tokens >= 1.")


# ---------------------------------------------------------------------------- user text


def check_text(value: Any, complaint: str) -> None:
    """``value`` must be a str: else "<complaint>, got <type>." (the app passes what it gets)."""
    if not isinstance(value, str):
        raise ValueError(f"{complaint}, got {type(value).__name__}.")


# ---------------------------------------------------------------------------- adapter files


def check_adapters_fit(path: Any, base: Any, meta: dict, lora: dict, *,
                       fingerprints: tuple[str, str], names: tuple[set[str], set[str]]) -> None:
    """An adapter file (``path``) fits the base model ``base`` it is being put on.

    ``fingerprints``: (the base's weights now, the weights the adapters were trained on);
    ``names``: (the tensors in the file, the tensors that train on the adapted base).
    """
    if fingerprints[0] != fingerprints[1]:
        raise CheckpointError(
            f"{path} was trained on a different base model than {base} (the weights' "
            f"fingerprints differ); pass the base it was trained on, {meta.get('base_path')}.")
    if names[0] != names[1]:
        raise CheckpointError(f"{path} does not match its base model: the adapter tensors "
                              f"differ from the ones r={lora['r']} on {lora['targets']} makes.")
