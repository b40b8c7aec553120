"""Generation speed with and without the KV cache, and the cost of the clean-text mask.

    python benchmarks/bench_generation.py [--checkpoint model_weights.pth] [--tokens 256]

Without the cache every new token re-runs the whole sequence through the model; with it,
each step feeds one token and reuses the stored keys and values. Greedy decoding makes
both runs produce the same tokens, which the script checks. The last row adds the mask that
keeps the text valid UTF-8 without control characters (what generate_text and the app use).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoint import load_checkpoint  # noqa: E402
from generation import encode_prompt, generate_ids, text_mask  # noqa: E402
from support.runtime import pick_device  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="model_weights.pth")
    p.add_argument("--tokens", type=int, default=256, help="new tokens per run")
    p.add_argument("--prompt", default="ROMEO:")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    device = pick_device(args.device)
    model, tokenizer, _ = load_checkpoint(args.checkpoint, map_location=device)
    ids = encode_prompt(tokenizer, args.prompt)
    print(f"{args.checkpoint}: {model.num_parameters() / 1e6:.2f} M parameters, context "
          f"{model.config.context_length}, {args.tokens} new tokens, device {device}, "
          f"{torch.get_num_threads()} threads")
    clean = text_mask(tokenizer)
    outputs, speeds = {}, {}
    for name, use_cache, mask in (("KV cache off", False, None), ("KV cache on ", True, None),
                                  ("+ clean text", True, clean)):
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            outputs[name] = list(generate_ids(model, ids, args.tokens, temperature=0,
                                              use_cache=use_cache, clean=mask))
            best = min(best, time.perf_counter() - t0)
        speeds[name] = len(outputs[name]) / best
        print(f"  {name}: {speeds[name]:8.1f} tokens/s")
    off, on = speeds["KV cache off"], speeds["KV cache on "]
    print(f"  speedup: {on / off:.2f}x; identical tokens: "
          f"{outputs['KV cache on '] == outputs['KV cache off']}; clean-text mask costs "
          f"{1 - speeds['+ clean text'] / on:.1%}")

if __name__ == "__main__":
    main()
