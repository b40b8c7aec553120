"""What every script shares at its command line: the one ``__main__`` wrapper.

Flag types and the parser that names a bad flag live in support/flags.py."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from support.errors import TrainingStopped

# Everything a user can cause and fix: bad flags or files (ValueError, including CheckpointError
# and DataFileError), missing files (FileNotFoundError, including DataMissingError), and an
# optional package that is not installed (ImportError); and paths the system refuses (OSError:
# permissions, a read-only disk). Anything else is a bug: let it show.
USER_ERRORS = (ValueError, FileNotFoundError, ImportError)
INTERRUPTED = 130  # the shell's exit status after Ctrl-C (128 + SIGINT)


def sentence(error: Exception) -> str:
    """The error's own sentence; for one the system raised about a path the user gave (no
    permission, a read-only disk, a folder where a file belongs, a missing folder), a
    sentence naming that path rather than Python's "[Errno 13] Permission denied: '...'"."""
    if isinstance(error, OSError) and error.errno is not None:
        where = f" {error.filename}" if error.filename else ""
        return f"Cannot use{where}: {error.strerror}; check the path and its permissions."
    return str(error)


def run(main: Callable[[], int | None]) -> None:
    """Run a script's ``main()``: a user error is one line on stderr, Ctrl-C exits 130 (a
    stopped finetune 130 or 143, saying what it kept), and output piped into a reader that
    stops early (``| head``) ends quietly."""
    try:
        sys.exit(main())
    except BrokenPipeError:  # the reader of our output has gone (python sample.py | head)
        # Python flushes stdout once more at exit, which would fail again: point it nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except (*USER_ERRORS, OSError) as e:
        sys.exit(f"error: {sentence(e)}")
    except TrainingStopped as e:  # a finetune stopped by Ctrl-C / SIGTERM: 130 / 143
        print(e, file=sys.stderr)
        sys.exit(128 + e.signal)
    except KeyboardInterrupt:  # outside training, whose Ctrl-C saves and stops by itself
        print("Interrupted; the files already written are kept.", file=sys.stderr)
        sys.exit(INTERRUPTED)
