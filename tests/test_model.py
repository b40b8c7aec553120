"""GPT model: shapes, the teaching attention == the fast attention, causality, KV cache."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model import GPTConfig, GPTModel, MultiHeadAttention, SelfAttention

CFG = GPTConfig(vocab_size=64, context_length=16, n_layer=2, n_head=4, n_embd=32)


@pytest.fixture
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(CFG).eval()


def test_logits_shape(model):
    idx = torch.randint(0, CFG.vocab_size, (3, 10))
    assert model(idx).shape == (3, 10, CFG.vocab_size)


def test_multi_head_attention_equals_independent_heads():
    """The batched, fused, SDPA version computes exactly n written-out SelfAttention heads."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(CFG).eval()
    head_dim = CFG.n_embd // CFG.n_head
    heads = []
    for h in range(CFG.n_head):
        head = SelfAttention(CFG.n_embd, head_dim, CFG.context_length)
        rows = slice(h * head_dim, (h + 1) * head_dim)
        for part, linear in enumerate((head.query, head.key, head.value)):
            offset = part * CFG.n_embd  # qkv stacks all queries, then all keys, then all values
            w = mha.qkv.weight[offset:][rows]
            b = mha.qkv.bias[offset:][rows]
            linear.weight.data.copy_(w)
            linear.bias.data.copy_(b)
        heads.append(head)
    x = torch.randn(2, 11, CFG.n_embd)
    concatenated = torch.cat([head(x) for head in heads], dim=-1)
    expected = mha.out_proj(concatenated)
    actual, _ = mha(x)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_dropout_acts_on_the_attention_weights_in_training_only():
    """With the residual dropout switched off, training-mode outputs still vary: the attention
    weights are dropped inside the kernel. Eval mode is deterministic and drops nothing."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(GPTConfig(**{**CFG.to_dict(), "dropout": 0.5}))
    mha.resid_drop = torch.nn.Identity()
    x = torch.randn(2, 11, CFG.n_embd)
    mha.train()
    first, second = mha(x)[0], mha(x)[0]
    assert not torch.allclose(first, second)
    mha.eval()
    without_dropout = MultiHeadAttention(CFG).eval()
    without_dropout.load_state_dict(mha.state_dict())
    torch.testing.assert_close(mha(x)[0], without_dropout(x)[0])


def test_changing_a_future_token_never_changes_earlier_logits(model):
    idx = torch.randint(0, CFG.vocab_size, (1, 12))
    changed = idx.clone()
    changed[0, 7] = (changed[0, 7] + 1) % CFG.vocab_size
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@settings(max_examples=20, deadline=None)
@given(split=st.integers(1, 15))
def test_kv_cache_gives_the_same_logits_as_a_full_forward(split):
    torch.manual_seed(0)
    model = GPTModel(CFG).eval()
    idx = torch.randint(0, CFG.vocab_size, (2, 16))
    full = model(idx)
    first, cache = model(idx[:, :split], use_cache=True)
    rest, cache = model(idx[:, split:], past_kvs=cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache[0][0].shape == (2, CFG.n_head, 16, CFG.n_embd // CFG.n_head)


def test_output_head_is_tied_to_token_embedding(model):
    assert model.lm_head.weight is model.tok_emb.weight


def test_parameter_count_matches_the_architecture(model):
    C, V, T, L = CFG.n_embd, CFG.vocab_size, CFG.context_length, CFG.n_layer
    per_block = (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C) + 4 * C
    expected = V * C + T * C + L * per_block + 2 * C
    assert model.num_parameters() == expected
    assert model.num_parameters(non_embedding=True) == expected - T * C
    # Training FLOPs are dominated by 6 x (matmul parameters) per token.
    assert model.flops_per_token() >= 6 * (L * 12 * C * C + V * C)


def test_attention_maps_are_causal_probability_rows(model):
    idx = torch.randint(0, CFG.vocab_size, (1, 9))
    maps = model.attention_maps(idx)
    assert maps.shape == (CFG.n_layer, CFG.n_head, 9, 9)
    torch.testing.assert_close(maps.sum(-1), torch.ones(CFG.n_layer, CFG.n_head, 9))
    assert torch.all(maps.triu(1) == 0)


def test_gradients_reach_every_parameter(model):
    model.train()
    idx = torch.randint(0, CFG.vocab_size, (2, 8))
    model(idx).logsumexp(-1).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_too_long_input_gets_a_clear_error(model):
    with pytest.raises(ValueError, match="exceeds the context length"):
        model(torch.zeros(1, CFG.context_length + 1, dtype=torch.long))


@pytest.mark.parametrize("bad, message", [(dict(n_embd=30, n_head=4), "divisible"),
                                          (dict(n_layer=0), "n_layer"),
                                          (dict(n_head=0), "n_head must be a positive"),
                                          (dict(n_embd=32.0), "n_embd must be an integer"),
                                          (dict(dropout=1.0), "dropout"),
                                          (dict(dropout=-0.1), "dropout")])
def test_invalid_config_gets_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{**CFG.to_dict(), **bad})
