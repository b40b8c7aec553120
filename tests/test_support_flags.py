"""support/flags.py: flag types whose error names the flag, and --help with real defaults."""

import argparse

import pytest

from support.flags import HelpFormatter, number, whole


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo.py", formatter_class=HelpFormatter)
    p.add_argument("--steps", type=whole(1), default=10, help="how many")
    p.add_argument("--seed", type=whole(0, at_most=99), default=0, help="which")
    p.add_argument("--top-p", type=number(above=0, at_most=1), default=1.0, help="share")
    p.add_argument("--lr", type=number(), default=0.5, help="rate")
    p.add_argument("--base", default=None, help="a file; unset: the one stored")
    p.add_argument("--fast", action="store_true", help="go fast")
    p.add_argument("--note", default="", help="free text")
    return p


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "0", "must be an integer >= 1, got 0"),
    ("--steps", "2.5", "must be an integer >= 1, got 2.5"),
    ("--seed", "100", "must be an integer >= 0 and <= 99, got 100"),
    ("--top-p", "0", "must be a finite number > 0 and <= 1, got 0"),
    ("--top-p", "nan", "must be a finite number > 0 and <= 1, got nan"),
    ("--lr", "inf", "must be a finite number, got inf"),
    ("--lr", "fast", "must be a finite number, got fast"),
])
def test_a_bad_value_is_one_sentence_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit:
        parser().parse_args([flag, value])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == \
        f"demo.py: error: argument {flag}: {message}"


def test_good_values_come_back_typed():
    args = parser().parse_args(["--steps", "3", "--seed", "99", "--top-p", "1", "--lr=-2e-3"])
    assert (args.steps, args.seed, args.top_p, args.lr) == (3, 99, 1.0, -0.002)


def test_help_shows_real_defaults_only():
    text = " ".join(parser().format_help().split())
    for shown in ("how many (default: 10)", "which (default: 0)", "share (default: 1.0)"):
        assert shown in text
    for hidden in ("default: None", "default: False", "default: )"):
        assert hidden not in text
