"""The edge checks of the finetuning chapters: user text, adapter files against bases.

Each check turns a value that would fail later, in a confusing way, into one sentence that
names what to change (the flag a user typed, or the file to pass). The chapters call them at
their edges and otherwise trust their inputs.
"""

from __future__ import annotations

from typing import Any

from support.errors import CheckpointError

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
