"""support/errors.py: one_sentence turns what a library raised into the user's one sentence;
first_line is what such a sentence quotes of it."""

import pytest

from support.errors import CheckpointError, first_line, one_sentence

SENTENCES = {KeyError: lambda e: f"no {e.args[0]} entry",
             (TypeError, OSError): lambda e: f"bad: {e}"}


@pytest.mark.parametrize(("raised", "sentence"), [
    (KeyError("n_layer"), "no n_layer entry"),
    (FileNotFoundError("gone"), "bad: gone"),  # a subclass of a listed kind
    (TypeError("not a dict"), "bad: not a dict"),
])
def test_a_listed_kind_becomes_its_sentence_without_the_traceback(raised, sentence):
    with pytest.raises(CheckpointError) as err:
        with one_sentence(CheckpointError, SENTENCES):
            raise raised
    assert str(err.value) == sentence
    assert err.value.__suppress_context__  # "During handling of the above exception" is not shown


def test_the_first_matching_kind_wins_and_others_pass_through():
    with pytest.raises(ValueError, match="^first$"):
        with one_sentence(ValueError, {OSError: lambda _: "first", Exception: lambda _: "any"}):
            raise PermissionError("x")
    with pytest.raises(ZeroDivisionError):  # not one the caller named: a bug shows as itself
        with one_sentence(ValueError, SENTENCES):
            raise ZeroDivisionError
    with one_sentence(ValueError, SENTENCES):
        value = 42  # nothing raised: the block runs as written
    assert value == 42


def test_first_line_quotes_one_short_line_and_never_fails():
    assert first_line(RuntimeError("  Error(s) in loading\n\tsize mismatch")) == \
        "Error(s) in loading"
    assert first_line(ValueError("x" * 500)) == "x" * 200
    assert first_line(RuntimeError()) == "no details"  # an empty one was an IndexError
