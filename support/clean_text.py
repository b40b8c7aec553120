"""Which tokens keep generated text clean: valid UTF-8 and no control characters.

A byte-level model can emit any byte sequence: half a character, a stray continuation byte,
a BEL. Generation asks, before each draw, which tokens could come next so that the text so
far stays a prefix of valid UTF-8 with no control characters but newline and tab, and masks
the rest.

UTF-8 decoding is a small state machine. Between characters ("at a boundary") a lead byte
says how many continuation bytes follow (0x80-0xBF), and a few leads narrow the range of
the next byte (E0: A0-BF, no over-long forms; ED: 80-9F, no surrogates; F0: 90-BF; F4: 80-8F,
nothing above U+10FFFF). C2 80-9F would spell the C1 controls U+0080-U+009F, so after C2
only A0-BF is allowed. That gives nine states. For every token and every state we
precompute, once, whether the token's bytes are a valid continuation and the state after
them, so a generation step costs one row lookup. Special tokens (``<|endoftext|>``) are
allowed only at a boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch

BOUNDARY = 0
# state: (lowest, highest allowed next byte, state after it); the boundary is handled apart.
CONTINUATIONS = {
    1: (0x80, 0xBF, BOUNDARY),  # one continuation byte left
    2: (0xA0, 0xBF, BOUNDARY),  # after C2: A0-BF only (80-9F are the C1 controls)
    3: (0x80, 0xBF, 1),         # two left
    4: (0xA0, 0xBF, 1),         # after E0
    5: (0x80, 0x9F, 1),         # after ED
    6: (0x80, 0xBF, 3),         # three left
    7: (0x90, 0xBF, 3),         # after F0
    8: (0x80, 0x8F, 3),         # after F4
}
N_STATES = 1 + len(CONTINUATIONS)
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


class CleanTextMask:
    """Per decoder state, the tokens that may come next (``banned[state]``) and where they lead.

    ``token_bytes[i]`` is token i's bytes; ``special_ids`` are tokens allowed only at a
    boundary (their text is not part of a character).
    """

    def __init__(self, token_bytes: Sequence[bytes], special_ids: frozenset[int] = frozenset()):
        vocab = len(token_bytes)
        self.banned = torch.ones(N_STATES, vocab, dtype=torch.bool)
        self.next_state = torch.zeros(N_STATES, vocab, dtype=torch.long)
        for token, data in enumerate(token_bytes):
            for start in range(N_STATES):
                state = start
                if token in special_ids:
                    state = BOUNDARY if start == BOUNDARY else REJECT
                else:
                    for byte in data:
                        state = byte_step(state, byte)
                        if state == REJECT:
                            break
                if state != REJECT and data:
                    self.banned[start, token] = False
                    self.next_state[start, token] = state
        self._after = self.next_state.tolist()  # python ints: no tensor indexing per step
        self._banned_on: dict[torch.device, torch.Tensor] = {}  # one copy per device

    def restrict(self, logits: torch.Tensor, state: int) -> torch.Tensor:
        """``logits`` [1, vocab] with every token that would break the text set to -inf."""
        if logits.device not in self._banned_on:
            self._banned_on[logits.device] = self.banned.to(logits.device)
        return logits.masked_fill(self._banned_on[logits.device][state], float("-inf"))

    def advance(self, state: int, token: int) -> int:
        """The decoder state after ``token``."""
        return self._after[state][token]


@lru_cache(maxsize=8)
def clean_text_mask(token_bytes: tuple[bytes, ...], special_ids: frozenset[int]
                    ) -> CleanTextMask:
    """The mask for one vocabulary, built once (the app and the shell call it per request)."""
    return CleanTextMask(token_bytes, special_ids)
