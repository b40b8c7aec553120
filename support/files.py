"""Files that must not be half-written or trusted blindly.

- ``atomic_save``: write a temp file in the same folder, fsync it, rename it over the target,
  so a reader (or a crash) sees the old file or the new one, never half of one.
- ``check_writable``: find out before hours of training that the output cannot be written.
- ``safe_torch_load``: ``torch.load(..., weights_only=True)``, which refuses pickled code,
  with one sentence for every way a file can fail to load.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from support.errors import CheckpointError


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


def safe_torch_load(path: str | Path, missing_hint: str) -> Any:
    """What ``path`` holds, loaded without running any code it may carry.

    A missing file says how to make it (``missing_hint``); a file that asks to import and call
    something, or that is not a readable torch file at all, is one CheckpointError sentence.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: {missing_hint}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # the file asks to import and call something
            raise CheckpointError(f"{path} was refused: it contains Python objects that could "
                                  "run code, so it was not loaded.") from None
        raise CheckpointError(f"{path} is corrupted or not a checkpoint (unreadable pickle).") \
            from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise CheckpointError(f"{path} is corrupted or not a checkpoint ({type(e).__name__}).") \
            from None
