"""The errors a user can meet. Each carries one sentence that says what to change."""

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used (corrupt, foreign, unsafe, mismatched)."""


class DataMissingError(FileNotFoundError):
    """A data file is not available locally and could not be downloaded."""


class DataFileError(ValueError):
    """A data file exists but is not the expected file (checksum) or holds no usable rows."""


class TrainingStopped(Exception):
    """Ctrl-C or SIGTERM stopped a run that keeps nothing half-done; the sentence says what
    was kept, and the script exits 128 + ``signal`` (130, 143), as main.py does."""

    def __init__(self, message: str, signal: int) -> None:
        super().__init__(message)
        self.signal = signal


def first_line(error: BaseException, limit: int = 200) -> str:
    """What a sentence quotes of an error it wraps: the first line of its text, cut at
    ``limit`` characters ("no details" where it has none)."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else "no details"


Kinds = type[BaseException] | tuple[type[BaseException], ...]


@contextmanager
def one_sentence(error: type[Exception], sentences: Mapping[Kinds, Callable[[Any], str]]
                 ) -> Iterator[None]:
    """Re-raise an exception from the block as ``error`` with the sentence for its kind
    (``sentences`` maps kinds to sentences; the first kind that matches wins), without the
    traceback: what torch, json or the filesystem raised becomes what the user can fix."""
    try:
        yield
    except Exception as e:
        sentence = next((say for kinds, say in sentences.items() if isinstance(e, kinds)), None)
        if sentence is None:  # not one the caller can name: a bug, let it show
            raise
        raise error(sentence(e)) from None
