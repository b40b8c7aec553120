"""Command-line flags checked where they are typed, and ``--help`` that shows real defaults.

An argparse ``type`` runs on the text a user typed, so a bad value fails before any work and
argparse names the flag itself::

    p.add_argument("--top-p", type=number(above=0, at_most=1))
    $ python sample.py --top-p 2
    sample.py: error: argument --top-p: must be a finite number > 0 and <= 1, got 2

``HelpFormatter`` is argparse's ArgumentDefaultsHelpFormatter without the defaults that say
nothing: "(default: None)" (the help says what unset means), "(default: False)" of an on/off
flag and the "(default: )" of an empty text.
"""

from __future__ import annotations

import argparse
import math
import operator
import os
from collections.abc import Callable


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show every real default; leave out None, False and "", which tell a user nothing."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == "":
            return action.help
        return super()._get_help_string(action)


def whole(at_least: int, at_most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer >= ``at_least`` (and <= ``at_most`` when given)."""
    wanted = f">= {at_least}" + (f" and <= {at_most}" if at_most is not None else "")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < at_least or (at_most is not None and value > at_most):
            raise argparse.ArgumentTypeError(f"must be an integer {wanted}, got {text}")
        return value
    return parse


def number(at_least: float | None = None, above: float | None = None,
           at_most: float | None = None, below: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number within the given bounds (each one optional)."""
    every = [(at_least, ">=", operator.ge), (above, ">", operator.gt),
             (at_most, "<=", operator.le), (below, "<", operator.lt)]
    bounds = [(limit, sign, holds) for limit, sign, holds in every if limit is not None]
    wanted = " and ".join(f"{sign} {limit:g}" for limit, sign, _ in bounds)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and all(holds(value, limit) for limit, _, holds in bounds)):
            raise argparse.ArgumentTypeError(f"must be a finite number {wanted}".rstrip()
                                             + f", got {text}")
        return value
    return parse


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
positive_int = whole(at_least=1)
nonnegative_int = whole(at_least=0)
positive_float = number(above=0)
nonnegative_float = number(at_least=0)
fraction = number(at_least=0, below=1)  # e.g. a dropout probability


class FlagParser(argparse.ArgumentParser):
    """argparse with the two changes a user sees.

    A bad value is one sentence that names the flag (``error: --max-steps must be an integer
    >= 1, got 0``) rather than a usage block, and ``--help`` shows every real default
    (``HelpFormatter``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str) -> None:
        # argparse says "argument --max-steps: must be ..."; the user typed "--max-steps".
        flag, _, reason = message.partition(": ")
        if flag.startswith("argument ") and reason:
            flag = flag.removeprefix("argument ")
            message = f"{flag} {reason}" if reason.startswith("must ") else f"{flag}: {reason}"
        self.exit(2, f"error: {message}\n")
