"""What every script shares at its command line: flag types, the parser, the ``__main__`` wrapper.

A flag type runs on the text a user typed, so a bad value fails before any work, and the
parser names the flag itself. A range is support/checks.py's ``Range``, the rule the chapter's
own checker uses for the same setting, so its bounds are written once::

    p.add_argument("--top-p", type=flag(TOP_P))
    $ python sample.py --top-p 2
    error: --top-p must be a finite number > 0 and <= 1, got 2
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import replace

from support import checks
from support.errors import TrainingStopped

# ---------------------------------------------------------------------------- flag types


def flag(rule: checks.Range) -> Callable[[str], int | float]:
    """An argparse type: the typed text as an int (``rule.whole``) or a float that obeys
    ``rule``; else "must be <the rule>, got <the text>"."""
    def parse(text: str) -> int | float:
        try:
            value = int(text) if rule.whole else float(text)
        except ValueError:
            value = None
        if not rule.holds(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    return parse


def whole(at_least: int, at_most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``at_least`` (and <= ``at_most`` when given)."""
    return flag(checks.Range(at_least=at_least, at_most=at_most, whole=True))


def train_size_arg(value: str) -> int:
    """--train-size: a number of training examples; 0 or "all" means the whole training split."""
    if value.lower() == "all":
        return 0
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', got '{value}'") from None
    if size < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 means all), got {size}")
    return size


MAX_SEED = 2**31 - 1  # the app's seed range; torch takes at most 2**64 - 1
NAME_MAX, PATH_MAX = 255, 4096  # bytes in one file or folder name, and in a whole path


def path_arg(text: str) -> str:
    """An argparse type: a file or folder path the system can hold. A longer one (a name over
    255 bytes, a path over 4,096) fails at the first stat() with "File name too long"."""
    encoded = os.fsencode(text)
    if len(encoded) > PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(b"/")):
        raise argparse.ArgumentTypeError(
            f"must be a path the system can hold (at most {NAME_MAX} bytes per file or folder "
            f"name, {PATH_MAX:,} in all), got one of {len(text):,} characters")
    return text


def text_arg(text: str) -> str:
    """An argparse type for free text (a prompt, a sentence): bytes that are not UTF-8 reach
    Python as lone surrogates ("surrogateescape") and would be printed back as the same invalid
    bytes; each becomes U+FFFD instead, so what the model reads and prints is valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run_name_arg(text: str) -> str:
    """--run-name: one folder name under runs/, so that nothing is written outside it."""
    if text in ("", ".", "..") or "/" in text or os.sep in text \
            or len(os.fsencode(text)) > NAME_MAX:
        raise argparse.ArgumentTypeError(
            f"must be one folder name inside runs/ (no '/', not '..'), got '{text}'")
    return text


seed_arg = whole(at_least=0, at_most=MAX_SEED)
positive_int = flag(checks.POSITIVE_INT)
nonnegative_int = flag(checks.NONNEGATIVE_INT)
positive_float = flag(checks.POSITIVE)
nonnegative_float = flag(checks.NONNEGATIVE)
fraction = flag(checks.FRACTION)  # e.g. a dropout probability
# generation's limit; a command asks for at least one new token (0 would print no sample)
new_tokens_arg = flag(replace(checks.NEW_TOKENS, at_least=1))


# ---------------------------------------------------------------------------- the parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in --help, but not None (the help says what unset means), the False
    of an on/off flag or an empty text: they tell a user nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


class FlagParser(argparse.ArgumentParser):
    """argparse whose bad value is one sentence naming the flag (``error: --max-steps must be
    an integer >= 1, got 0``), not a usage block, and whose --help shows every real default."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str) -> None:
        # argparse says "argument --max-steps: must be ..."; the user typed "--max-steps".
        name, _, reason = message.partition(": ")
        if name.startswith("argument ") and reason:
            name = name.removeprefix("argument ")
            message = f"{name} {reason}" if reason.startswith("must ") else f"{name}: {reason}"
        self.exit(2, f"error: {message}\n")


# ---------------------------------------------------------------------------- the __main__ wrapper

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
