"""Benchmark the memory of one training step, by kind, for each finetuning method.

Not a test; it prints the tables RESULTS.md quotes. The figures are counted, not timed:
memory.py's ``training_memory`` adds up the bytes of the weights (as stored: fp32,
or NF4 codes and double-quantized scales), the gradients (trainable parameters only), the
optimizer state (AdamW: two moments and a step counter; Muon: one momentum per matrix) and
the activations autograd saves for backward, each memory block once. So they are the same
on every machine, and they need no run of the pipeline.

1. The default pipeline: the CPU preset's model (main.py's "cpu" preset) set up exactly as each
   finetuning script sets it up, with its default flags, at its largest batch
   (``finetuning.memory_at_full_batch``: --batch-size examples of the full context). These are
   the numbers each script writes to runs/<name>/metrics.json. The full finetune also with
   Muon, the optimizer main.py's preset pretrains with.
2. GPT-2 124 M: the same methods on the SST-2 classifier at batch 8 x 128 (the classifier
   scripts' GPT-2 defaults), counted on the meta device, where nothing is allocated
   (``showcase.projected_memory``: the table run_all.py's summary and the app show).

Usage: python benchmarks/bench_memory.py
"""

import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import finetune_classifier  # noqa: E402
import finetune_lora_classifier  # noqa: E402
import finetune_qlora_instructions  # noqa: E402
import run_all  # noqa: E402
import showcase  # noqa: E402
from classifier import GPTClassifier, classification_loss  # noqa: E402
from finetuning import full_batch, memory_at_full_batch  # noqa: E402
from instructions import make_qlora  # noqa: E402
from lora import DEFAULT_TARGETS  # noqa: E402
from main import PRESETS  # noqa: E402
from memory import memory_record  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402
from training import configure_optimizer, lm_loss  # noqa: E402

CPU = torch.device("cpu")


def preset_model() -> GPTModel:
    """main.py's CPU preset shape, random weights (memory does not depend on the values)."""
    sizes = ("vocab_size", "context_length", "n_layer", "n_head", "n_embd")
    torch.manual_seed(0)
    return GPTModel(GPTConfig(**{name: PRESETS["cpu"][name] for name in sizes}))


def rows(name: str, memory: dict) -> list[dict]:
    """``memory`` (a memory_record) as showcase.memory_frame's rows."""
    return showcase.memory_rows(name, "default", memory, " x ".join(map(str, memory["batch"])))


def default_pipeline() -> pd.DataFrame:
    """Each finetuning script's model, optimizer and largest batch, with its default flags."""
    out = []
    args = finetune_classifier.parse_args([])
    length = PRESETS["cpu"]["context_length"]
    model = GPTClassifier(preset_model())
    out += rows("full finetune (AdamW)", memory_at_full_batch(
        model, classification_loss, args, length, CPU, labelled=True))
    muon = finetune_classifier.train_config(args)  # Muon is no flag of the script: swapped in
    muon.optimizer = "muon"
    batch = full_batch(args.batch_size, length, CPU, labelled=True)
    out += rows("full finetune (Muon)", memory_record(
        model, configure_optimizer(model, muon, CPU), classification_loss, batch))

    args = finetune_lora_classifier.parse_args([])
    model = GPTClassifier(preset_model())
    finetune_lora_classifier.add_lora(model, args)
    out += rows(f"LoRA r={args.rank} ({'+'.join(args.targets)})", memory_at_full_batch(
        model, classification_loss, args, length, CPU, labelled=True))

    args = finetune_qlora_instructions.parse_args([])
    model = make_qlora(preset_model(), args.backend, r=args.rank, alpha=args.alpha,
                       dropout=args.dropout, targets=DEFAULT_TARGETS)
    out += rows(f"QLoRA r={args.rank} ({args.backend})", memory_at_full_batch(
        model, lm_loss, args, length, CPU, labelled=False))
    return pd.DataFrame(out)


def main() -> None:
    default = default_pipeline()
    print("\n".join(run_all.memory_section(
        default, "## The default pipeline (CPU preset, 0.94 M parameters)",
        "Each finetuning script's model, optimizer and largest batch, default flags.")))
    print("\n".join(run_all.memory_section(
        showcase.projected_memory(), "## GPT-2 124 M (meta device)",
        "The SST-2 classifier at batch 8 x 128, each method; nothing allocated.")))


if __name__ == "__main__":
    main()
