"""Evaluate a pretrained model on the unseen test split of the corpus it was trained on.

    python evaluate.py [--checkpoint model_weights.pth] [--data-dir DIR] [--device DEV]
    python evaluate.py --checkpoint gpt2     # OpenAI's GPT-2 (or a Hugging Face GPT-2 folder)
    python evaluate.py --text notes/         # another corpus's test split

The corpus is the checkpoint's own (its metadata names it; main.py --text and --hf-dataset
record theirs), else TinyShakespeare; --text or --hf-dataset names another. Its token files are
reused, or made with the model's tokenizer (corpus.py).

Reports three numbers per model:
- perplexity per token: exp(mean negative log-likelihood per token). It depends on the
  tokenizer, so it only compares models that share one;
- nats per character: total NLL / number of characters. This is tokenizer-independent and
  comparable with character-level models such as nanoGPT's ``shakespeare_char``;
- bits per character: the same in bits (divide by ln 2), the unit compression papers use.

Two reference points computed in the same run give the numbers meaning: a unigram model of
the training tokens (knows only token frequencies) and the untrained model (knows nothing).
The test text is cut into non-overlapping windows of the context length and every token
after the first is scored exactly once (nanoGPT's estimate_loss averages random windows).
GPT-2 has its own tokenizer, so against it compare bits per character, not perplexity.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from corpus import (
    DEFAULT_ROOT,
    Corpus,
    add_corpus_args,
    corpus_from_args,
    open_tokens,
    ready_token_files,
    survey,
    tokenizer_fingerprint,
)
from data_utils import load_tinyshakespeare, split_shakespeare, tinyshakespeare_corpus
from hf_gpt2 import load_base
from model import GPTModel
from support.cli import FlagParser, path_arg, run
from support.metrics import write_json
from support.runtime import pick_device
from tokenizer import BPETokenizer


@torch.no_grad()
def token_nll(model: GPTModel, ids, batch_size: int = 16) -> torch.Tensor:
    """-log p(token | the tokens before it in its window), for each of ids[1:]."""
    model.eval()
    device = next(model.parameters()).device
    ctx = model.config.context_length
    data = torch.from_numpy(np.asarray(ids, dtype=np.int64))
    # Windows of ctx+1 tokens overlapping by one, so every token after the first is a target once.
    starts = list(range(0, len(ids) - 1, ctx))
    nll = []
    for i in range(0, len(starts), batch_size):
        chunk = [data[s : s + ctx + 1] for s in starts[i : i + batch_size]]
        lengths = [len(c) - 1 for c in chunk]
        x = torch.zeros(len(chunk), max(lengths), dtype=torch.long)
        y = torch.full_like(x, -100)
        for row, c in enumerate(chunk):
            x[row, : len(c) - 1], y[row, : len(c) - 1] = c[:-1], c[1:]
        logits = model(x.to(device)).float()
        losses = F.cross_entropy(logits.transpose(1, 2), y.to(device), ignore_index=-100,
                                 reduction="none").cpu()
        nll.extend(row[:n] for row, n in zip(losses, lengths, strict=True))
    return torch.cat(nll) if nll else torch.zeros(0)


def corpus_tokens(args: argparse.Namespace, meta: dict, tokenizer: BPETokenizer
                  ) -> tuple[str, dict, Path]:
    """(what the corpus is, its token files' facts, their folder), made with ``tokenizer``."""
    corpus = corpus_from_args(args)
    if corpus is None and "corpus" in meta:  # the checkpoint's own corpus (main.py records it)
        corpus, folder = Corpus.from_dict(meta["corpus"]), Path(meta["prepared"])
    else:
        # TinyShakespeare for GPT-2 and older checkpoints (split as their metadata says).
        corpus = corpus or tinyshakespeare_corpus(args.data_dir, meta.get("split") == "nanogpt")
        # another tokenizer's ids go to a folder of their own
        folder = DEFAULT_ROOT / f"{corpus.folder_name()}-{tokenizer_fingerprint(tokenizer)[:8]}"
    folder = Path(args.prepared_dir or folder)  # --prepared-dir, where given, wins
    token_meta = ready_token_files(survey(corpus), tokenizer, folder, args.workers)
    return corpus.label(), token_meta, folder


def trained_splits(meta: dict, data_dir=None) -> dict[str, str]:
    """The TinyShakespeare splits a checkpoint was trained with, as text (for
    benchmarks/loss_by_line.py, which looks at the lines themselves)."""
    return split_shakespeare(load_tinyshakespeare(data_dir), nanogpt=meta.get("split") == "nanogpt")


CHUNK = 1 << 24  # token ids counted at a time: a memory-mapped split is never copied whole


def unigram_nll(train_ids, test_ids, vocab_size: int) -> float:
    """NLL of test_ids[1:] under add-one-smoothed token frequencies of the training split."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for i in range(0, len(train_ids), CHUNK):
        counts += np.bincount(np.asarray(train_ids[i : i + CHUNK]), minlength=vocab_size)
    total = len(train_ids) + vocab_size
    test = np.asarray(test_ids[1:], dtype=np.int64)
    return float(-np.log((counts[test] + 1) / total).sum())


def scores(nll: float, tokens: int, chars: int) -> dict:
    # exp in torch: inf past e^709, where math.exp raises OverflowError
    perplexity = torch.tensor(nll / tokens, dtype=torch.float64).exp().item()
    return {"perplexity": perplexity, "nats_per_char": nll / chars,
            "bits_per_char": nll / chars / math.log(2), "tokens": tokens, "chars": chars}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=path_arg, default="model_weights.pth",
                   help="model from main.py, or "
                   "GPT-2 in Hugging Face format: a name (gpt2, gpt2-medium) or a folder")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="read datasets from this folder; unset: $LLM_DATA_DIR, else download")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")
    p.add_argument("--split", default="test", choices=["val", "test"], help="text to score")
    p.add_argument("--out", type=path_arg, default="runs/evaluate/metrics.json",
                   help="where the figures go")
    add_corpus_args(p, training=False)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device)
    model, tokenizer, meta = load_base(args.checkpoint, map_location=device)
    if meta.get("split") == "nanogpt" and args.split == "val":
        print("Note: this model was trained with --nanogpt-split, so it has seen the val split.")
    label, token_meta, folder = corpus_tokens(args, meta, tokenizer)
    test_ids = open_tokens(folder, args.split, token_meta)
    # Predicted: every token after the first, and the characters they spell.
    predicted = len(test_ids) - 1
    chars = token_meta["splits"][args.split]["chars"] - len(tokenizer.decode(test_ids[:1].tolist()))

    def model_scores(m: GPTModel) -> dict:
        return scores(token_nll(m, test_ids).double().sum().item(), predicted, chars)

    t0 = time.perf_counter()
    results = {"model": model_scores(model)}
    elapsed = time.perf_counter() - t0
    train_ids = open_tokens(folder, "train", token_meta)
    results["unigram"] = scores(unigram_nll(train_ids, test_ids, tokenizer.vocab_size),
                                predicted, chars)
    torch.manual_seed(0)
    results["untrained"] = model_scores(GPTModel(model.config).to(device))

    print(f"{args.checkpoint} on the {label} {args.split} split "
          f"({chars:,} chars, {len(test_ids):,} tokens, {chars / len(test_ids):.2f} chars/token)")
    print(f"{'model':<12}{'perplexity':>12}{'nats/char':>12}{'bits/char':>12}")
    for name, r in results.items():
        print(f"{name:<12}{r['perplexity']:>12.2f}{r['nats_per_char']:>12.4f}"
              f"{r['bits_per_char']:>12.4f}")
    record = {"checkpoint": str(args.checkpoint), "corpus": label, "split": args.split,
              "eval_seconds": round(elapsed, 2), "training": meta, **results}
    not_numbers = write_json(args.out, record)  # valid JSON: NaN and inf become null
    print(f"Wrote {args.out}" + (f"; null stands for what is not a finite number: "
                                 f"{', '.join(not_numbers)} (weights that are not all numbers "
                                 "give a NaN loss)" if not_numbers else ""))
    return 0


if __name__ == "__main__":
    run(main)
