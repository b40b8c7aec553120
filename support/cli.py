"""What every script shares at its command line: the ``__main__`` wrapper, flag types and the
parser that reports a bad flag value as one sentence naming the flag."""

from __future__ import annotations

import argparse
import math
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


# ---------------------------------------------------------------------------- flag types
# argparse calls these on the text a user typed; the message completes "--flag ...".

def _integer_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text}")
        return value

    parse.__name__ = f"integer >= {low}"  # what argparse would name the type
    return parse


def _number(accepts: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails every rule below, as a typo should
        if not accepts(value):  # written so that nan fails too
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    parse.__name__ = rule
    return parse


positive_int = _integer_at_least(1)
nonnegative_int = _integer_at_least(0)
positive_float = _number(lambda x: 0 < x < math.inf, "a number > 0")
nonnegative_float = _number(lambda x: 0 <= x < math.inf, "a number >= 0")
fraction = _number(lambda x: 0 <= x < 1, "a number in [0, 1)")  # e.g. a dropout probability


class FlagParser(argparse.ArgumentParser):
    """argparse with two changes a user sees.

    A bad value is one sentence that names the flag (``error: --max-steps must be an integer
    >= 1, got 0``) rather than a usage block, and ``--help`` shows each flag's default unless it
    is None: a flag whose default depends on something else says so in its own help text.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=_DefaultsUnlessNone, **kwargs)

    def error(self, message: str) -> None:
        # argparse says "argument --max-steps: must be ..."; the user typed "--max-steps".
        flag, _, reason = message.partition(": ")
        if flag.startswith("argument ") and reason:
            flag = flag.removeprefix("argument ")
            message = f"{flag} {reason}" if reason.startswith("must ") else f"{flag}: {reason}"
        self.exit(2, f"error: {message}\n")


class _DefaultsUnlessNone(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)
