"""The ways a checkpoint file can be wrong, each one CheckpointError sentence naming the file.

checkpoint.py teaches the format and its meta-device shape check; this module holds what else a
loader must check before it trusts a file: its structure, config sizes that fit the saved
tensors (a config is only a claim: a hostile file can declare a 51 GB model around a few
kilobytes of weights), and the metadata an adapter file carries about its adapters and base.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from support.checks import is_int, is_number
from support.errors import CheckpointError


def check_structure(ckpt: Any, path: str | Path, kind: str | tuple[str, ...] | None, fmt: str,
                    version: int) -> None:
    """A dict in ``fmt`` at ``version``, of ``kind`` (when given; or one of several), that
    holds weights the file backs."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(f"{path} is not an {fmt} checkpoint.")
    if ckpt.get("version") != version:
        raise CheckpointError(f"{path} has format version {ckpt.get('version')}, "
                              f"this code reads version {version}.")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and ckpt.get("kind") not in kinds:
        raise CheckpointError(f"{path} holds a '{ckpt.get('kind')}' model, expected "
                              f"{' or '.join(map(repr, kinds))}.")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a complete checkpoint: it holds no weights "
                              "('state_dict').")
    check_weights(ckpt["state_dict"], path, Path(path).stat().st_size)


def check_weights(state_dict: Mapping[str, Any], path: str | Path, file_bytes: int) -> None:
    """Weights are finite floating-point tensors that the file's bytes back.

    An int, bool or complex tensor would be cast silently into a float parameter, and a NaN or
    inf would only show up as NaN text or a NaN finetune. Tensors may share bytes (a tied
    embedding is listed twice), so together they may claim twice the file, no more: many
    names over the same stored bytes would otherwise build a model many times the file.
    """
    claimed = 0
    for name, tensor in state_dict.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{path}: a weight is named {name!r:.60}, not with text; make "
                                  "the file again with the script that wrote it.")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: its weight {name} is not a tensor.")
        if not tensor.dtype.is_floating_point:
            raise CheckpointError(f"{path}: its weight {name} holds {tensor.dtype} values; "
                                  "weights are floating-point numbers.")
        claimed += tensor.numel() * tensor.element_size()
        if claimed > 2 * file_bytes:
            raise CheckpointError(f"{path}: its weights claim more bytes than the file holds "
                                  f"({file_bytes:,}); they share stored bytes, so it was not "
                                  "loaded.")
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: its weight {name} holds NaN or infinite values; "
                                  "the model that wrote it had diverged, use an earlier "
                                  "checkpoint or train again.")


GPT_SIZES = ("vocab_size", "context_length", "n_layer", "n_head", "n_embd")


def check_gpt_config(config: Any, where: str, keys: Mapping[str, str] | None = None,
                     entry: str = "entry") -> None:
    """The sizes a file states for a GPTConfig: positive integers, the width divisible by the
    heads. One sentence names the file (``where``) and its own key: ``keys`` maps GPTConfig's
    size fields to the file's names (GPT-2's config.json calls context_length n_positions)."""
    keys = keys or {name: name for name in GPT_SIZES}
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} holds no config (a dict of the model's sizes); make "
                              "the file again with the script that wrote it.")
    for key in keys.values():
        value = config.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            problem = "is missing" if value is None else f"is {value!r:.40}"
            raise CheckpointError(f"{where}: its {entry} '{key}' {problem}; it must be a "
                                  "positive integer.")
    n_embd, n_head = config[keys["n_embd"]], config[keys["n_head"]]
    if n_embd % n_head:
        raise CheckpointError(f"{where}: its {entry} '{keys['n_embd']}' ({n_embd}) is not "
                              f"divisible by '{keys['n_head']}' ({n_head}).")


@contextmanager
def invalid_config(path: str | Path, config: Any) -> Iterator[dict]:
    """The checkpoint's config dict, its sizes checked (``check_gpt_config``); an error from
    rebuilding the config or tokenizer from it becomes one sentence naming the file."""
    check_gpt_config(config, str(path), entry="config entry")
    try:
        yield config
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid config or tokenizer: {e}") from None


def check_config_sizes(path: str | Path, state_dict: Mapping[str, Any], n_layer: int,
                       model_vocab: int, tokenizer_vocab: int) -> None:
    """The sizes a config claims fit its file, before checkpoint.py builds its model on the
    meta device to compare shapes: the tokenizer's ids fit the model's vocabulary, and every
    layer owns tensors in the file, so a config cannot declare more layers than it holds."""
    if tokenizer_vocab > model_vocab:
        raise CheckpointError(f"{path}: its tokenizer has {tokenizer_vocab} tokens but "
                              f"the model only {model_vocab}.")
    if n_layer > len(state_dict):
        raise CheckpointError(f"{path}: its config declares {n_layer} layers but the file "
                              f"holds only {len(state_dict)} tensors.")


