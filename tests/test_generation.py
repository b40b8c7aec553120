"""Generation: greedy decoding with and without the KV cache, sampling filters, bad settings."""

import codecs

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from generation import generate_ids, generate_text, sample_next, stream_text, text_mask
from model import GPTConfig, GPTModel
from tokenizer import BPETokenizer

TEXT = ("To be, or not to be, that is the question.\n"
        "Whether 'tis nobler in the mind to suffer\n") * 20


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(TEXT, 300)
    return tok


@pytest.fixture(scope="module")
def model(tokenizer) -> GPTModel:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=320, context_length=16, n_layer=2, n_head=2, n_embd=32)
    return GPTModel(cfg).eval()


def test_greedy_decoding_is_identical_with_and_without_the_cache(model):
    # 40 new tokens from a 5-token prompt run well past the 16-token context window.
    prompt = [5, 17, 99, 3, 200]
    with_cache = list(generate_ids(model, prompt, 40, temperature=0, use_cache=True))
    without = list(generate_ids(model, prompt, 40, temperature=0, use_cache=False))
    assert with_cache == without
    assert len(with_cache) == 40


def test_a_one_token_window_sees_only_the_last_token():
    # Regression: sliding a 1-token window by "half" kept 0 tokens and crashed on token 2.
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, context_length=1, n_layer=1, n_head=1, n_embd=8)
    tiny = GPTModel(cfg).eval()
    with_cache = list(generate_ids(tiny, [5, 6], 10, temperature=0, use_cache=True))
    without = list(generate_ids(tiny, [5, 6], 10, temperature=0, use_cache=False))
    assert with_cache == without and len(with_cache) == 10
    with torch.no_grad():
        for prev, token in zip([6, *with_cache], with_cache, strict=False):
            assert token == tiny(torch.tensor([[prev]]))[0, -1].argmax().item()


def test_the_same_seed_gives_the_same_sample(model, tokenizer):
    a = generate_text(model, tokenizer, "To be", 30, temperature=1.0, seed=7)
    b = generate_text(model, tokenizer, "To be", 30, temperature=1.0, seed=7)
    assert a == b


def test_top_k_one_and_tiny_top_p_are_greedy():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    greedy = logits.argmax(-1, keepdim=True)
    assert torch.equal(sample_next(logits, 1.0, top_k=1, top_p=None), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_k=None, top_p=1e-6), greedy)


def test_a_top_p_below_float32_resolution_is_still_greedy():
    # Regression: 5e-324 rounds to 0.0 in float32, which once dropped every token (NaN probs).
    logits = torch.zeros(2, 50)  # a uniform distribution: every cumulative gap is exactly 0
    assert sample_next(logits, 3.4e38, top_k=None, top_p=5e-324).shape == (2, 1)


def test_top_k_only_samples_among_the_k_best():
    logits = torch.arange(10.0).repeat(500, 1)  # token 9 best, then 8, ...
    generator = torch.Generator().manual_seed(0)
    drawn = sample_next(logits, 5.0, top_k=3, top_p=None, generator=generator)
    assert set(drawn.flatten().tolist()) == {7, 8, 9}


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(2000, 1)
    drawn = sample_next(probs.log(), 1.0, top_k=None, top_p=0.8,
                        generator=torch.Generator().manual_seed(0))
    assert set(drawn.flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.8


def test_top_p_keeps_the_token_that_crosses_p():
    # 0.5 alone is below 0.7, 0.5 + 0.3 passes it: token 1 crosses p and belongs to the nucleus.
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(2000, 1)
    drawn = sample_next(probs.log(), 1.0, top_k=None, top_p=0.7,
                        generator=torch.Generator().manual_seed(0))
    assert set(drawn.flatten().tolist()) == {0, 1}


def test_streaming_pieces_add_up_to_the_generated_text(model, tokenizer):
    pieces = list(stream_text(model, tokenizer, "Whether", 25, temperature=0.9, seed=3))
    assert "".join(pieces) == generate_text(model, tokenizer, "Whether", 25, temperature=0.9,
                                            seed=3)


def test_never_samples_ids_the_tokenizer_cannot_decode(model, tokenizer):
    # The model has 320 rows for a 300-token vocabulary: rows 300.. must never be drawn.
    ids = list(generate_ids(model, [1], 200, temperature=5.0, seed=0,
                            vocab_size=tokenizer.vocab_size))
    assert max(ids) < tokenizer.vocab_size


def continuation(model, tokenizer, ids, n, stop_id=None, **settings) -> str:
    """The text of ``n`` tokens generated from exactly ``ids``."""
    new = generate_ids(model, ids, n, vocab_size=tokenizer.vocab_size, stop_id=stop_id,
                       clean=text_mask(tokenizer), **settings)
    return b"".join(map(tokenizer.token_bytes, new)).decode("utf-8", errors="ignore")


def test_an_over_long_prompt_keeps_its_last_context_length_tokens(model, tokenizer):
    ids = tokenizer.encode(TEXT * 5)  # far more tokens than the 16-token window
    got = generate_text(model, tokenizer, TEXT * 5, 20, temperature=0)
    eot = tokenizer.eot_id
    assert got == continuation(model, tokenizer, ids[-16:], 20, eot, temperature=0)
    assert got != continuation(model, tokenizer, ids[:16], 20, eot, temperature=0)


def test_an_empty_prompt_starts_from_endoftext(model, tokenizer):
    got = generate_text(model, tokenizer, "", 20, temperature=0, stop_at_eot=False)
    assert got == continuation(model, tokenizer, [tokenizer.eot_id], 20, temperature=0)


def test_a_tokenizer_without_endoftext_generates_but_needs_a_prompt(model):
    tok = BPETokenizer()
    tok.train(TEXT, 300, special_tokens=())
    got = generate_text(model, tok, "To be", 20, temperature=0)
    assert got == continuation(model, tok, tok.encode("To be"), 20, temperature=0)
    with pytest.raises(ValueError, match="non-empty prompt"):
        generate_text(model, tok, "", 5)


@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5),
    dict(max_new_tokens=-1), dict(temperature="hot"), dict(temperature=float("inf")),
    dict(temperature=float("nan")),
])
def test_out_of_range_settings_get_a_clear_error(model, tokenizer, bad):
    kwargs = dict(max_new_tokens=5, temperature=1.0, top_k=None, top_p=None) | bad
    with pytest.raises(ValueError, match="must be"):
        generate_text(model, tokenizer, "To be", **kwargs)


