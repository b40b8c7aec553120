"""Edge checks: one clear sentence for every setting a chapter function cannot use.

The chapters trust their callers; their entry points call one checker from here. A message a
user can meet from the command line names the flag they typed (``--top-k``), and, where the
same value can also come from a file or from Python, the field as well.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch


def is_int(value: Any) -> bool:
    """A whole number, and not a bool (which Python counts as an int)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """A real int or float (a bool is not a number here, though Python says it is an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- generation

MAX_NEW_TOKENS = 100_000  # about an hour on a CPU; the sequence and its cache grow with it
MAX_TEMPERATURE = 100.0  # far past this, logits / temperature overflow float32 (NaN probabilities)


def check_sampling(max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any,
                   prompt_tokens: int = 1) -> None:
    """The sampling settings of generation.generate_ids (flags of the same names)."""
    if not is_int(max_new_tokens) or not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"--max-new-tokens must be an integer from 0 to {MAX_NEW_TOKENS:,}, "
                         f"got {max_new_tokens!r}.")
    if not (is_number(temperature) and 0 <= temperature <= MAX_TEMPERATURE):
        raise ValueError(f"--temperature must be a number from 0 to {MAX_TEMPERATURE:g} (0 means "
                         f"greedy; above 2 the text is mostly noise), got {temperature!r}.")
    if top_k is not None and (not is_int(top_k) or top_k < 1):
        raise ValueError(f"--top-k must be an integer >= 1 (or unset), got {top_k!r}.")
    if top_p is not None and not (is_number(top_p) and 0 < top_p <= 1):
        raise ValueError(f"--top-p must be in (0, 1] (or unset), got {top_p!r}.")
    if prompt_tokens < 1:
        raise ValueError("generate_ids needs at least one prompt token.")


def check_logits(logits: torch.Tensor) -> None:
    """The model's next-token scores are numbers: NaN or inf weights make them NaN, and there is
    nothing to sample from (torch.multinomial's "probability tensor contains inf, nan")."""
    if not torch.isfinite(logits).all():
        raise ValueError("The model's next-token scores are NaN or infinite, so nothing can be "
                         "sampled: its weights are not all numbers (a training run that "
                         "diverged?); use a checkpoint whose training loss stayed finite.")


def check_prompt(prompt: Any, max_chars: int, can_start_empty: bool) -> None:
    """A prompt is text of at most ``max_chars``; an empty one needs a start token."""
    if not isinstance(prompt, str):
        raise ValueError(f"The prompt must be text, got {type(prompt).__name__}.")
    if len(prompt) > max_chars:
        raise ValueError(f"The prompt has {len(prompt):,} characters; the limit is "
                         f"{max_chars:,}. Shorten it.")
    if not prompt and not can_start_empty:
        raise ValueError("This tokenizer has no <|endoftext|> token to start from, so give a "
                         "non-empty prompt.")


# ---------------------------------------------------------------------------- model


def check_model_config(sizes: dict[str, Any], n_embd: int, n_head: int, dropout: Any) -> None:
    """GPTConfig's fields. ``sizes`` maps each integer field (main.py's flag of the same name
    with dashes) to its value; a float such as 8.0 would only fail deep inside nn.Embedding."""
    for name, value in sizes.items():
        flag = "--" + name.replace("_", "-")
        if not is_int(value):
            raise ValueError(f"{name} must be an integer ({flag}), got {value!r}.")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer ({flag}), got {value}.")
    if n_embd % n_head != 0:
        raise ValueError(f"n_embd ({n_embd}, --n-embd) must be divisible by n_head ({n_head}, "
                         "--n-head).")
    if not (is_number(dropout) and 0 <= dropout < 1):
        raise ValueError(f"dropout must be in [0, 1) (--dropout), got {dropout!r}.")


# ---------------------------------------------------------------------------- LoRA


def check_lora_layer(layer_name: str, in_features: Any, out_features: Any, r: Any, alpha: Any,
                     dropout: Any, already_wrapped: bool) -> None:
    """What LoRALayer needs: a linear-like layer not yet wrapped, and usable --rank / --alpha /
    --dropout."""
    if already_wrapped:
        raise ValueError("this layer already has a LoRA adapter; do not wrap it twice.")
    if not is_int(in_features) or not is_int(out_features):
        raise ValueError(f"LoRA wraps linear layers with in_features/out_features, "
                         f"got {layer_name}.")
    if not is_int(r) or r < 1:
        raise ValueError(f"LoRA rank r (--rank) must be a positive integer, got {r!r}.")
    if r > min(in_features, out_features):  # B A has rank <= min(in, out): more costs memory
        raise ValueError(f"LoRA rank r (--rank) must be at most {min(in_features, out_features)}"
                         f", the smaller side of the {in_features} x {out_features} {layer_name} "
                         f"it adapts, got {r:,}.")
    if not (is_number(alpha) and alpha > 0):  # 0 would silence the adapters
        raise ValueError(f"LoRA alpha must be positive (--alpha), got {alpha!r}.")
    if not (is_number(dropout) and 0.0 <= dropout < 1.0):
        raise ValueError(f"LoRA dropout must be in [0, 1) (--dropout), got {dropout!r}.")


def check_targets(targets: Sequence[str], found: bool, dense_lora: Sequence[str] = ()) -> None:
    """Layer names for apply_lora / quantize_model: at least one, and present in the model.

    ``dense_lora`` names LoRA-wrapped dense layers met by quantize_model: quantizing under an
    adapter would silently change what the adapter was trained on.
    """
    if not targets:
        raise ValueError("apply_lora needs at least one target module name (--targets).")
    if not found:
        raise ValueError(f"no module named any of {list(targets)} found in the model.")
    if dense_lora:
        raise ValueError(f"{dense_lora[0]} already has a LoRA adapter on a dense weight; "
                         "call quantize_model before apply_lora.")


def check_trainable(has_lora: bool, unmatched_extras: Iterable[str]) -> None:
    """freeze_all_but_lora: there are adapters to train, and every extra name matched."""
    if not has_lora:
        raise ValueError("the model has no LoRA layers; call apply_lora first.")
    if missing := sorted(unmatched_extras):
        raise ValueError(f"trainable_extra names match no parameters: {missing}.")


def check_mergeable(layer_name: str, mergeable: bool) -> None:
    """A LoRA update can only be folded into a dense float weight."""
    if not mergeable:
        raise ValueError(f"cannot merge LoRA into a quantized {layer_name}: its weight is "
                         "stored in 4 bits; keep the adapter separate (or merge into a dense "
                         "copy).")


# ---------------------------------------------------------------------------- quantization


def check_quantizable(weight: Any, blocksize: Any) -> None:
    """quantize_nf4's input: a non-empty finite float tensor and a positive block size."""
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        found = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"can only quantize a floating-point tensor, got {found}.")
    if weight.numel() == 0:
        raise ValueError("cannot quantize an empty tensor.")
    if not is_int(blocksize) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer, got {blocksize!r}.")
    if weight.device.type != "meta" and not torch.isfinite(weight).all():  # meta: no values
        raise ValueError("cannot quantize a tensor that contains NaN or inf.")


def check_quantize_request(backend: Any, backends: Sequence[str], targets: Sequence[str],
                           found: bool, dense_lora: Sequence[str]) -> None:
    """quantize_model's request: a known --backend, and targets as check_targets wants them."""
    if backend not in backends:
        raise ValueError(f"backend (--backend) must be one of {tuple(backends)}, "
                         f"got {backend!r}.")
    check_targets(targets, found, dense_lora)