@contextmanager
def weights_mismatch(path: str | Path) -> Iterator[None]:
    """Turn ``load_state_dict``'s name/shape mismatch into one sentence."""
    try:
        yield
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{path} does not match this model: {detail}") from None


# ---------------------------------------------------------------------------- metadata


def check_metadata(path: str | Path, name: str, value: Any, ok: bool,
                   remedy: str = "make the file again with the script that wrote it") -> None:
    """One sentence for a metadata entry that a loader cannot use (``ok`` is False).

    A hand-edited or foreign file then fails here, naming the entry, rather than with a
    TypeError or KeyError deep inside the loader, which the app could not show.
    """
    if not ok:
        problem = "is missing" if value is None else f"is invalid ({value!r:.60})"
        raise CheckpointError(f"{path}: its metadata entry '{name}' {problem}; {remedy}.")


def checkpoint_metadata(ckpt: dict, path: str | Path) -> dict:
    """The checkpoint's metadata dict (one sentence if it is not a dict)."""
    meta = ckpt.get("metadata", {})
    check_metadata(path, "metadata", meta, isinstance(meta, dict))
    return meta


def _rank_matches_tensors(r: Any, state_dict: Mapping[str, Any]) -> bool:
    """Every saved adapter has rank ``r``: lora_A is [r, in], lora_B is [out, r]. (The rank
    decides what apply_lora allocates, so it must be what the file holds.)"""
    for name, tensor in state_dict.items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("lora_A", "lora_B") and not (
                isinstance(tensor, torch.Tensor) and tensor.dim() == 2
                and tensor.shape[0 if leaf == "lora_A" else 1] == r):
            return False
    return True


def adapter_metadata(ckpt: dict, path: str | Path, base: str | Path | None
                     ) -> tuple[dict, str, str | Path]:
    """(LoRA settings, base fingerprint, base path) of an adapter checkpoint, all checked.

    The settings are apply_lora's {"r", "alpha", "dropout", "targets"}; the base path is
    ``base`` when given, else the one stored (the path the adapters were trained on).
    """
    meta = checkpoint_metadata(ckpt, path)
    lora = meta.get("lora")
    check_metadata(path, "lora", lora, isinstance(lora, dict))
    r, alpha, dropout, targets = (lora.get(k) for k in ("r", "alpha", "dropout", "targets"))
    check_metadata(path, "lora.r", r, isinstance(r, int) and not isinstance(r, bool) and r > 0
                   and _rank_matches_tensors(r, ckpt["state_dict"]))
    check_metadata(path, "lora.alpha", alpha, is_number(alpha))
    check_metadata(path, "lora.dropout", dropout,
                   dropout is None or (is_number(dropout) and 0 <= dropout < 1))
    check_metadata(path, "lora.targets", targets, isinstance(targets, list | tuple)
                   and len(targets) > 0 and all(isinstance(t, str) for t in targets))
    fingerprint = meta.get("base_fingerprint")
    check_metadata(path, "base_fingerprint", fingerprint, isinstance(fingerprint, str))
    if base is None:
        base = meta.get("base_path")
        check_metadata(path, "base_path", base, isinstance(base, str))
    return lora, fingerprint, base


# ---------------------------------------------------------------------------- resume state


def _is_int(value: Any, low: int) -> bool:
    return is_int(value) and value >= low


def resume_settings(ckpt: dict, path: str | Path, build: Callable[..., Any]) -> Any:
    """The training settings of a resume state (``build(**saved)``: main.py's TrainConfig),
    once everything ``TrainingRun.resume`` reads is there with its type; a hand-edited or
    damaged state file is one sentence naming it and the entry."""
    training, meta = ckpt.get("training"), checkpoint_metadata(ckpt, path)
    remedy = "start the run again without --resume"
    check_metadata(path, "training", training, isinstance(training, dict), remedy)
    optimizer, rng, best = (training.get(k) for k in ("optimizer", "rng", "best_val"))
    entries = {
        "training.step": (training.get("step"), _is_int(training.get("step"), 0)),
        "training.optimizer": (optimizer, isinstance(optimizer, dict)
                               and isinstance(optimizer.get("state"), dict)
                               and isinstance(optimizer.get("param_groups"), list)),
        "training.rng": (rng, isinstance(rng, dict) and isinstance(rng.get("torch"),
                                                                   torch.Tensor)
                         and rng["torch"].dtype == torch.uint8),
        "training.elapsed": (training.get("elapsed"), is_number(training.get("elapsed", 0.0))),
        "training.best_val": (best, best is None or (isinstance(best, list | tuple)
                                                     and len(best) == 2 and is_number(best[0])
                                                     and _is_int(best[1], 0))),
        "batch_size": (meta.get("batch_size"), _is_int(meta.get("batch_size"), 1)),
        "train_config": (meta.get("train_config"), isinstance(meta.get("train_config"), dict)),
    }
    for name, (value, ok) in entries.items():
        check_metadata(path, name, value, ok, remedy)
    try:
        return build(**meta["train_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its training settings are invalid ({e}); "
                              f"{remedy}.") from None
