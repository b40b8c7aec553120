"""Edge checks: one clear sentence for every setting or input a chapter cannot use."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.errors import DataFileError, DataMissingError

# ---------------------------------------------------------------------------- batches of examples


def check_example_loader(n_examples: int, batch_size: int, training: bool, unit: str,
                         too_few: str) -> None:
    """data_utils.example_loader: a batch size, and enough training examples for one batch."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if training and n_examples < batch_size:
        raise ValueError(f"{n_examples} training {unit} cannot fill one batch of "
                         f"{batch_size}; {too_few} or a smaller --batch-size.")


# ---------------------------------------------------------------------------- token files


def check_one_source(text: list[str] | None, hf_dataset: str | None) -> None:
    """corpus.corpus_from_args: --text or --hf-dataset, never both."""
    if text and hf_dataset:
        raise ValueError("Give --text or --hf-dataset, not both.")


def check_text_files(given: str, root: Path, files: list[Path], include: str) -> None:
    """A --text path exists and, when it is a folder, holds files --include matches."""
    if not root.exists():
        raise DataMissingError(f"--text {given}: no such file or folder.")
    if root.is_dir() and not files:
        what = ("is an empty folder" if not any(root.iterdir()) else
                f"holds no file matching --include {include}")
        raise DataMissingError(f"--text {given} {what}; point it at text files or "
                               "change --include.")


def check_some_text(paths: list[str], n_files: int, skipped: list[tuple[str, str]]) -> None:
    """At least one of the --text files is UTF-8 text (``skipped``: (file, why) of the rest)."""
    if n_files == len(skipped):
        raise DataFileError(f"--text {' '.join(paths)}: none of its {n_files} files is UTF-8 "
                            f"text (e.g. {skipped[0][0]}: {skipped[0][1]}).")


def check_split_by_document(label: str, n_docs: int, nanogpt: bool) -> None:
    """Several documents split by document: never with --nanogpt-split, and three at least."""
    if nanogpt:
        raise DataFileError(f"--nanogpt-split cuts one text by characters, and "
                            f"{label} holds {n_docs} documents; leave it out.")
    if n_docs < 3:
        raise DataFileError(f"{label} holds {n_docs} readable documents: too few "
                            "for train, val and test splits by document; give one file "
                            "(split by characters) or at least three.")


def check_hf_field(name: str, field: str, row: dict) -> None:
    """The --hf-field a streamed dataset's rows hold their text in."""
    if field not in row:
        raise DataFileError(f"--hf-dataset {name} has no field '{field}' (it has "
                            f"{', '.join(row)}); name the text field with --hf-field.")


@contextmanager
def hf_dataset_readable(name: str) -> Iterator[None]:
    """A dataset that cannot be reached or read is one sentence naming --hf-dataset."""
    try:
        yield
    except (ConnectionError, OSError) as err:
        raise DataMissingError(f"--hf-dataset {name} could not be read ({err}).") from None


def check_unchanged(path: str, text: str | None, now: tuple[int, int],
                    surveyed: tuple[int, int]) -> None:
    """A text file is still what it was when it was surveyed: (size, modification time)."""
    if text is None or now != surveyed:
        raise DataFileError(f"{path} changed while it was being prepared; run again.")


def check_no_empty_split(counts: dict[str, dict], label: str, rule: str) -> None:
    """Every split of a prepared corpus holds tokens."""
    empty = [split for split, count in counts.items() if count["tokens"] == 0]
    if empty:
        raise DataFileError(f"The {empty[0]} split of {label} came out empty ({rule}); add "
                            "more documents.")


@contextmanager
def disk_space_for(folder: Path) -> Iterator[None]:
    """A full disk while token files are written is one sentence; other errors pass."""
    try:
        yield
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(folder).free / 1e6
        raise DataFileError(f"The disk filled up while writing token files to {folder} "
                            f"({free:,.0f} MB free); free some space or pass --prepared-dir "
                            "on another disk.") from None


def check_fills_window(splits: dict[str, dict], context_length: int, label: str) -> None:
    """Every split needed for training holds at least one window (context + 1 tokens)."""
    for split in ("train", "val"):
        tokens = splits[split]["tokens"]
        if tokens < context_length + 1:
            raise DataFileError(f"The {split} split of {label} holds {tokens:,} tokens, fewer "
                                f"than one window of {context_length + 1}; use more text or a "
                                "smaller --context-length.")


def check_vocab_filled(got: int, asked: int, label: str, sample_chars: int) -> None:
    """The tokenizer sample was rich enough to learn the --vocab-size asked for."""
    if got < asked:
        raise DataFileError(f"The {sample_chars:,} characters drawn from {label} fill only "
                            f"{got} of the {asked} tokens of --vocab-size; give a --vocab-size "
                            f"of at most {got}, or more text.")
