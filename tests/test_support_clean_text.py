"""The clean-text mask against Python's own UTF-8 decoder."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from support.clean_text import BOUNDARY, REJECT, CleanTextMask, byte_step
from tokenizer import BPETokenizer

BANNED = {chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]} - {"\n", "\t"}


def accepts(data: bytes) -> bool:
    """Whether the mask's state machine reads ``data`` completely and ends between characters."""
    state = BOUNDARY
    for byte in data:
        state = byte_step(state, byte)
        if state == REJECT:
            return False
    return state == BOUNDARY


def clean(data: bytes) -> bool:
    """Python's verdict: strict UTF-8 with no banned control character."""
    try:
        return not BANNED & set(data.decode("utf-8"))
    except UnicodeDecodeError:
        return False


def test_every_character_is_read_as_python_reads_it():
    # Every 1-, 2- and 3-byte character, and a sample of the 4-byte ones with both ends.
    for code in [*range(0x10000), *range(0x10000, 0x110000, 251), 0x10FFFF]:
        if 0xD800 <= code <= 0xDFFF:
            continue  # surrogates are not valid UTF-8 (Python refuses to encode them)
        char = chr(code)
        assert accepts(char.encode("utf-8")) == (char not in BANNED), hex(code)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=12))
def test_the_state_machine_agrees_with_python_on_any_bytes(data):
    assert accepts(data) == clean(data)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train("Ça va? Größe, naïve café — 中文 ünd émoji 🙂🙂 ‹quotes›\n\tend. " * 30, 400)
    return tok


@pytest.fixture(scope="module")
def mask(tokenizer) -> CleanTextMask:
    vocab = [tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size)]
    return CleanTextMask(vocab, frozenset(tokenizer.special_tokens.values()))


@settings(max_examples=300, deadline=None)
@given(choices=st.lists(st.integers(0, 10**6), max_size=40))
def test_any_token_sequence_the_mask_allows_decodes_cleanly(tokenizer, mask, choices):
    state, data, boundary_data = BOUNDARY, b"", b""
    for choice in choices:
        allowed = (~mask.banned[state]).nonzero().flatten().tolist()
        assert allowed, f"no token may follow state {state}"
        token = allowed[choice % len(allowed)]
        data += tokenizer.token_bytes(token)
        state = mask.advance(state, token)
        if state == BOUNDARY:
            boundary_data = data
    assert data.startswith(boundary_data)
    text = boundary_data.decode("utf-8")  # strict: raises on anything invalid
    assert not BANNED & set(text)


def test_special_tokens_only_between_characters(tokenizer, mask):
    eot = tokenizer.eot_id
    assert not mask.banned[BOUNDARY, eot]
    assert all(mask.banned[state, eot] for state in range(1, mask.banned.size(0)))


@settings(max_examples=200, deadline=None)
@given(vocab=st.lists(st.binary(min_size=1, max_size=5), min_size=1, max_size=30),
       tokens=st.lists(st.integers(0, 29), max_size=20))
def test_on_any_vocabulary_a_token_is_allowed_exactly_when_python_agrees(vocab, tokens):
    mask = CleanTextMask(vocab)
    state, text = BOUNDARY, b""
    for token in (t % len(vocab) for t in tokens):
        data = text + vocab[token]
        # Allowed <=> the bytes so far can still be completed into clean text.
        completable = any(clean(data + tail) for tail in completions(data))
        assert (not mask.banned[state, token]) == completable
        if completable:
            text, state = data, mask.advance(state, token)


def completions(data: bytes) -> list[bytes]:
    """Candidate endings that finish a character cut off after ``data`` (or nothing)."""
    return [b""] + [bytes([b]) * n for b in (0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF) for n in (1, 2, 3)]
