"""The edge checks of the finetuning chapters: user text, adapter files against bases.

Each check turns a value that would fail later, in a confusing way, into one sentence that
names what to change (the flag a user typed, or the file to pass). The chapters call them at
their edges and otherwise trust their inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from support.errors import CheckpointError

# ---------------------------------------------------------------------------- user text


def check_text(value: Any, complaint: str) -> None:
    """``value`` must be a str: else "<complaint>, got <type>." (the app passes what it gets)."""
    if not isinstance(value, str):
        raise ValueError(f"{complaint}, got {type(value).__name__}.")


# ---------------------------------------------------------------------------- adapter files


RETRAIN = {"lora-classifier": "python finetune_lora_classifier.py",
           "qlora-instruct": "python finetune_qlora_instructions.py"}


def _same_file(a: Any, b: Any) -> bool:
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def check_adapters_fit(path: Any, base: Any, ckpt: dict, lora: dict, *, fingerprint: str,
                       layers: list[Any]) -> None:
    """An adapter file (``path``) fits the base model ``base`` it is about to be put on.

    Checked before any adapter is allocated: the base's weights are the ones the adapters
    were trained on (``fingerprint``: the base's now), and the file's LoRA tensors hold as
    many numbers as r on the base's target ``layers`` (apply_lora wraps those with in_features
    and out_features) makes, so apply_lora
    allocates what the file's own bytes back (a file may declare any rank).
    """
    stored = ckpt["metadata"].get("base_path")
    if fingerprint != ckpt["metadata"]["base_fingerprint"]:
        if stored is not None and _same_file(base, stored):
            raise CheckpointError(
                f"{path} was trained on a different base model than the current {base}: "
                f"{base} has been trained again since (its weights' fingerprint differs); run "
                f"{RETRAIN.get(ckpt.get('kind'), 'the finetuning script')} again to train "
                "adapters for it, or pass --base with the base they were trained on.")
        raise CheckpointError(
            f"{path} was trained on a different base model than {base} (the weights' "
            f"fingerprints differ); pass the base it was trained on, {stored}.")
    held = sum(t.numel() for name, t in ckpt["state_dict"].items()
               if name.rsplit(".", 1)[-1] in ("lora_A", "lora_B"))
    sizes = [getattr(layer, "in_features", 0) + getattr(layer, "out_features", 0)
             for layer in layers]
    if held != lora["r"] * sum(sizes):
        raise CheckpointError(f"{path} does not match its base model: the adapter tensors "
                              f"differ from the ones r={lora['r']} on {lora['targets']} makes.")


def check_adapter_names(path: Any, lora: dict, names: tuple[set[str], set[str]]) -> None:
    """``names``: (the tensors in the adapter file, the tensors that train on the adapted
    base); the file must hold exactly those."""
    if names[0] != names[1]:
        raise CheckpointError(f"{path} does not match its base model: the adapter tensors "
                              f"differ from the ones r={lora['r']} on {lora['targets']} makes.")
