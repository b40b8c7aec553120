"""evaluate.py's scoring: every token after the first is scored once, given its window."""

import math

import pytest
import torch
import torch.nn.functional as F

from evaluate import scores, token_nll
from model import GPTConfig, GPTModel


@pytest.mark.parametrize("length", [2, 9, 30])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_token_nll_scores_each_token_once_given_the_tokens_before_it_in_its_window(
        length, batch_size):
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=16, context_length=8, n_layer=1, n_head=2, n_embd=8))
    ids = torch.randint(0, 16, (length,)).tolist()
    nll = token_nll(model, ids, batch_size=batch_size)
    assert nll.shape == (length - 1,)
    for start in range(0, length - 1, 8):  # windows of 8 inputs, each predicting the next token
        window = torch.tensor(ids[start : start + 9])
        with torch.no_grad():
            logits = model(window[:-1][None])[0]
        expected = F.cross_entropy(logits, window[1:], reduction="none")
        torch.testing.assert_close(nll[start : start + 8], expected)


def test_scores_turn_a_total_nll_into_perplexity_nats_and_bits_per_char():
    result = scores(nll=20.0, tokens=10, chars=40)
    assert result["perplexity"] == pytest.approx(math.exp(2.0))
    assert result["nats_per_char"] == pytest.approx(0.5)
    assert result["bits_per_char"] == pytest.approx(0.5 / math.log(2))


def test_loss_by_line_charges_each_token_to_the_line_its_first_byte_is_on():
    from benchmarks.loss_by_line import on_speaker_line
    from tokenizer import BPETokenizer

    text = "ROMEO:\nGood morrow.\n\nJULIET:\nAy, ROMEO.\n"
    speaker_bytes = set(range(0, 6)) | set(range(text.find("JULIET:"), text.find("JULIET:") + 7))
    bytewise = BPETokenizer()  # untrained: one token per byte
    mask = on_speaker_line(text, bytewise.encode(text), bytewise)
    assert mask.tolist() == [i in speaker_bytes for i in range(1, len(text))]  # byte 0: unscored

    merged = BPETokenizer()
    merged.train(text * 3, 280)  # whole words become single tokens
    ids = merged.encode(text)
    assert len(ids) < len(text)
    firsts, offset = [], 0
    for token in ids:
        firsts.append(offset)
        offset += len(merged.decode([token]))
    assert on_speaker_line(text, ids, merged).tolist() == [f in speaker_bytes for f in firsts[1:]]
