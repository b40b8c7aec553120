"""One safe, self-describing checkpoint format for every model the project saves.

A checkpoint is a single ``torch.save`` file holding only plain Python types and tensors::

    {"format": "llm-from-scratch", "version": 1, "kind": "gpt",
     "config": {...GPTConfig...}, "tokenizer": {...BPETokenizer.to_dict()...},
     "state_dict": {...weights...}, "metadata": {...training facts...}}

Why this shape:
- Self-describing: config and tokenizer travel with the weights, so one file is enough to
  rebuild the model and talk to it.
- Safe: files are read with ``torch.load(..., weights_only=True)``, which refuses pickled code,
  so a checkpoint downloaded from the internet can never run anything.
- Atomic: we write a temp file in the same folder, fsync it, and rename it over the target.
  A crash or kill mid-save leaves the previous checkpoint intact.

Adapter checkpoints (LoRA / QLoRA) store only their small tensors plus the base model's
``weights_fingerprint`` so they can refuse to load on top of the wrong base model;
``adapter_metadata`` checks what such a file says about its adapters and its base, so a
hand-edited one fails with one sentence.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from model import GPTConfig, GPTModel
from support.errors import CheckpointError
from tokenizer import BPETokenizer

FORMAT = "llm-from-scratch"
VERSION = 1


def _refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a file name for the checkpoint.")


def check_writable(path: str | Path) -> None:
    """One sentence now, not after the training, if a checkpoint cannot be written to ``path``."""
    path = Path(path)
    _refuse_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise CheckpointError(f"Cannot write {path}: {e.strerror or e}.") from None


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    _refuse_folder(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"Cannot write {path}: {e.strerror or e}.") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CheckpointError(
            f"Could not write {path} ({e.strerror or e}); the previous file is untouched."
        ) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_checkpoint(
    path: str | Path, kind: str | None = None, missing_hint: str = "run python main.py first"
) -> dict:
    """Load a checkpoint dict safely, with one clear sentence for every way it can be wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: {missing_hint}.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # the file asks to import and call something
            raise CheckpointError(f"{path} was refused: it contains Python objects that could "
                                  "run code, so it was not loaded.") from None
        raise CheckpointError(f"{path} is corrupted or not a checkpoint (unreadable pickle).") \
            from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise CheckpointError(f"{path} is corrupted or not a checkpoint ({type(e).__name__}).") \
            from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an llm-from-scratch checkpoint.")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"{path} has format version {ckpt.get('version')}, "
                              f"this code reads version {VERSION}.")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path} holds a '{ckpt.get('kind')}' model, expected '{kind}'.")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path} is not a complete checkpoint: it holds no weights "
                              "('state_dict').")
    return ckpt


def make_checkpoint(kind: str, state_dict: dict, config: GPTConfig, tokenizer: BPETokenizer,
                    **metadata: Any) -> dict:
    """The dict every checkpoint file holds (see the module docstring)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "metadata": metadata,
    }


def save_checkpoint(path: str | Path, model: GPTModel, tokenizer: BPETokenizer,
                    **metadata: Any) -> None:
    """Save a base language model with its config, tokenizer and training metadata."""
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    model = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    atomic_save(make_checkpoint("gpt", model.state_dict(), model.config, tokenizer, **metadata),
                path)


def config_and_tokenizer(ckpt: dict, path: str | Path) -> tuple[GPTConfig, BPETokenizer]:
    """Rebuild the config and tokenizer stored in a checkpoint dict."""
    try:
        config = GPTConfig(**ckpt["config"])
        tokenizer = BPETokenizer.from_dict(ckpt["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an invalid config or tokenizer: {e}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(f"{path}: its tokenizer has {tokenizer.vocab_size} tokens but "
                              f"the model only {config.vocab_size}.")
    return config, tokenizer


def load_weights(module: nn.Module, state_dict: dict, path: str | Path,
                 strict: bool = True) -> None:
    """``load_state_dict`` that turns name/shape mismatches into one clear CheckpointError."""
    try:
        module.load_state_dict(state_dict, strict=strict)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"{path} does not match this model: {detail}") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[GPTModel, BPETokenizer, dict]:
    """Rebuild (model, tokenizer, metadata) from a base-model checkpoint, in eval mode."""
    ckpt = read_checkpoint(path, kind="gpt")
    config, tokenizer = config_and_tokenizer(ckpt, path)
    model = GPTModel(config)
    load_weights(model, ckpt["state_dict"], path)
    return model.to(map_location).eval(), tokenizer, ckpt.get("metadata", {})


def weights_fingerprint(state_dict: dict[str, torch.Tensor]) -> str:
    """A sha256 over names, shapes and values: the identity of a set of weights."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------- metadata


def check_metadata(path: str | Path, name: str, value: Any, ok: bool) -> None:
    """One sentence for a metadata entry that a loader cannot use (``ok`` is False).

    A hand-edited or foreign file then fails here, naming the entry, rather than with a
    TypeError or KeyError deep inside the loader, which the app could not show.
    """
    if not ok:
        problem = "is missing" if value is None else f"is invalid ({value!r:.60})"
        raise CheckpointError(f"{path}: its metadata entry '{name}' {problem}; make the file "
                              "again with the script that wrote it.")


def checkpoint_metadata(ckpt: dict, path: str | Path) -> dict:
    """The checkpoint's metadata dict (one sentence if it is not a dict)."""
    meta = ckpt.get("metadata", {})
    check_metadata(path, "metadata", meta, isinstance(meta, dict))
    return meta


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
    check_metadata(path, "lora.r", r, isinstance(r, int) and not isinstance(r, bool) and r > 0)
    check_metadata(path, "lora.alpha", alpha, _is_number(alpha))
    check_metadata(path, "lora.dropout", dropout,
                   dropout is None or (_is_number(dropout) and 0 <= dropout < 1))
    check_metadata(path, "lora.targets", targets, isinstance(targets, list | tuple)
                   and len(targets) > 0 and all(isinstance(t, str) for t in targets))
    fingerprint = meta.get("base_fingerprint")
    check_metadata(path, "base_fingerprint", fingerprint, isinstance(fingerprint, str))
    if base is None:
        base = meta.get("base_path")
        check_metadata(path, "base_path", base, isinstance(base, str))
    return lora, fingerprint, base
