"""support/checks.py: range rules written once, and the one sentence a value outside them gets.

The chapters' own checkers are tested where a user meets them (test_generation.py,
test_lora.py, test_training.py, ...); here: the rules themselves."""

import math
from dataclasses import asdict

import pytest

from support.checks import (
    FRACTION,
    NEW_TOKENS,
    POSITIVE,
    POSITIVE_INT,
    TEMPERATURE,
    TOP_P,
    Range,
    check_train_config,
    is_int,
    is_number,
    need,
)
from training import TrainConfig


@pytest.mark.parametrize("rule, words", [
    (POSITIVE_INT, "an integer >= 1"),
    (FRACTION, "a finite number >= 0 and < 1"),
    (TOP_P, "a finite number > 0 and <= 1"),
    (NEW_TOKENS, "an integer >= 0 and <= 100000"),
    (TEMPERATURE, "a finite number >= 0 and <= 100"),
    (Range(at_least=0, at_most=2**31 - 1, whole=True), "an integer >= 0 and <= 2147483647"),
    (Range(), "a finite number"),
])
def test_a_rule_says_itself_as_the_flag_types_do(rule, words):
    assert str(rule) == words


@pytest.mark.parametrize("rule, good, bad", [
    (POSITIVE_INT, [1, 7, 10**30], [0, -1, 1.0, True, "1", None]),
    (FRACTION, [0, 0.0, 0.5, 0.999], [1, 1.0, -1e-9, math.nan, True, "0.5"]),
    (POSITIVE, [1e-300, 3, 10**400], [0, -2.5, math.inf, math.nan, False]),
    (TEMPERATURE, [0, 2.0, 100], [100.01, -0.1, 1e39, math.inf, "hot"]),
    (NEW_TOKENS, [0, 100_000], [-1, 100_001, 10**12, 5.0]),
])
def test_a_rule_holds_for_exactly_its_values(rule, good, bad):
    assert all(rule.holds(value) for value in good)
    assert not any(rule.holds(value) for value in bad)


def test_a_value_outside_its_rule_is_one_sentence_naming_it():
    with pytest.raises(ValueError) as error:
        need(0, POSITIVE_INT, "LoRA rank r (--rank) must be a positive integer")
    assert str(error.value) == "LoRA rank r (--rank) must be a positive integer, got 0."
    need(3, POSITIVE_INT, "never said")


def test_ints_and_numbers_are_not_bools():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(3) and is_number(2.5) and not is_number(False) and not is_number("2")


@pytest.mark.parametrize("field, value, sentence", [
    ("learning_rate", "fast", "learning_rate must be positive, got 'fast'."),  # was a TypeError
    ("grad_accum_steps", True, "grad_accum_steps must be an integer >= 1, got True."),
    ("min_lr", math.inf, "min_lr must be >= 0, got inf."),
])
def test_a_training_setting_of_the_wrong_kind_is_one_sentence(field, value, sentence):
    with pytest.raises(ValueError) as error:
        check_train_config(asdict(TrainConfig()) | {field: value})
    assert str(error.value) == sentence
