"""Hugging Face model folders, in (``resolve``: a local folder, or a Hub name downloaded once
into the Hugging Face cache) and out (export_hf.py --out).

Out never replaces a file the exporter did not write (``--out .`` once wrote over the project's
README.md): its own files are listed with their SHA-256 in a manifest (``MANIFEST``), so an
edited one is refused too. The export is staged beside --out and moved in by renames, so a
crash leaves the old folder or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from support.errors import one_sentence
from support.files import atomic_write, cannot_write, current_umask

# ---------------------------------------------------------------------------- in: from_hf

# The files from_hf can read; a download fetches only these (not the TF / Flax / ONNX copies).
WEIGHTS = "model.safetensors"
FILES = ["config.json", WEIGHTS, "tokenizer.json", "vocab.json", "merges.txt"]


def check_folder(folder: Path) -> Path:
    """The folder, if it has a config, safetensors weights and a GPT-2-format tokenizer."""
    has_tokenizer = (folder / "tokenizer.json").is_file() or all(
        (folder / name).is_file() for name in ("vocab.json", "merges.txt"))
    missing = [name for name in ("config.json", WEIGHTS) if not (folder / name).is_file()]
    missing += [] if has_tokenizer else ["tokenizer.json (or vocab.json + merges.txt)"]
    if missing:
        raise FileNotFoundError(f"{folder} is not a Hugging Face GPT-2 folder: it has no "
                                f"{', '.join(missing)}.")
    return folder


def resolve(name_or_path: str | Path) -> Path:
    """A local folder as it is, or a Hub name ("gpt2", "gpt2-medium") downloaded once, cached."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return check_folder(path)
    name = str(name_or_path)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"{name} is neither a model folder nor a Hugging Face Hub name "
                                "like gpt2 or openai-community/gpt2-medium.")
    from huggingface_hub import snapshot_download  # installed with datasets
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    with one_sentence(FileNotFoundError, {
            LocalEntryNotFoundError: lambda _: (
                f"Cannot download {name}: there is no network (or HF_HUB_OFFLINE=1 is set) and "
                "it is not in the Hugging Face cache yet; run once with a network to cache it, "
                "or pass the path of a folder holding its config.json, model.safetensors and "
                "tokenizer.json."),
            RepositoryNotFoundError: lambda _: (
                f"There is no model named {name} on the Hugging Face Hub (try gpt2, "
                "gpt2-medium, gpt2-large or gpt2-xl).")}):
        folder = snapshot_download(name, allow_patterns=FILES)
    return check_folder(Path(folder))


# ---------------------------------------------------------------------------- out: export_hf.py

MANIFEST = ".export_hf.json"  # {"written_by": "export_hf.py", "files": {name: [sha256, ...]}}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, list[str]] | None:
    """The files an earlier export wrote into ``folder`` (name -> accepted hashes), or None."""
    with suppress(OSError, ValueError, KeyError, TypeError, AttributeError):  # none, or not ours
        record = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return {str(name): list(hashes) for name, hashes in record["files"].items()}
    return None


def _write_manifest(folder: Path, files: dict[str, list[str]]) -> None:
    atomic_write(folder / MANIFEST,
                      json.dumps({"written_by": "export_hf.py", "files": files}, indent=1))


def _foreign_files(folder: Path, ours: dict[str, list[str]]) -> list[str]:
    """The files in ``folder`` the exporter did not write (or that changed since it did), by
    its manifest ``ours``."""
    foreign = []
    for path in sorted(folder.iterdir()):
        if path.name == MANIFEST and ours:
            continue
        if not (path.is_file() and path.name in ours and _sha256(path) in ours[path.name]):
            foreign.append(path.name)
    return foreign


def check_export_folder(out: str) -> Path:
    """``out`` as a folder the exporter may write, or one ValueError sentence naming --out."""
    return _checked_export_folder(out)[0]


def _checked_export_folder(out: str) -> tuple[Path, dict[str, list[str]]]:
    """check_export_folder's folder, with the manifest its check read: the files an earlier
    export wrote in it ({} when none)."""
    if not out.strip():
        raise ValueError("--out is empty; give the name of a new folder, e.g. --out hf-model.")
    folder = Path(out)
    with one_sentence(ValueError, cannot_write(f"--out {out}")):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not existing.is_dir():
            where = "is a file" if existing == folder else f"is inside {existing}, which is a file"
            raise ValueError(f"--out {out} {where}; give a folder name.")
        ours, foreign = {}, []
        if existing == folder:  # already there: it may hold only an earlier export's files
            ours = _manifest(folder) or {}
            foreign = _foreign_files(folder, ours)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more"
                                             if len(foreign) > 3 else "")
            raise ValueError(f"--out {out} holds files export_hf.py did not write ({shown}); "
                             "give a new or empty folder.")
        tempfile.TemporaryFile(dir=existing).close()  # writable, before the model is loaded
    return folder, ours


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder beside ``out`` to write the export into; removed if the block fails."""
    with one_sentence(ValueError, cannot_write(f"--out {out}")):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _ordinary_permissions(folder: Path) -> None:
    """mkdtemp makes a private folder; an export is an ordinary one (the umask applies)."""
    umask = current_umask()
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.iterdir():
        os.chmod(path, 0o666 & ~umask)


def publish(staging: Path, out: Path) -> list[Path]:
    """Move the files written in ``staging`` into ``out``; the files now in ``out`` that this
    export wrote. A new folder appears by one rename; in a folder of an earlier export each
    file is replaced by a rename, the manifest accepting the old and the new contents until
    all have moved."""
    names = sorted(p.name for p in staging.iterdir())
    new = {name: [_sha256(staging / name)] for name in names}
    with one_sentence(ValueError, {OSError: lambda e: (
            f"Could not write --out {out} ({e.strerror or e}); every file in it is either the "
            "old one or the new one.")}):
        _ordinary_permissions(staging)
        if not out.is_dir() or not any(out.iterdir()):
            _write_manifest(staging, new)
            os.replace(staging, out)  # an empty folder is replaced whole, in one rename
            return [out / name for name in names]
        _, old = _checked_export_folder(str(out))  # still ours: nobody wrote into it meanwhile
        _write_manifest(out, {name: old.get(name, []) + new.get(name, [])
                              for name in {*old, *new}})
        for name in names:
            os.replace(staging / name, out / name)
        _write_manifest(out, {**old, **new})
    return [out / name for name in names]
