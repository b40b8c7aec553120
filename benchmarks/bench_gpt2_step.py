"""GPT-2 small (124 M, random weights) on a CPU: one forward and one training step per
finetuning recipe, with seconds and peak memory.

Not a test. It shows what ``--base gpt2`` costs before anyone downloads the weights: the real
config (50,257 tokens, 1,024 positions, 12 layers x 12 heads x 768) is built from scratch, so
the figures hold for OpenAI's weights too. Each recipe runs in a fresh process, so its peak
resident memory (getrusage's ru_maxrss) is its own:

- full-classifier  finetune_classifier.py: every weight trains (AdamW state for 124 M)
- lora-classifier  finetune_lora_classifier.py's defaults: LoRA on qkv / out_proj + the head
- qlora-scratch    finetune_qlora_instructions.py: NF4 base (quantization.py) + LoRA, LM loss
- qlora-bnb        the same with bitsandbytes' Linear4bit

Usage: python benchmarks/bench_gpt2_step.py [--batch 8 --seq 128 --steps 2]
       [--recipes lora-classifier qlora-scratch ...]
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifier import GPTClassifier  # noqa: E402
from finetune_lora_classifier import (  # noqa: E402
    DEFAULT_ALPHA,
    DEFAULT_LORA_TARGETS,
    DEFAULT_RANK,
)
from finetune_qlora_instructions import DEFAULT_ALPHA as QLORA_ALPHA  # noqa: E402
from finetune_qlora_instructions import DEFAULT_DROPOUT as QLORA_DROPOUT  # noqa: E402
from finetune_qlora_instructions import DEFAULT_RANK as QLORA_RANK  # noqa: E402
from instructions import make_qlora  # noqa: E402
from lora import apply_lora, count_parameters, freeze_all_but_lora  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402

GPT2_SMALL = GPTConfig(vocab_size=50257, context_length=1024, n_layer=12, n_head=12, n_embd=768)
RECIPES = ("full-classifier", "lora-classifier", "qlora-scratch", "qlora-bnb")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def build(recipe: str) -> torch.nn.Module:
    gpt = GPTModel(GPT2_SMALL)
    if recipe == "full-classifier":
        return GPTClassifier(gpt)
    if recipe == "lora-classifier":
        model = GPTClassifier(gpt)
        apply_lora(model.gpt, r=DEFAULT_RANK, alpha=DEFAULT_ALPHA, targets=DEFAULT_LORA_TARGETS)
        return freeze_all_but_lora(model, trainable_extra=("head",))
    backend = "scratch" if recipe == "qlora-scratch" else "bitsandbytes"
    return make_qlora(gpt, backend=backend, r=QLORA_RANK, alpha=QLORA_ALPHA,
                      dropout=QLORA_DROPOUT)


def loss_of(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    if isinstance(model, GPTClassifier):
        labels = torch.arange(ids.size(0)) % 2
        return F.cross_entropy(model(ids), labels)
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def run_one(recipe: str, batch: int, seq: int, steps: int) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build(recipe)
    built_s = time.perf_counter() - start
    trainable, total = count_parameters(model)
    ids = torch.randint(0, GPT2_SMALL.vocab_size, (batch, seq))
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        loss_of(model, ids)
        forward_s = time.perf_counter() - start
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    step_s = []
    for _ in range(steps):
        start = time.perf_counter()
        loss_of(model, ids).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - start)
    return {"recipe": recipe, "trainable": trainable, "total": total, "build_s": built_s,
            "forward_s": forward_s, "step_s": step_s, "peak_rss_mb": peak_rss_mb(),
            "threads": torch.get_num_threads()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=2, help="training steps (the first warms up)")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    p.add_argument("--one", choices=RECIPES, help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.batch, args.seq, args.steps)))
        return 0
    print(f"GPT-2 small, random init, batch {args.batch} x {args.seq} tokens, CPU")
    print(f"{'recipe':16s} {'trainable':>12s} {'build s':>8s} {'forward s':>10s} "
          f"{'step s (each)':>20s} {'peak RSS MB':>12s}")
    for recipe in args.recipes:
        child = subprocess.run([sys.executable, __file__, "--one", recipe, "--batch",
                                str(args.batch), "--seq", str(args.seq), "--steps",
                                str(args.steps)], capture_output=True, text=True)
        if child.returncode:
            print(f"{recipe:16s} failed: {child.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(child.stdout.strip().splitlines()[-1])
        steps = ", ".join(f"{s:.1f}" for s in r["step_s"])
        print(f"{recipe:16s} {r['trainable']:>12,} {r['build_s']:>8.1f} {r['forward_s']:>10.1f} "
              f"{steps:>20s} {r['peak_rss_mb']:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
