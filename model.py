"""A GPT-style language model, one idea per class.

Read it top to bottom the way the model is learned:

1. ``SelfAttention``      one causal attention head, written out step by step:
                          scores, causal mask, softmax, weighted sum of values.
2. ``MultiHeadAttention`` the same computation for all heads at once, with one fused
                          q/k/v projection and PyTorch's ``scaled_dot_product_attention``
                          (which dispatches to flash / memory-efficient kernels).
                          It also takes and returns a key/value cache for fast generation.
3. ``MLP``                the position-wise feed-forward network.
4. ``TransformerBlock``   pre-LayerNorm attention + MLP, each around a residual connection.
5. ``GPTModel``           token + position embeddings, the blocks, a final LayerNorm and an
                          output head that shares its weights with the token embedding.

``tests/test_model.py`` proves that (2) equals n copies of (1) with the same weights.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from support.checks import check_model_config

# Per layer: (keys, values), each [batch, n_head, seen_tokens, head_dim].
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GPTConfig:
    vocab_size: int = 4096
    context_length: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    bias: bool = True

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "context_length", "n_layer", "n_head", "n_embd")
        check_model_config({name: getattr(self, name) for name in sizes}, self.n_embd,
                           self.n_head, self.dropout)

    def to_dict(self) -> dict:
        return asdict(self)


class SelfAttention(nn.Module):
    """One causal attention head, written out for reading (the teaching version)."""

    def __init__(self, n_embd: int, head_dim: int, context_length: int, bias: bool = True):
        super().__init__()
        self.query = nn.Linear(n_embd, head_dim, bias=bias)
        self.key = nn.Linear(n_embd, head_dim, bias=bias)
        self.value = nn.Linear(n_embd, head_dim, bias=bias)
        # mask[i, j] is True where token i must not see token j (j lies in its future).
        mask = torch.triu(torch.ones(context_length, context_length, dtype=torch.bool), 1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(1)
        q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, head_dim] each
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.size(-1))  # [B, T, T]: how much i attends j
        scores = scores.masked_fill(self.mask[:T, :T], float("-inf"))
        weights = torch.softmax(scores, dim=-1)  # each row sums to 1 over the past
        return weights @ v  # [B, T, head_dim]: a weighted average of the values


class MultiHeadAttention(nn.Module):
    """All heads of causal self-attention in a few batched matrix multiplies."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.n_embd // config.n_head
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        # Dropout on the attention weights (inside the kernel) and on the block's output, as in
        # GPT-2: both hold a model back from memorising a small corpus. With dropout > 0 a CPU
        # leaves the fused kernel (1.2-1.4x slower steps), so the CPU presets use 0.
        self.attn_dropout = config.dropout
        self.resid_drop = nn.Dropout(config.dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        # [B, T, C] -> [B, n_head, T, head_dim]: every head attends independently.
        return tuple(t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))

    def forward(
        self, x: torch.Tensor, past_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        B, T, C = x.shape
        q, k, v = self._heads(x)
        if past_kv is not None:  # the new tokens attend to everything seen so far
            k = torch.cat([past_kv[0], k], dim=2)
            v = torch.cat([past_kv[1], v], dim=2)
        if past_kv is None or T == 1:
            # One new token may look at the whole cache, so no mask is needed then.
            y = F.scaled_dot_product_attention(
                q, k, v, is_causal=past_kv is None,
                dropout_p=self.attn_dropout if self.training else 0.0)
        else:  # several new tokens after a cache: query i sees the cache and new tokens <= i
            past = k.size(2) - T
            allowed = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads
        return self.resid_drop(self.out_proj(y)), (k, v)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax weights [B, n_head, T, T] (computed explicitly, for visualisation)."""
        q, k, _ = self._heads(x)
        T = x.size(1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
        return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)


class MLP(nn.Module):
    """Position-wise feed-forward network: expand 4x, GELU, project back."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc_in = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.fc_out = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc_out(F.gelu(self.fc_in(x), approximate="tanh")))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = MultiHeadAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, past_kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        attn_out, kv = self.attn(self.ln_1(x), past_kv)
        x = x + attn_out
        x = x + self.mlp(self.ln_2(x))
        return x, kv


class GPTModel(nn.Module):
    """The decoder-only transformer language model."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.context_length, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and writing it out use the same vectors,
        # which saves vocab_size * n_embd parameters and helps small models.
        self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)
        # GPT-2: scale the projections that write into the residual stream by 1/sqrt(2L)
        # so the residual's variance does not grow with depth.
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "fc_out.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden_states(
        self, idx: torch.Tensor, past_kvs: KVCache | None = None
    ) -> tuple[torch.Tensor, KVCache]:
        """Final-LayerNorm hidden states [B, T, n_embd] and the updated KV cache."""
        B, T = idx.shape
        past = 0 if not past_kvs else past_kvs[0][0].size(2)
        if past + T > self.config.context_length:
            raise ValueError(
                f"Sequence of {past + T} tokens exceeds the context length "
                f"{self.config.context_length}; crop the input first."
            )
        positions = torch.arange(past, past + T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))
        new_kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, past_kvs[i] if past_kvs else None)
            new_kvs.append(kv)
        return self.ln_f(x), new_kvs

    def forward(
        self, idx: torch.Tensor, past_kvs: KVCache | None = None, use_cache: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, KVCache]:
        """Next-token logits [B, T, vocab]; with ``use_cache`` also the new KV cache."""
        h, new_kvs = self.hidden_states(idx, past_kvs)
        logits = self.lm_head(h)
        return (logits, new_kvs) if use_cache else logits

    @torch.no_grad()
    def attention_maps(self, idx: torch.Tensor) -> torch.Tensor:
        """Attention weights of every layer and head for one sequence: [n_layer, n_head, T, T]."""
        idx = idx[:1, -self.config.context_length :]
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.size(1), device=idx.device))
        maps = []
        for block in self.blocks:
            maps.append(block.attn.attention_weights(block.ln_1(x))[0])
            x, _ = block(x)
        return torch.stack(maps)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied output head counted once)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.pos_emb.weight.numel() if non_embedding else n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token: forward + backward = 3x forward, 2 per weight forward, as in
        the PaLM paper's estimate; its attention term counts the whole T x T score matrix,
        while a causal mask needs half of it, which is what is counted here."""
        cfg = self.config
        T = seq_len or cfg.context_length
        matmul_params = self.num_parameters(non_embedding=True) - cfg.vocab_size * cfg.n_embd
        forward = 2 * matmul_params + 2 * cfg.vocab_size * cfg.n_embd  # weights incl. lm_head
        forward += 2 * cfg.n_layer * T * cfg.n_embd  # attention scores and weighted sum (causal)
        return 3 * forward
