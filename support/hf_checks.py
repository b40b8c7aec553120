"""Checks at the edges of hf_gpt2.py and export_hf.py, on plain values and dicts.

Each names the first thing that our GPTModel / BPETokenizer cannot represent exactly (a foreign
config.json, a tokenizer numbered unlike GPT-2) or that export_hf.py cannot write, in one
sentence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from support.checkpoint_checks import check_gpt_config, check_weights
from support.errors import CheckpointError

TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # one function, three names
# GPTConfig's size fields under their config.json names.
HF_SIZES = {"vocab_size": "vocab_size", "context_length": "n_positions", "n_layer": "n_layer",
            "n_head": "n_head", "n_embd": "n_embd"}


def check_exportable(kind: str | None, kinds: list[str], path: str | Path) -> None:
    """One sentence for a checkpoint kind export_hf.py has no loader for."""
    if kind not in kinds:
        raise CheckpointError(f"{path} holds a '{kind}' model; export_hf.py exports "
                              f"{', '.join(kinds)} checkpoints.")


def read_gpt2_config(folder: Path) -> dict:
    """config.json's settings, once they are JSON, sizes we can build and a GPT-2 we compute
    exactly; else one sentence naming the file and its key."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not a valid JSON file ({e}).") from None
    check_gpt_config(config, str(path), HF_SIZES)
    check_gpt2_config(config, folder)
    return config


def read_weights(path: Path, to_ours: Callable[[dict], dict[str, torch.Tensor]]
                 ) -> dict[str, torch.Tensor]:
    """The safetensors file's tensors under our names (``to_ours``), checked as our own
    checkpoints' are (finite floats that the file's bytes back)."""
    try:
        state = to_ours(load_file(path))
    except (SafetensorError, OSError, ValueError) as e:  # truncated, not safetensors, ...
        raise CheckpointError(f"{path} is corrupted or not a safetensors file ({e}).") from None
    check_weights({k: v for k, v in state.items() if v is not None}, path, path.stat().st_size)
    return state


def check_gpt2_config(config: dict, folder: Path) -> None:
    """One sentence for a config.json that is not a GPT-2 our GPTModel can compute exactly."""
    n_embd = config.get("n_embd")
    problems = {
        "model_type": config.get("model_type") == "gpt2",
        "activation_function": config.get("activation_function", "gelu_new") in TANH_GELU,
        "n_inner": config.get("n_inner") in (None, 4 * (n_embd or 0)),
        "layer_norm_epsilon": config.get("layer_norm_epsilon", 1e-5) == 1e-5,
        "scale_attn_weights": config.get("scale_attn_weights", True) is True,
        "scale_attn_by_inverse_layer_idx": not config.get("scale_attn_by_inverse_layer_idx"),
        "add_cross_attention": not config.get("add_cross_attention"),
        "tie_word_embeddings": config.get("tie_word_embeddings", True) is True,
    }
    wrong = [name for name, ok in problems.items() if not ok]
    if wrong:
        raise ValueError(f"{folder}/config.json is not a GPT-2 this project's GPTModel computes "
                         f"exactly: {wrong[0]} = {config.get(wrong[0])!r}.")


def check_gpt2_vocab(vocab: dict[str, int], merges: list[list[str]], specials: dict[str, int],
                     folder: Path) -> None:
    """GPT-2's id layout: 256 single-byte tokens at ids 0-255, merge i's token at 256 + i, the
    special tokens after them. BPETokenizer numbers tokens this way (its id is its rank)."""
    byte_ids = {i for token, i in vocab.items() if len(token) == 1 and token not in specials}
    plain = len(vocab) - sum(token in vocab for token in specials)
    ok = byte_ids == set(range(256)) and plain == 256 + len(merges) and all(
        len(pair) == 2 and vocab.get(pair[0] + pair[1]) == 256 + i
        for i, pair in enumerate(merges))
    first_special = 256 + len(merges)
    if not ok or any(i < first_special for i in specials.values()):
        raise ValueError(f"{folder}'s tokenizer does not number its tokens like GPT-2 (bytes "
                         "0-255, then one id per merge in merge order, then the special "
                         "tokens), so BPETokenizer cannot represent it.")
