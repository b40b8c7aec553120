"""The clean-text mask against Python's own UTF-8 decoder and Unicode database."""

import codecs
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clean_text import BOUNDARY, REJECT, CleanTextMask, byte_step, read_token
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


def drawable(text: str) -> bool:
    """No private-use (Co) or unassigned (Cn) character: those show as boxes."""
    return all(unicodedata.category(c) not in ("Co", "Cn") for c in text)


# The first bytes of every character a generated text may hold: Python's own list.
CLEAN_PREFIXES = {encoded[:n] for c in range(0x80, 0x110000)
                  if not 0xD800 <= c <= 0xDFFF and chr(c) not in BANNED and drawable(chr(c))
                  for encoded in [chr(c).encode("utf-8")] for n in range(1, len(encoded))}


def can_become_clean(data: bytes) -> bool:
    """Whether more bytes can make ``data`` clean, drawable text (Python's verdict)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        text = decoder.decode(data)  # strict; an unfinished character waits in the buffer
    except UnicodeDecodeError:
        return False
    pending = decoder.getstate()[0]
    return not BANNED & set(text) and drawable(text) and (not pending
                                                          or pending in CLEAN_PREFIXES)


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
        allowed = (~mask.banned(state)).nonzero().flatten().tolist()
        assert allowed, f"no token may follow state {state}"
        token = allowed[choice % len(allowed)]
        data += tokenizer.token_bytes(token)
        state = mask.advance(state, token)
        if state == BOUNDARY:
            boundary_data = data
    assert data.startswith(boundary_data)
    text = boundary_data.decode("utf-8")  # strict: raises on anything invalid
    assert not BANNED & set(text) and drawable(text)


def test_special_tokens_only_between_characters(tokenizer, mask):
    eot = tokenizer.eot_id
    assert not mask.banned(BOUNDARY)[eot]
    lead = next(i for i in range(tokenizer.vocab_size) if tokenizer.token_bytes(i) == b"\xc3")
    inside = mask.advance(BOUNDARY, lead)  # half of é, ï, ü ...
    assert inside != BOUNDARY and mask.banned(inside)[eot]


def test_private_use_and_unassigned_code_points_are_never_drawn():
    # U+F421 (private use) and U+0378 (unassigned), whole or split over tokens; é beside
    # them; and the leads F4 and EE, whose every character is private use or unassigned
    # (U+10AA93 is one), so no token may even begin one.
    vocab = ["\uf421".encode(), "\u0378".encode(), b"\xf4\x8a", b"\xee", b"\xc3", b"\xa9",
             b"\xef", b"\x90\xa1", b"\xcd", b"\xb8", b"a"]
    mask = CleanTextMask(vocab)
    allowed = [vocab[i] for i in (~mask.banned(BOUNDARY)).nonzero().flatten().tolist()]
    assert allowed == [b"\xc3", b"\xef", b"\xcd", b"a"]  # each can still become clean
    assert not mask.banned(mask.advance(BOUNDARY, 4))[5]  # C3 + A9 = é
    assert mask.banned(mask.advance(BOUNDARY, 6))[7]  # EF + 90 A1 = U+F421
    assert mask.banned(mask.advance(BOUNDARY, 8))[9]  # CD + B8 = U+0378
    assert read_token(b"", BOUNDARY, "naïve café 中文 🙂".encode()) == b""


@settings(max_examples=200, deadline=None)
@given(vocab=st.lists(st.binary(min_size=1, max_size=5), min_size=1, max_size=30),
       tokens=st.lists(st.integers(0, 29), max_size=20))
def test_on_any_vocabulary_a_token_is_allowed_exactly_when_python_agrees(vocab, tokens):
    mask = CleanTextMask(vocab)
    state, text = BOUNDARY, b""
    for token in (t % len(vocab) for t in tokens):
        data = text + vocab[token]
        # Allowed <=> the bytes so far can still be completed into clean, drawable text.
        completable = can_become_clean(data)
        assert (not mask.banned(state)[token]) == completable
        if completable:
            text, state = data, mask.advance(state, token)
