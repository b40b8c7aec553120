"""Text generation: sampling with temperature, top-k and top-p, a KV cache, and streaming.

A language model only ever predicts a distribution over the next token. Generation is the
loop around it: pick a token from that distribution, append it, repeat.

- temperature divides the logits: below 1 sharpens the distribution, above 1 flattens it,
  and 0 means greedy (always the most likely token).
- top-k keeps only the k most likely tokens; top-p (nucleus) keeps the smallest set of
  tokens whose probabilities add up to p. Both cut off the long tail of unlikely tokens.
- The KV cache keeps every layer's keys and values from earlier steps, so each new token
  costs one position of compute instead of re-running the whole sequence.
- Clean text: a byte-level model can draw half a character or a control byte. Before each
  draw, the tokens that would make the text invalid UTF-8 or add a control character (other
  than newline and tab) are masked out (clean_text.py precomputes which, per UTF-8
  decoder state), so the shell and the app only ever show clean text.

When the sequence fills the context window, the window slides forward by half its length
and the cache is rebuilt from the newer half (positions restart at 0). With or without the
cache the model sees exactly the same window, so the output is identical; the cache is
rebuilt once every ``context_length / 2`` tokens instead of recomputing every step.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator

import torch

from clean_text import CleanTextMask, clean_text_mask
from model import GPTModel
from support.checks import check_logits, check_prompt, check_sampling
from tokenizer import ENDOFTEXT, BPETokenizer

MAX_PROMPT_CHARS = 20_000  # a prompt longer than this is almost certainly a mistake


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token id per row of ``logits`` [B, vocab]."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    # Tiny temperatures would overflow float32; below 1e-5 sampling is greedy in all but name.
    logits = logits.float() / max(temperature, 1e-5)
    if top_k is not None and top_k < logits.size(-1):
        kth_best = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens before it already reach top_p (the first always stays).
        drop_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        drop_sorted[:, 0] = False  # also when top_p rounds to 0 in float32 (e.g. 1e-50)
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate_ids(model: GPTModel, ids: list[int], max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                 use_cache: bool = True, vocab_size: int | None = None,
                 stop_id: int | None = None, clean: CleanTextMask | None = None
                 ) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids continuing ``ids`` (one sequence).

    With ``clean`` (see clean_text_mask), only tokens that keep the text valid UTF-8 without
    control characters are drawn.
    """
    check_sampling(max_new_tokens, temperature, top_k, top_p, prompt_tokens=len(ids))
    model.eval()
    device = next(model.parameters()).device
    ctx = model.config.context_length
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    seq = torch.tensor([ids[-ctx:]], dtype=torch.long, device=device)
    start, cache = 0, None  # the model sees seq[:, start:], at most ctx tokens
    text_state = 0  # UTF-8 decoder state of the text generated so far: at a character boundary
    for _ in range(max_new_tokens):
        if seq.size(1) - start > ctx:  # window full: keep its newer half, rebuild the cache
            start, cache = seq.size(1) - max(1, ctx // 2), None  # ctx=1: keep 1, not 0
        if use_cache and cache is not None:
            logits, cache = model(seq[:, -1:], past_kvs=cache, use_cache=True)
        elif use_cache:
            logits, cache = model(seq[:, start:], use_cache=True)
        else:
            logits = model(seq[:, start:])
        logits = logits[:, -1, :]
        check_logits(logits)  # NaN weights give NaN scores: one sentence, not a torch error
        if vocab_size is not None and vocab_size < logits.size(-1):
            logits = logits[:, :vocab_size]  # never sample ids the tokenizer cannot decode
        if clean is not None:  # keep the text clean: ban tokens that would break it
            logits = clean.restrict(logits, text_state)
        next_id = sample_next(logits, temperature, top_k, top_p, generator)
        token = int(next_id)
        if stop_id is not None and token == stop_id:
            return
        if clean is not None:
            text_state = clean.advance(text_state, token)
        yield token
        seq = torch.cat([seq, next_id], dim=1)


def encode_prompt(tokenizer: BPETokenizer, prompt: str) -> list[int]:
    """Prompt ids; an empty prompt starts from <|endoftext|>, like the start of a document."""
    check_prompt(prompt, MAX_PROMPT_CHARS, can_start_empty=ENDOFTEXT in tokenizer.special_tokens)
    return tokenizer.encode(prompt) or [tokenizer.eot_id]


def text_mask(tokenizer: BPETokenizer) -> CleanTextMask:
    """The clean-text mask for ``tokenizer``'s vocabulary (built once, then cached)."""
    token_bytes = tuple(tokenizer.token_bytes(i) for i in range(tokenizer.vocab_size))
    return clean_text_mask(token_bytes, frozenset(tokenizer.special_tokens.values()))


def stream_text(model: GPTModel, tokenizer: BPETokenizer, prompt: str, max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                seed: int | None = None, use_cache: bool = True, stop_at_eot: bool = True
                ) -> Iterator[str]:
    """Yield the continuation of ``prompt`` piece by piece as tokens are generated.

    Only tokens that keep the text valid UTF-8 without control characters (but newline and
    tab) are drawn. A token can still end in the middle of a multi-byte character, so bytes
    go through an incremental UTF-8 decoder that only releases complete characters; a
    character left incomplete when ``max_new_tokens`` runs out is not shown.
    """
    ids = encode_prompt(tokenizer, prompt)
    # A tokenizer trained without <|endoftext|> has no token to stop at: run to max_new_tokens.
    stop_id = tokenizer.special_tokens.get(ENDOFTEXT) if stop_at_eot else None
    decoder = codecs.getincrementaldecoder("utf-8")()  # strict: the mask keeps the bytes valid
    for token in generate_ids(model, ids, max_new_tokens, temperature, top_k, top_p, seed,
                              use_cache, vocab_size=tokenizer.vocab_size, stop_id=stop_id,
                              clean=text_mask(tokenizer)):
        if piece := decoder.decode(tokenizer.token_bytes(token)):
            yield piece


def generate_text(model: GPTModel, tokenizer: BPETokenizer, prompt: str,
                  max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 50,
                  top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
                  stop_at_eot: bool = True) -> str:
    """The generated continuation of ``prompt`` (without the prompt itself)."""
    return "".join(stream_text(model, tokenizer, prompt, max_new_tokens, temperature, top_k,
                               top_p, seed, use_cache, stop_at_eot))
