"""The errors a user can meet. Each carries one sentence that says what to change."""


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
