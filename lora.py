"""LoRA: low-rank adapters for a frozen linear layer, written from scratch.

Finetuning every weight of a model means storing a full copy of it per task. LoRA (Hu et al.,
2021) keeps the pretrained weight W frozen and learns a low-rank update instead:

    y = W x + (B A x) * alpha / r        A: [r, in_features], B: [out_features, r]

With r much smaller than in/out, the adapter has r * (in + out) parameters instead of in * out.
A starts random and B starts at zero, so a fresh adapter leaves the model's output unchanged
and training starts exactly from the pretrained model. The shapes, initialisation and scaling
are the ones Hugging Face PEFT uses, so adapters are comparable with PEFT's.

After training, B A * alpha / r can be folded into W (`merge`) for zero-overhead inference, and
taken out again (`unmerge`). The wrapped layer only needs `in_features`, `out_features` and a
forward, so the same adapter also sits on a frozen 4-bit layer (quantization.Linear4bit or
bitsandbytes' Linear4bit): that combination is QLoRA. A quantized weight cannot be merged into.

Typical use:

    apply_lora(model, r=8, alpha=16)                  # wrap qkv / out_proj / fc_in / fc_out
    freeze_all_but_lora(model, trainable_extra=("head",))
    trainable, total = count_parameters(model)
    torch.save(lora_state_dict(model), "adapters.pt")  # only the A / B tensors

Adapter files: only the tensors that trained are saved (``lora_state_dict``, kilobytes where
the base is megabytes), with the LoRA settings and the base model's identity (its path and
``weights_fingerprint``). ``load_adapters`` is the one way such a file goes back onto its
base model, ours or GPT-2's (``hf_gpt2.load_base``): the LoRA classifier (classifier.py) and
the QLoRA instruction model (instructions.py) both load through it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from checkpoint import weights_fingerprint
from hf_gpt2 import load_base
from model import GPTModel
from support.checks import check_lora_layer, check_mergeable, check_targets, check_trainable
from support.file_checks import (
    adapter_metadata,
    check_adapter_names,
    check_adapters_fit,
    load_weights,
)
from tokenizer import BPETokenizer

# The linear layers of a GPT block: attention in/out projections and the MLP projections.
DEFAULT_TARGETS = ("qkv", "out_proj", "fc_in", "fc_out")

_ADAPTER_NAMES = ("lora_A", "lora_B")


def _mergeable_weight(linear: nn.Module) -> torch.Tensor | None:
    """The dense float weight [out, in] of a plain linear layer, or None for a quantized one.

    bitsandbytes' Linear4bit subclasses nn.Linear but holds packed uint8 data, and our own
    Linear4bit has no `weight` at all, so "is a dense float matrix of the right shape" is the
    test rather than the class.
    """
    weight = getattr(linear, "weight", None)
    if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point:
        return None
    if tuple(weight.shape) != (linear.out_features, linear.in_features):
        return None
    return weight


def _adapter_dtype_and_device(linear: nn.Module) -> tuple[torch.dtype, torch.device]:
    """Adapters live where the wrapped layer lives, in its (compute) precision."""
    tensors = list(linear.parameters()) + list(linear.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    weight = _mergeable_weight(linear)
    if weight is not None:
        return weight.dtype, device
    # A quantized base dequantizes to its compute dtype; train the adapters in that precision.
    return getattr(linear, "compute_dtype", None) or torch.float32, device


class LoRALayer(nn.Module):
    """A frozen linear-like layer plus a trainable low-rank update B @ A scaled by alpha / r."""

    def __init__(self, linear: nn.Module, r: int = 8, alpha: float = 16, dropout: float = 0.0):
        super().__init__()
        in_features = getattr(linear, "in_features", None)
        out_features = getattr(linear, "out_features", None)
        check_lora_layer(type(linear).__name__, in_features, out_features, r, alpha, dropout,
                         already_wrapped=isinstance(linear, LoRALayer))
        self.linear = linear
        self.linear.requires_grad_(False)
        self.in_features = in_features
        self.out_features = out_features
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        self.merged = False

        dtype, device = _adapter_dtype_and_device(linear)
        self.lora_A = nn.Parameter(torch.empty(r, in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r, dtype=dtype, device=device))
        # PEFT's initialisation: A like nn.Linear's default weight init (kaiming-uniform with
        # a = sqrt(5)), B zero, so B @ A = 0 and the wrapped model starts unchanged.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result = self.linear(x)
        if self.merged:  # the update already lives inside linear.weight
            return result
        h = self.dropout(x).to(self.lora_A.dtype)
        update = (h @ self.lora_A.T @ self.lora_B.T) * self.scaling
        return result + update.to(result.dtype)

    def delta_weight(self) -> torch.Tensor:
        """The dense update B @ A * alpha / r that merging adds to the weight, [out, in]."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def _weight_to_merge_into(self) -> torch.Tensor:
        weight = _mergeable_weight(self.linear)
        check_mergeable(type(self.linear).__name__, weight is not None)
        return weight

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight: one matmul per call instead of three."""
        weight = self._weight_to_merge_into()
        if not self.merged:
            weight += self.delta_weight().to(weight.dtype)
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the adapter back out of the base weight (exact up to float rounding)."""
        weight = self._weight_to_merge_into()
        if self.merged:
            weight -= self.delta_weight().to(weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, merged={self.merged}"


def lora_layers(model: nn.Module) -> list[LoRALayer]:
    return [m for m in model.modules() if isinstance(m, LoRALayer)]


def find_targets(model: nn.Module, targets: Iterable[str]
                 ) -> tuple[tuple[str, ...], list[tuple[nn.Module, str, str, nn.Module]]]:
    """(targets as a tuple, [(parent, child name, full dotted name, child)] for every child
    named in ``targets``). A target matches a child's own name ("qkv") or its full dotted name
    ("blocks.0.attn.qkv"). The base layer inside a LoRALayer is never a target."""
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    found = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, LoRALayer):
            continue  # its `.linear` is the frozen base, never a new target
        for child_name, child in parent.named_children():
            full_name = f"{parent_name}.{child_name}" if parent_name else child_name
            if child_name in targets or full_name in targets:
                found.append((parent, child_name, full_name, child))
    return targets, found


