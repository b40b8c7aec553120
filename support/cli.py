"""What every script shares at its command line: the one ``__main__`` wrapper."""

from __future__ import annotations

import sys
from collections.abc import Callable

# Everything a user can cause and fix: bad flags or files (ValueError, including CheckpointError
# and DataFileError), missing files (FileNotFoundError, including DataMissingError), and an
# optional package that is not installed (ImportError). Anything else is a bug: let it show.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)
INTERRUPTED = 130  # the shell's exit status after Ctrl-C (128 + SIGINT)


def run(main: Callable[[], int | None]) -> None:
    """Run a script's ``main()``: a user error is one line on stderr, Ctrl-C exits 130."""
    try:
        sys.exit(main())
    except USER_ERRORS as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:  # outside training, whose Ctrl-C saves and stops by itself
        print("Interrupted; the files already written are kept.", file=sys.stderr)
        sys.exit(INTERRUPTED)
