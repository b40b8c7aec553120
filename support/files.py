"""Files that must not be half-written or trusted blindly: atomic writes (a reader, or a crash,
sees the old file or the new one, never half of one), and a torch load that runs no code and
allocates no more than the file's own bytes back."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from support.errors import CheckpointError, one_sentence


def _refuse_folder(path: Path) -> None:
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give a file name for the checkpoint.")


def cannot_write(what: str | Path) -> dict[type[OSError], Callable[[OSError], str]]:
    """``one_sentence``'s sentence for a place the system will not let us write."""
    return {OSError: lambda e: f"Cannot write {what}: {e.strerror or e}."}


def check_writable(path: str | Path) -> None:
    """One sentence now, not after the training, if a checkpoint cannot be written to ``path``."""
    path = Path(path)
    _refuse_folder(path)
    with one_sentence(CheckpointError, cannot_write(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that readers see either the old file or the new one."""
    path = Path(path)
    _refuse_folder(path)
    with one_sentence(CheckpointError, cannot_write(path)):
        fd, tmp = _temp_beside(path)
    with one_sentence(CheckpointError, {OSError: lambda e: (
            f"Could not write {path} ({e.strerror or e}); the previous file is untouched.")}):
        _write_and_rename(fd, tmp, path, lambda f: torch.save(obj, f))


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """``data`` (text as UTF-8) to ``path`` so that readers see either the old file or the new
    one; a failure is the system's OSError, naming the path."""
    path = Path(path)
    data = data.encode("utf-8") if isinstance(data, str) else data
    _write_and_rename(*_temp_beside(path), path, lambda f: f.write(data))


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _temp_beside(path: Path) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _write_and_rename(fd: int, tmp: str, path: Path, write: Callable[[Any], Any]) -> None:
    """``write(f)`` into the temp file, fsync it, rename it over ``path``; on any failure the
    temp file is removed and ``path`` keeps its old contents."""
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; ours is ordinary
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_zip_members(path: Path) -> None:
    """torch.save's zip holds its members uncompressed; each must lie inside the file.

    torch reads a member by allocating the size the zip's directory declares, so a member that
    is compressed, or declares more bytes than it stores, is refused before torch sees it."""
    with one_sentence(CheckpointError, {(zipfile.BadZipFile, OSError, ValueError, EOFError):
                                        lambda _: f"{path} is corrupted or not a checkpoint "
                                                  "(not a zip file as torch.save writes)."}):
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    size = path.stat().st_size
    for m in members:
        if m.compress_type != zipfile.ZIP_STORED or m.file_size != m.compress_size:
            raise CheckpointError(f"{path} was refused: its member {m.filename} is compressed "
                                  "(torch.save stores members uncompressed), so it was not "
                                  "unpacked.")
        if m.header_offset + m.compress_size > size:
            raise CheckpointError(f"{path} is truncated or corrupted: its member {m.filename} "
                                  "declares more bytes than the file holds.")


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor inside ``obj`` (dicts, lists, tuples), each container visited once."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            yield item
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.values() if isinstance(item, dict) else item)


def check_tensor_bytes(obj: Any, path: str | Path) -> None:
    """Every tensor holds the bytes its shape needs: an expanded or overlapping view would
    make whoever copies it allocate the shape's size from a few stored bytes."""
    for t in _tensors(obj):
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise CheckpointError(f"{path} was refused: it holds a tensor of shape "
                                  f"{tuple(t.shape)} backed by only "
                                  f"{t.untyped_storage().nbytes():,} bytes (an expanded view), "
                                  "so it was not loaded.")


def shown_path(path: str | Path) -> str:
    """A path as a sentence shows it: whole, or its start and its length when very long."""
    text = str(path)
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text):,} characters)"


def safe_torch_load(path: str | Path, missing_hint: str) -> Any:
    """What ``path`` holds, loaded without running any code it may carry.

    ``torch.load(weights_only=True)`` refuses pickled code. A missing file says how to make it
    (``missing_hint``); a file that asks to import and call something, that is not a readable
    torch file, or that declares more bytes than it holds (a compressed member, an expanded
    tensor) is one CheckpointError sentence.
    """
    path = Path(path)
    # pathlib lets a name longer than the filesystem allows through to an OSError here
    with one_sentence(CheckpointError, {OSError: lambda e: (
            f"No checkpoint at {shown_path(path)}: {e.strerror}.")}):
        is_dir, is_file = path.is_dir(), path.is_file()
    if is_dir:
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pass the .pth file.")
    if not is_file:
        raise FileNotFoundError(f"No checkpoint at {path}: {missing_hint}.")
    _check_zip_members(path)
    refused = (f"{path} was refused: it contains Python objects that could run code, so it "
               "was not loaded.")
    with one_sentence(CheckpointError, {
            pickle.UnpicklingError: lambda e: (  # "global": it asks to import and call something
                refused if "global" in str(e).lower()
                else f"{path} is corrupted or not a checkpoint (unreadable pickle)."),
            Exception: lambda e: (  # truncated zip, random bytes, ...
                f"{path} is corrupted or not a checkpoint ({type(e).__name__}).")}):
        obj = torch.load(path, map_location="cpu", weights_only=True)
    check_tensor_bytes(obj, path)
    return obj
