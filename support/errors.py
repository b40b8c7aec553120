"""The errors a user can meet. Each carries one sentence that says what to change."""


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used (corrupt, foreign, unsafe, mismatched)."""


class DataMissingError(FileNotFoundError):
    """A data file is not available locally and could not be downloaded."""


class DataFileError(ValueError):
    """A data file exists but is not the expected file (checksum) or holds no usable rows."""
