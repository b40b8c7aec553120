"""Check the GPU code paths that CI (CPU only) never runs, and print PASS/FAIL for each.

    python benchmarks/cuda_check.py

1. Flash attention: our MultiHeadAttention under bf16 runs on the flash kernel (forced) and
   agrees with the math kernel.
2. bf16 autocast: logits stay close to fp32; a training step under autocast has finite grads.
3. KV cache: greedy decoding with and without the cache gives the same tokens on the GPU.
4. Checkpoints: a model saved from the GPU loads on the CPU with identical logits.
5. NF4: our quantizer gives bitsandbytes' CUDA kernel's 4-bit codes and dequantized weights
   bit for bit, and a QLoRA model (both backends) trains: loss falls, only adapters change.
6. torch.compile: the compiled model gives the eager model's logits.
7. float16 training: train_model with --dtype float16 scales the loss (GradScaler): the loss
   falls and the scale it ends with is saved for an exact resume.
Exits 1 if any check fails.
"""

from __future__ import annotations

import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from generation import generate_ids  # noqa: E402
from lora import apply_lora, freeze_all_but_lora  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402
from quantization import dequantize_nf4, import_bitsandbytes, quantize_model, quantize_nf4  # noqa: E402
from support.runtime import Bookkeeping  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402
from training import TrainConfig, train_model  # noqa: E402

DEVICE = torch.device("cuda")
CONFIG = GPTConfig(vocab_size=512, context_length=128, n_layer=4, n_head=4, n_embd=256)


def fresh_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(CONFIG).to(DEVICE)


def tokens(batch: int = 4, length: int = 128) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (batch, length), device=DEVICE,
                         generator=torch.Generator(DEVICE).manual_seed(1))


def check_flash_attention() -> str:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    model, x = fresh_model().eval(), tokens()
    with torch.autocast("cuda", torch.bfloat16), torch.no_grad():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = model(x).float()
        with sdpa_kernel(SDPBackend.MATH):
            math_ = model(x).float()
    err = (flash - math_).abs().max().item()
    assert err < 0.1, f"flash vs math kernel differ by {err}"
    return f"max |flash - math| = {err:.4f} (bf16)"


def check_bf16_autocast() -> str:
    model, x = fresh_model(), tokens()
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cuda", torch.bfloat16):
            bf16 = model(x).float()
    err = (fp32 - bf16).abs().max().item()
    assert err < 0.25, f"bf16 logits differ from fp32 by {err}"
    with torch.autocast("cuda", torch.bfloat16):
        loss = F.cross_entropy(model(x[:, :-1]).flatten(0, 1).float(), x[:, 1:].flatten())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return f"max |bf16 - fp32| logits = {err:.4f}; loss {loss.item():.3f}, grads finite"


def check_kv_cache() -> str:
    model = fresh_model()
    prompt = tokens(1, 10)[0].tolist()
    cached = list(generate_ids(model, prompt, 300, temperature=0, use_cache=True))
    plain = list(generate_ids(model, prompt, 300, temperature=0, use_cache=False))
    same = sum(a == b for a, b in zip(cached, plain, strict=True))
    assert cached == plain, f"only {same} of 300 tokens agree"
    return (f"300 greedy tokens identical (past the {model.config.context_length}-token "
            "window, so it slides)")


def check_checkpoint_to_cpu() -> str:
    model, x = fresh_model().eval(), tokens()
    tokenizer = BPETokenizer()
    tokenizer.train("to be or not to be, that is the question " * 20, 300)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gpu.pth"
        save_checkpoint(path, model, tokenizer)
        loaded, _, _ = load_checkpoint(path, map_location="cpu")
    with torch.no_grad():
        same = torch.equal(model(x).cpu(), loaded.eval()(x.cpu()))
    gap = (model(x).cpu() - loaded(x.cpu())).abs().max().item()
    assert gap < 1e-4, f"CPU logits differ by {gap}"
    return f"loads on CPU; logits {'bit-identical' if same else f'within {gap:.1e}'}"