def apply_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: Iterable[str] = DEFAULT_TARGETS,
) -> nn.Module:
    """Wrap every linear-like child whose name is in `targets` in a LoRALayer, in place.

    Applying twice is a no-op: a child that already is a LoRALayer is left alone. Returns the
    model for chaining.
    """
    targets, found = find_targets(model, targets)
    check_targets(targets, found=bool(found))
    # Replace after the walk: mutating children while iterating named_modules is unsafe.
    for parent, child_name, _, child in found:
        if not isinstance(child, LoRALayer) and hasattr(child, "in_features"):
            setattr(parent, child_name, LoRALayer(child, r=r, alpha=alpha, dropout=dropout))
    return model


def freeze_all_but_lora(model: nn.Module, trainable_extra: Iterable[str] = ()) -> nn.Module:
    """Train only the adapters and any parameters under the modules named in trainable_extra.

    An extra name matches a module by its full dotted name or by one component of it, so
    ("head",) unfreezes `head.weight` and `classifier.head.bias` but not `lm_head.weight`
    (which is tied to the token embedding and must stay frozen).
    """
    trainable_extra = (trainable_extra,) if isinstance(trainable_extra, str) else tuple(
        trainable_extra
    )
    trainable: dict[str, bool] = {}
    used_extras: set[str] = set()
    for name, _ in model.named_parameters():
        module_path = name.rsplit(".", 1)[0] if "." in name else ""
        parts = module_path.split(".") if module_path else []
        hits = {
            extra for extra in trainable_extra
            if extra in parts or module_path == extra or module_path.startswith(extra + ".")
        }
        used_extras |= hits
        trainable[name] = name.rsplit(".", 1)[-1] in _ADAPTER_NAMES or bool(hits)
    check_trainable(bool(lora_layers(model)), set(trainable_extra) - used_extras)
    for name, param in model.named_parameters():
        param.requires_grad_(trainable[name])
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied or shared tensor is counted once.

    A 4-bit layer keeps its weight as packed bytes, which are not parameters (or, in
    bitsandbytes, a uint8 parameter of half the size). Such layers report the logical size
    of their weight, so the total stays the model's true parameter count.
    """
    trainable = total = 0
    seen: set[int] = set()
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        quant_state = getattr(param, "quant_state", None)  # bitsandbytes Params4bit
        numel = quant_state.shape.numel() if quant_state is not None else param.numel()
        total += numel
        if param.requires_grad:
            trainable += numel
    for module in model.modules():
        total += getattr(module, "quantized_numel", 0)  # quantization.Linear4bit
    return trainable, total


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (dense bases only)."""
    layers = lora_layers(model)
    for layer in layers:  # check every base first, so a failure leaves nothing half-merged
        layer._weight_to_merge_into()
    for layer in layers:
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora."""
    for layer in lora_layers(model):
        layer.unmerge()
    return model


# ---------------------------------------------------------------------------- adapter files
# Save the few tensors that trained; load them back onto the base they trained on.


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (lora_A / lora_B), keyed as in model.state_dict()."""
    return {
        key: value for key, value in model.state_dict().items()
        if key.rsplit(".", 1)[-1] in _ADAPTER_NAMES
    }


def load_adapters(ckpt: dict, path: str | Path, base: str | Path | None,
                  adapt: Callable[[GPTModel, dict], nn.Module]) -> tuple[nn.Module, BPETokenizer]:
    """Put an adapter checkpoint back onto the base model its adapters were trained on.

    An adapter file holds only the tensors that trained, the LoRA settings and the base
    model's identity (its path and ``weights_fingerprint``). Loading it: read the base
    (``base`` when given, else the stored path), check it is that base and that the file
    holds as many adapter numbers as its rank on those layers makes (a file can declare any
    rank; nothing is allocated before), let ``adapt`` wrap it exactly as training did
    (``adapt(base_model, lora_settings)``, which leaves trainable exactly the tensors that
    trained), check the file holds those tensors, and load them on top: the base weights stay.
    A different base or other tensors are one CheckpointError.
    """
    stored = adapter_metadata(ckpt, path, base)
    base_path = stored.base_path if base is None else base
    try:
        base_model, tokenizer, _ = load_base(base_path)  # ours (missing: "run main.py") or GPT-2's
    except FileNotFoundError as err:  # the path it stored is relative to where it trained
        if base is None:
            raise FileNotFoundError(f"{path} holds adapters for the base model {base_path}, which"
                                    " is not here: pass --base with that file's path.") from None
        raise err
    wrapped = [layer for *_, layer in find_targets(base_model, stored.lora["targets"])[1]]
    check_adapters_fit(path, base_path, ckpt, stored, layers=wrapped,
                       current_fingerprint=weights_fingerprint(base_model.state_dict()))
    model = adapt(base_model, stored.lora)  # now it allocates only what the file holds
    trained = {name for name, param in model.named_parameters() if param.requires_grad}
    check_adapter_names(path, stored.lora, set(ckpt["state_dict"]), trained)
    load_weights(model, ckpt["state_dict"], path, strict=False)  # the base weights stay
    return model, tokenizer