def test_a_non_text_prompt_gets_a_clear_error(model, tokenizer):
    with pytest.raises(ValueError, match="must be text"):
        generate_text(model, tokenizer, 42, 5)


@settings(max_examples=40, deadline=None)
@given(prompt=st.text(max_size=60), temperature=st.floats(0, 3),
       top_k=st.none() | st.integers(1, 400), top_p=st.none() | st.floats(0.01, 1.0),
       seed=st.integers(0, 2**31))
def test_any_prompt_and_valid_settings_generate_text(model, tokenizer, prompt, temperature, top_k,
                                                     top_p, seed):
    out = generate_text(model, tokenizer, prompt, 4, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed)
    assert isinstance(out, str)


# ---------------------------------------------------------------------------- clean text

BANNED = {chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]} - {"\n", "\t"}


def test_a_random_model_samples_only_clean_text(model, tokenizer):
    # An untrained model draws bytes >= 0x80 and control bytes all the time: the mask must
    # keep every sample valid UTF-8 (a strict decode) without control characters.
    for seed in range(6):
        ids = list(generate_ids(model, [1], 50, temperature=3.0, seed=seed,
                                vocab_size=tokenizer.vocab_size, clean=text_mask(tokenizer)))
        data = b"".join(map(tokenizer.token_bytes, ids))
        text = codecs.getincrementaldecoder("utf-8")().decode(data)  # strict, tail may wait
        assert not BANNED & set(text)
        out = generate_text(model, tokenizer, "To be", 50, temperature=3.0, seed=seed)
        assert "\ufffd" not in out and not BANNED & set(out)


class FixedPreference(torch.nn.Module):
    """A stand-in model whose logits always rank the same tokens first."""

    def __init__(self, vocab_size: int, preferred: list[int]):
        super().__init__()
        self.config = GPTConfig(vocab_size=vocab_size, context_length=64, n_layer=1, n_head=1,
                                n_embd=1)
        self.logits = torch.zeros(vocab_size)
        for rank, token in enumerate(preferred):
            self.logits[token] = 10.0 - rank
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # generate_ids reads the device here

    def forward(self, idx, past_kvs=None, use_cache=False):
        logits = self.logits.expand(idx.size(0), idx.size(1), -1)
        return (logits, []) if use_cache else logits


def test_a_character_cut_off_by_max_new_tokens_is_not_shown(tokenizer):
    byte_id = {tokenizer.token_bytes(i): i for i in range(256)}
    # The model always prefers E4, then B8. With the mask the lead E4 cannot be drawn again
    # until its character is complete: E4 B8 B8, E4 B8 B8, ...
    fake = FixedPreference(tokenizer.vocab_size, [byte_id[b"\xe4"], byte_id[b"\xb8"]])
    char = b"\xe4\xb8\xb8".decode("utf-8")
    assert generate_text(fake, tokenizer, "x", 3, temperature=0) == char
    assert generate_text(fake, tokenizer, "x", 5, temperature=0) == char  # 2 bytes cut off
    assert generate_text(fake, tokenizer, "x", 2, temperature=0) == ""
    assert list(stream_text(fake, tokenizer, "x", 7, temperature=0)) == [char, char]