def check_nf4_against_bitsandbytes() -> str:
    bnb = import_bitsandbytes()
    torch.manual_seed(0)
    weight = torch.randn(768, 257, device=DEVICE) * 0.02
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    ours = quantize_nf4(weight, blocksize=64, double_quant=False)
    assert torch.equal(ours.packed.cpu(), packed.reshape(-1).cpu()), "4-bit codes differ"
    expected = bnb.functional.dequantize_4bit(packed, state)
    assert torch.equal(dequantize_nf4(ours).cpu(), expected.reshape(weight.shape).cpu())
    return "codes and dequantized weights bit-identical to bitsandbytes' CUDA kernel"


def check_qlora_training() -> str:
    notes = []
    for backend in ("scratch", "bitsandbytes"):
        model = quantize_model(fresh_model(), backend=backend)
        freeze_all_but_lora(apply_lora(model, r=8, alpha=16))
        # Everything but the adapters: our backend keeps the 4-bit codes in buffers,
        # bitsandbytes in Params4bit parameters; embeddings and norms are frozen parameters.
        frozen = {n: t.detach().clone() for n, t in [*model.named_parameters(),
                                                      *model.named_buffers()]
                  if not t.requires_grad}
        assert frozen, f"{backend}: nothing frozen to compare"
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=3e-3)
        x = tokens(8, 64)
        losses = []
        for _ in range(30):
            with torch.autocast("cuda", torch.bfloat16):
                logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] - 0.5, f"{backend}: loss {losses[0]:.2f} -> {losses[-1]:.2f}"
        now = dict([*model.named_parameters(), *model.named_buffers()])
        assert all(torch.equal(now[n].detach(), t) for n, t in frozen.items()), \
            f"{backend}: the quantized base changed"
        notes.append(f"{backend} {losses[0]:.2f}->{losses[-1]:.2f}")
    return "QLoRA loss " + ", ".join(notes) + "; quantized base unchanged"


def check_compile() -> str:
    model, x = fresh_model().eval(), tokens()
    started = time.perf_counter()
    compiled = torch.compile(model)
    with torch.no_grad():
        gap = (compiled(x) - model(x)).abs().max().item()
    assert gap < 1e-3, f"compiled logits differ by {gap}"
    seconds = time.perf_counter() - started
    return f"compiled logits within {gap:.1e} of eager; first call {seconds:.0f} s"


def check_float16_training() -> str:
    model, x = fresh_model(), tokens(64, 65)
    batches = DataLoader(TensorDataset(x[:, :-1], x[:, 1:]), batch_size=8)
    cfg = TrainConfig(max_steps=60, learning_rate=3e-3, warmup_steps=5, eval_interval=1000,
                      dtype="float16")
    saved = {}
    summary = train_model(model, batches, batches, cfg, DEVICE,
                          bookkeeping=Bookkeeping(save_fn=saved.update))
    first = F.cross_entropy(fresh_model()(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten()).item()
    assert summary["dtype"] == "float16" and summary["val_loss"] < first - 0.5, \
        f"loss {first:.2f} -> {summary['val_loss']:.2f}"
    scale = saved["scaler"]["scale"]
    return f"float16 loss {first:.2f} -> {summary['val_loss']:.2f}; loss scale {scale:g} saved"


def main() -> int:
    if not torch.cuda.is_available():
        print("No CUDA device: nothing to check.")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    failed = 0
    for check in (check_flash_attention, check_bf16_autocast, check_kv_cache,
                  check_checkpoint_to_cpu, check_nf4_against_bitsandbytes, check_qlora_training,
                  check_compile, check_float16_training):
        try:
            print(f"PASS {check.__name__}: {check()}", flush=True)
        except Exception:  # report every check, then fail at the end
            failed += 1
            print(f"FAIL {check.__name__}:\n{traceback.format_exc()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
