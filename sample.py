"""Sample text from the base language model in the terminal, as nanoGPT's sample.py does.

    python sample.py                                   # 120 tokens after "ROMEO:"
    python sample.py --prompt "JULIET:" --temperature 1.0 --num-samples 3
    python sample.py --max-new-tokens 200 --device cpu # the sample main.py printed

A language model only predicts the next token's distribution; generation.py's loop draws one
token from it, appends it and asks again. The flags are that loop's settings, with the app's
defaults: ``--temperature`` divides the logits (below 1 sharper, above 1 flatter, 0 always
takes the most likely token), ``--top-k`` and ``--top-p`` cut off the unlikely tail (0 and 1
switch them off), and ``--seed`` fixes the draws, so the same command prints the same text
(sample n of ``--num-samples`` uses seed + n). Each piece is printed as soon as it is decoded.

The model is main.py's checkpoint (``model_weights.pth``), which holds its tokenizer too.
ask.py reuses the sampling flags and the printing defined here.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterable

from checkpoint import load_checkpoint
from generation import stream_text
from support.checks import TEMPERATURE, TOP_P
from support.cli import FlagParser, flag, new_tokens_arg, path_arg, run, seed_arg, text_arg, whole
from support.runtime import pick_device


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float,
                      top_k: int) -> None:
    """The flags sample.py and ask.py share; each passes the defaults of its tab in the app."""
    p.add_argument("--max-new-tokens", type=new_tokens_arg, default=max_new_tokens,
                   help="length limit of the generated text, in tokens")
    p.add_argument("--temperature", type=flag(TEMPERATURE), default=temperature,
                   help="below 1 sharper, above 1 flatter; 0 always takes the likeliest token")
    p.add_argument("--top-k", type=whole(0), default=top_k,
                   help="draw only from the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=flag(TOP_P), default=1.0,
                   help="draw only from the likeliest tokens that together reach p (1: off)")
    p.add_argument("--seed", type=seed_arg, default=1337,
                   help="the same seed and settings give the same text")
    p.add_argument("--no-stream", action="store_true",
                   help="print the text once it is complete instead of piece by piece")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 or mps")


def sampling(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``stream_text`` (and ``stream_answer``) that the flags set."""
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
            "top_k": args.top_k or None, "top_p": args.top_p if args.top_p < 1 else None,
            "seed": args.seed}


def show(pieces: Iterable[str], stream: bool = True) -> None:
    """Print text as it is generated (flushed piece by piece), or all of it at the end."""
    if not stream:
        pieces = ["".join(pieces)]
    for piece in pieces:
        print(piece, end="", flush=True)
    print()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=path_arg, default="model_weights.pth",
                   help="a base-model checkpoint, written by main.py")
    p.add_argument("--prompt", type=text_arg, default="ROMEO:",
                   help="the text to continue; empty: start as a new document does")
    p.add_argument("--num-samples", type=whole(1), default=1, help="how many texts to print")
    add_sampling_args(p, max_new_tokens=120, temperature=0.8, top_k=50)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model, tokenizer, _ = load_checkpoint(args.model, map_location=pick_device(args.device))
    for n in range(args.num_samples):
        if n:
            print("---------------")
        pieces = stream_text(model, tokenizer, args.prompt, **{**sampling(args),
                                                               "seed": args.seed + n})
        show(itertools.chain([args.prompt], pieces), stream=not args.no_stream)
    return 0


if __name__ == "__main__":
    run(main)
