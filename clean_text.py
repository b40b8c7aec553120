"""Which tokens keep generated text clean: valid UTF-8, no control characters, and no code
points that no font draws.

A byte-level model can emit any byte sequence: half a character, a stray continuation byte,
a BEL, a private-use or unassigned code point (U+F421, U+10AA93) that shows as a box.
Generation asks, before each draw, which tokens could come next so that the text so far
stays a prefix of valid UTF-8 with no control characters but newline and tab and no
character of the Unicode categories Co (private use) or Cn (unassigned), and masks the rest.

UTF-8 decoding is a small state machine (``byte_step``): between characters ("at a
boundary") a lead byte says how many continuation bytes (0x80-0xBF) follow, and a few leads
narrow the range of the next byte (CONTINUATIONS says which, and why). Whether a finished
character is private or unassigned needs its every byte, so the mask's states are the bytes
of the character begun and not yet finished (none at a boundary); a begun character is
allowed only if some clean character can still finish it, so generation never reaches a
state that no token may leave. For each state the mask computes once, when generation first
reaches it, which tokens may follow and the state after each, so a generation step costs one
row lookup. Special tokens (``<|endoftext|>``) are allowed only at a boundary.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache

import torch

BOUNDARY = 0
# state: (lowest, highest allowed next byte, state after it); the boundary is handled apart.
CONTINUATIONS = {
    1: (0x80, 0xBF, BOUNDARY),  # one continuation byte left
    2: (0xA0, 0xBF, BOUNDARY),  # after C2: A0-BF only (80-9F are the C1 controls)
    3: (0x80, 0xBF, 1),         # two left
    4: (0xA0, 0xBF, 1),         # after E0 (80-9F would be over-long forms)
    5: (0x80, 0x9F, 1),         # after ED (A0-BF would be surrogates)
    6: (0x80, 0xBF, 3),         # three left
    7: (0x90, 0xBF, 3),         # after F0 (80-8F would be over-long forms)
    8: (0x80, 0x8F, 3),         # after F4 (90-BF would be above U+10FFFF)
}
REJECT = -1


def _after_lead(byte: int) -> int:
    """The state after ``byte`` read at a boundary (REJECT if it cannot start clean text)."""
    if byte in (0x09, 0x0A) or 0x20 <= byte <= 0x7E:  # tab, newline, printable ASCII
        return BOUNDARY
    if byte == 0xC2:
        return 2
    if 0xC3 <= byte <= 0xDF:
        return 1
    special = {0xE0: 4, 0xED: 5, 0xF0: 7, 0xF4: 8}
    if byte in special:
        return special[byte]
    if 0xE1 <= byte <= 0xEF:
        return 3
    if 0xF1 <= byte <= 0xF3:
        return 6
    return REJECT  # C0 controls, DEL, stray continuation bytes, C0/C1/F5-FF leads


def byte_step(state: int, byte: int) -> int:
    """One step of the decoder: the state after ``byte``, or REJECT."""
    if state == BOUNDARY:
        return _after_lead(byte)
    low, high, after = CONTINUATIONS[state]
    return after if low <= byte <= high else REJECT


def decoder_state(pending: bytes) -> int:
    """The state after reading ``pending`` from a boundary."""
    state = BOUNDARY
    for byte in pending:
        state = byte_step(state, byte)
    return state


UNDRAWABLE = ("Co", "Cn")  # private use, unassigned: no font has a glyph for them


def _finished(pending: bytes, highest: bool) -> int:
    """The lowest (or highest) code point that ``pending``, the first bytes of a character
    the machine accepted, can still become."""
    state = decoder_state(pending)
    while state != BOUNDARY:
        low, high, state = CONTINUATIONS[state]
        pending += bytes([high if highest else low])
    return ord(pending.decode("utf-8"))


@lru_cache(maxsize=4096)
def _still_clean(pending: bytes) -> bool:
    """Whether a character that a font draws can finish ``pending`` (the code points it can
    still become are one range)."""
    return any(unicodedata.category(chr(c)) not in UNDRAWABLE
               for c in range(_finished(pending, False), _finished(pending, True) + 1))


def read_token(pending: bytes, state: int, data: bytes) -> bytes | None:
    """The bytes of the character left unfinished after reading ``data`` on top of
    ``pending`` (b"" at a boundary), or None if ``data`` breaks the text: invalid UTF-8, a
    control character, a finished private-use or unassigned character, or a begun one that
    no clean character can finish. ``state`` is ``decoder_state(pending)``: a row reads
    every token on top of the same ``pending``, so it walks those bytes once."""
    for byte in data:
        state = byte_step(state, byte)
        if state == REJECT:
            return None
        pending += bytes([byte])
        if state == BOUNDARY:
            if len(pending) > 1 and unicodedata.category(pending.decode("utf-8")) in UNDRAWABLE:
                return None
            pending = b""
    return pending if not pending or _still_clean(pending) else None


class CleanTextMask:
    """Per state, the tokens that may come next (``banned(state)``) and where they lead.

    ``token_bytes[i]`` is token i's bytes; ``special_ids`` are tokens allowed only at a
    boundary (their text is not part of a character). States are small integers: 0 is the
    boundary, the others are numbered as generation first reaches them.
    """

    def __init__(self, token_bytes: Sequence[bytes], special_ids: frozenset[int] = frozenset()):
        self.token_bytes, self.special_ids = list(token_bytes), special_ids
        self.pending: list[bytes] = [b""]  # state -> the bytes of the unfinished character
        self._state_of = {b"": BOUNDARY}
        self._rows: dict[int, tuple[torch.Tensor, list[int]]] = {}
        self._banned_on: dict[tuple[torch.device, int], torch.Tensor] = {}  # per device
        self._row(BOUNDARY)  # the boundary's row is needed first: build it now

    def _state(self, pending: bytes) -> int:
        if pending not in self._state_of:
            self._state_of[pending] = len(self.pending)
            self.pending.append(pending)
        return self._state_of[pending]

    def _row(self, state: int) -> tuple[torch.Tensor, list[int]]:
        """(banned tokens, state after each token) for ``state``, computed on first use."""
        if state not in self._rows:
            pending = self.pending[state]
            pending_state = decoder_state(pending)
            banned = torch.ones(len(self.token_bytes), dtype=torch.bool)
            after = [REJECT] * len(self.token_bytes)
            for token, data in enumerate(self.token_bytes):
                if token in self.special_ids:
                    left = b"" if state == BOUNDARY else None
                else:
                    left = read_token(pending, pending_state, data) if data else None
                if left is not None:
                    banned[token], after[token] = False, self._state(left)
            self._rows[state] = banned, after
        return self._rows[state]

    def banned(self, state: int) -> torch.Tensor:
        """[vocab] booleans: True for each token that would break the text after ``state``."""
        return self._row(state)[0]

    def restrict(self, logits: torch.Tensor, state: int) -> torch.Tensor:
        """``logits`` [1, vocab] with every token that would break the text set to -inf."""
        key = (logits.device, state)
        if key not in self._banned_on:
            self._banned_on[key] = self.banned(state).to(logits.device)
        return logits.masked_fill(self._banned_on[key], float("-inf"))

    def advance(self, state: int, token: int) -> int:
        """The state after ``token``."""
        return self._row(state)[1][token]


@lru_cache(maxsize=8)
def clean_text_mask(token_bytes: tuple[bytes, ...], special_ids: frozenset[int]
                    ) -> CleanTextMask:
    """The mask for one vocabulary, built once (the app and the shell call it per request)."""
    return CleanTextMask(token_bytes, special_ids)
