"""support/cli.py: flag types whose error names the flag, --help with real defaults, and flags
that take their bounds from the rule the chapter's own checker uses."""

import argparse
from dataclasses import asdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

import finetune_lora_classifier
import sample
from support.checks import Range, check_lora_layer, check_sampling, check_train_config
from support.cli import HelpFormatter, flag, whole
from training import TrainConfig


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demo.py", formatter_class=HelpFormatter)
    p.add_argument("--steps", type=whole(1), default=10, help="how many")
    p.add_argument("--seed", type=whole(0, at_most=99), default=0, help="which")
    p.add_argument("--top-p", type=flag(Range(above=0, at_most=1)), default=1.0, help="share")
    p.add_argument("--lr", type=flag(Range()), default=0.5, help="rate")
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


def lora(**setting):
    check_lora_layer("fc", 10**6, 10**6, **{"r": 2, "alpha": 4.0, "dropout": 0.0, **setting},
                     already_wrapped=False)


SHARED = [  # (a script's parse_args, its flag, the chapter's check of the value it gives)
    (sample.parse_args, "--temperature", lambda v: check_sampling(5, v, None, None)),
    (sample.parse_args, "--top-p", lambda v: check_sampling(5, 1.0, None, v)),
    (finetune_lora_classifier.parse_args, "--rank", lambda v: lora(r=v)),
    (finetune_lora_classifier.parse_args, "--alpha", lambda v: lora(alpha=v)),
    (finetune_lora_classifier.parse_args, "--dropout", lambda v: lora(dropout=v)),
    (finetune_lora_classifier.parse_args, "--max-steps",
     lambda v: check_train_config(asdict(TrainConfig()) | {"max_steps": v})),
]
EDGES = ["-1", "0", "0.5", "1", "1.0", "2", "64", "100", "100.5", "1e39", "nan", "inf", "-inf"]


def accepts(check, *args) -> bool:
    try:
        check(*args)
    except (ValueError, SystemExit):
        return False
    return True


@pytest.mark.parametrize("parse, flag, check", SHARED, ids=[flag for _, flag, _ in SHARED])
@given(text=st.sampled_from(EDGES) | st.integers(-5, 64).map(str)
       | st.floats(-2, 200).map(repr))
def test_a_flag_takes_exactly_what_its_checker_takes(parse, flag, check, text):
    """One rule, two doors: the parser lets a typed value through exactly when the chapter's
    checker accepts the same value from Python ("2" is the int 2 to both, "2.0" a float)."""
    typed = int(text) if text.lstrip("-").isdigit() else float(text)
    assert accepts(parse, [flag, text]) == accepts(check, typed), (flag, text)


def test_sample_asks_for_at_least_one_new_token_and_at_most_the_generation_limit(capsys):
    for text, ok in [("0", False), ("1", True), ("100000", True), ("100001", False)]:
        assert accepts(sample.parse_args, ["--max-new-tokens", text]) == ok
    assert capsys.readouterr().err.splitlines()[-1] == \
        "error: --max-new-tokens must be an integer >= 1 and <= 100000, got 100001"
