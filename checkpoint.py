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
- Checked before trusted: the config is only a claim about the weights, so before a model of
  its size is built, the model is built on PyTorch's ``meta`` device (shapes, no memory) and
  every shape is compared with the saved tensors. A saved tensor's shape is a claim too (one
  number expanded to any shape survives ``torch.save``), so the tensors must own the bytes
  their shapes need, in a file that holds them uncompressed. What a file can make us
  allocate is bounded by the file itself.

The meta-device shape check is ``check_config_fits_weights`` below. The mechanics live one step
away: ``support/files.py`` (the atomic write, the safe load) and ``support/file_checks.py``
(every other way a file can be wrong, one sentence each, and ``load_weights``).

Adapter checkpoints (LoRA / QLoRA) store only their small tensors plus the base model's
``weights_fingerprint`` so they can refuse to load on top of the wrong base model;
``adapter_metadata`` checks what such a file says about its adapters and its base, so a
hand-edited one fails with one sentence.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from model import GPTConfig, GPTModel
from support.errors import CheckpointError
from support.file_checks import (
    check_config_sizes,
    check_structure,
    invalid_config,
    load_weights,
)
from support.files import atomic_save, safe_torch_load
from tokenizer import BPETokenizer

FORMAT = "llm-from-scratch"
VERSION = 1


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


def read_checkpoint(
    path: str | Path, kind: str | tuple[str, ...] | None = None,
    missing_hint: str = "run python main.py first"
) -> dict:
    """Load a checkpoint dict safely (no pickled code runs), checked to be one of ours (of
    ``kind``, or one of several kinds, when given)."""
    ckpt = safe_torch_load(path, missing_hint)
    check_structure(ckpt, path, kind, FORMAT, VERSION)
    return ckpt


class _SkipInit(TorchFunctionMode):
    """``torch.nn.init`` does nothing: a meta tensor has no values to fill. (On the meta
    device ``normal_`` would import torch's compiler stack, seconds, for nothing.)"""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensor = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__module__", None) == "torch.nn.init" and tensor.is_meta:
            return tensor
        return func(*args, **kwargs)


def meta_shapes(build: Callable[[], nn.Module]) -> dict[str, torch.Size]:
    """The shape of every tensor in ``build()``'s state dict, built on the meta device: the
    module gets its real shapes but no storage, however large it claims to be."""
    with torch.device("meta"), _SkipInit():
        return {name: t.shape for name, t in build().state_dict().items()}


def model_shapes(config: GPTConfig) -> dict[str, torch.Size]:
    """The shape of every tensor a GPTModel of ``config`` holds, without allocating it."""
    return meta_shapes(lambda: GPTModel(config))


def check_config_fits_weights(path: str | Path, state_dict: Mapping[str, Any], config: GPTConfig,
                              tokenizer_vocab: int, prefix: str = "",
                              shown: Callable[[str], tuple[str, bool]] = lambda n: (n, False)
                              ) -> None:
    """The config describes the saved tensors, before anything of its size is allocated.

    Every tensor a GPTModel of ``config`` has (its shapes built on the meta device: no memory)
    must be in ``state_dict`` under ``prefix`` with that shape. The sizes are checked first
    (``check_config_sizes``: a config with more layers than the file has tensors is refused
    before its shapes are built). ``shown`` names a tensor as the file does, and says whether
    the file stores it transposed (its shapes are then given reversed).
    """
    check_config_sizes(path, state_dict, config.n_layer, config.vocab_size, tokenizer_vocab)
    for name, shape in model_shapes(config).items():
        saved = state_dict.get(prefix + name)
        if not isinstance(saved, torch.Tensor) or saved.shape != shape:
            stored, transposed = shown(prefix + name)
            as_stored = (lambda s: tuple(s)[::-1]) if transposed else tuple
            found = as_stored(saved.shape) if isinstance(saved, torch.Tensor) else "nothing"
            raise CheckpointError(f"{path}: its config does not match its weights "
                                  f"({stored} should be {as_stored(shape)}, the file holds "
                                  f"{found}).")


def config_and_tokenizer(ckpt: dict, path: str | Path, weights_prefix: str = ""
                         ) -> tuple[GPTConfig, BPETokenizer]:
    """Rebuild the config and tokenizer stored in a checkpoint dict, checked against its weights.

    The GPT's tensors sit under ``weights_prefix`` in the state dict ("gpt." in a classifier).
    """
    with invalid_config(path, ckpt.get("config")) as entries:
        config = GPTConfig(**entries)
        tokenizer = BPETokenizer.from_dict(ckpt.get("tokenizer"))
    check_config_fits_weights(path, ckpt["state_dict"], config, tokenizer.vocab_size,
                              weights_prefix)
    return config, tokenizer


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[GPTModel, BPETokenizer, dict]:
    """Rebuild (model, tokenizer, metadata) from a base-model checkpoint, in eval mode."""
    ckpt = read_checkpoint(path, kind="gpt")
    config, tokenizer = config_and_tokenizer(ckpt, path)  # checked: now it is safe to build
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
