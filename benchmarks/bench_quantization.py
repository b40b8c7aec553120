"""Benchmark NF4 weight quantization: memory and error, fp32 vs NF4 vs NF4 + double quant.

Not a test; it prints the numbers for the README and the QLoRA issue. For the GPT model (the
GPTConfig's default size with random weights, or a trained checkpoint with --checkpoint) it
quantizes the linear layers LoRA targets (qkv, out_proj, fc_in, fc_out) and reports:

1. Weight bytes of those layers in fp32, in NF4 (fp32 absmax per 64 weights) and in NF4 with
   double quantization, as bits per weight and as a fraction of fp32 (QLoRA target: <= 0.15),
   plus the whole model's bytes (embeddings and norms stay fp32).
2. Quantization error of the weights (mean / max absolute, and relative RMS), and of the
   logits on random tokens.
3. With --backend bitsandbytes or both: the same through bnb.nn.Linear4bit, and the largest
   difference between the two backends' dequantized weights.

Usage: python benchmarks/bench_quantization.py [--checkpoint model_weights.pth]
       [--n-layer 4 --n-head 4 --n-embd 256 --vocab-size 4096 --context-length 256]
       [--backend scratch|bitsandbytes|both]
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lora import DEFAULT_TARGETS  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402
from quantization import (  # noqa: E402
    dequantized_weight,
    is_quantized,
    quantize_model,
    quantized_nbytes,
)

QLORA_TARGET_RATIO = 0.15


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", help="trained base model (default: random weights)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--context-length", type=int, default=256)
    parser.add_argument("--backend", choices=("scratch", "bitsandbytes", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def build_model(args: argparse.Namespace) -> tuple[GPTModel, str]:
    if args.checkpoint:
        from checkpoint import load_checkpoint

        model, _, _ = load_checkpoint(args.checkpoint)
        return model.eval(), args.checkpoint
    torch.manual_seed(args.seed)
    config = GPTConfig(vocab_size=args.vocab_size, context_length=args.context_length,
                       n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    return GPTModel(config).eval(), "random weights"


def target_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1]
            in DEFAULT_TARGETS}


def weight_errors(original: GPTModel, quantized: GPTModel) -> dict[str, float]:
    dense = target_layers(original)
    diffs, weights = [], []
    for name, layer in target_layers(quantized).items():
        diffs.append((dequantized_weight(layer) - dense[name].weight.float()).reshape(-1))
        weights.append(dense[name].weight.float().reshape(-1))
    diff, weight = torch.cat(diffs), torch.cat(weights)
    return {"mean_abs": diff.abs().mean().item(), "max_abs": diff.abs().max().item(),
            "rel_rms": (diff.square().mean() / weight.square().mean()).sqrt().item()}


def model_nbytes(model: torch.nn.Module, quantized_stored: int = 0) -> int:
    """Bytes of all parameters and buffers (a tied tensor once), with each 4-bit layer's
    weight storage counted as `quantized_stored` reports it."""
    packed = set()
    for module in model.modules():
        if is_quantized(module):  # our buffers, or bitsandbytes' uint8 weight parameter
            packed |= {id(t) for t in module.buffers(recurse=False)}
            packed.add(id(getattr(module, "weight", None)))
    unique = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    dense = sum(t.numel() * t.element_size() for i, t in unique.items() if i not in packed)
    return dense + quantized_stored


def main() -> None:
    args = parse_args()
    torch.set_grad_enabled(False)
    model, source = build_model(args)
    cfg = model.config
    print(f"model: {source}; n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd} "
          f"vocab={cfg.vocab_size} context={cfg.context_length}; "
          f"{sum(p.numel() for p in model.parameters()):,} parameters")
    torch.manual_seed(args.seed)
    tokens = torch.randint(0, cfg.vocab_size, (4, min(128, cfg.context_length)))
    reference_logits = model(tokens)

    backends = ("scratch", "bitsandbytes") if args.backend == "both" else (args.backend,)
    rows, dequantized = [], {}
    for backend in backends:
        for double_quant in (False, True):
            quantized = quantize_model(copy.deepcopy(model), backend=backend,
                                       double_quant=double_quant)
            report = quantized_nbytes(quantized)
            errors = weight_errors(model, quantized)
            logits_error = (quantized(tokens) - reference_logits).abs().mean().item()
            dequantized[backend, double_quant] = [
                dequantized_weight(m) for m in target_layers(quantized).values()
            ]
            rows.append((backend, double_quant, report, errors, logits_error,
                         model_nbytes(quantized, report["stored"])))

    report = rows[0][2]
    fp32_model = model_nbytes(model)
    share = report["params"] / sum(p.numel() for p in model.parameters())
    print(f"quantized layers: {report['layers']} ({', '.join(DEFAULT_TARGETS)}), "
          f"{report['params']:,} weights = {share:.1%} of the model's parameters\n")
    header = (f"{'format':<22}{'layer bytes':>13}{'bits/w':>8}{'x fp32':>8}{'model bytes':>13}"
              f"{'mean|err|':>11}{'max|err|':>10}{'rel RMS':>9}{'logits|err|':>13}")
    print(header)
    print("-" * len(header))
    print(f"{'fp32':<22}{report['fp32']:>13,}{32:>8.3f}{1:>8.3f}{fp32_model:>13,}"
          f"{0:>11.2e}{0:>10.2e}{0:>9.4f}{0:>13.2e}")
    for backend, double_quant, rep, err, logits_error, total in rows:
        label = f"NF4{' + DQ' if double_quant else ''} ({backend})"
        print(f"{label:<22}{rep['stored']:>13,}{8 * rep['stored'] / rep['params']:>8.3f}"
              f"{rep['stored'] / rep['fp32']:>8.3f}{total:>13,}{err['mean_abs']:>11.2e}"
              f"{err['max_abs']:>10.2e}{err['rel_rms']:>9.4f}{logits_error:>13.2e}")

    ratio = report["nf4_dq"] / report["fp32"]
    verdict = "met" if ratio <= QLORA_TARGET_RATIO else "NOT met"
    print(f"\nNF4 + DQ = {ratio:.4f} x fp32 for the quantized layers "
          f"(target <= {QLORA_TARGET_RATIO}: {verdict}; the paper's 4.127 bits = 0.129)")
    print(f"logits|err| is the mean absolute change of the logits on random tokens "
          f"(mean |logit| = {reference_logits.abs().mean().item():.3f})")
    if len(backends) == 2:
        for double_quant in (False, True):
            pairs = list(zip(dequantized["scratch", double_quant],
                             dequantized["bitsandbytes", double_quant], strict=True))
            gap = max((a - b).abs().max().item() for a, b in pairs)
            blocks = sum((a != b).reshape(-1, 64).any(dim=1).sum().item() for a, b in pairs)
            total = sum(a.numel() // 64 for a, _ in pairs)
            print(f"scratch vs bitsandbytes ({'NF4 + DQ' if double_quant else 'NF4'}): "
                  f"dequantized weights differ in {blocks} of {total} blocks, by at most {gap:.2e}")
        print("(with DQ, bitsandbytes' CPU kernel rounds each scaled absmax to a 1/32768 grid "
              "before picking its 8-bit code; ours takes the exact nearest code)")

if __name__ == "__main__":
    main()
