"""Where the app's generation time goes: generate_text, the app's streaming, base vs QLoRA.

    python benchmarks/bench_app_generation.py [--checkpoint model_weights.pth] [--tokens 120]

One model (the checkpoint if it exists, else the CPU preset's shape with random weights and
a tokenizer trained here on TinyShakespeare) and one setting (the app's defaults: prompt
"ROMEO:", temperature 0.8, top-k 50, seed 1337) are timed in one process, each way back to
back, in rounds, best of ``--repeats``, with one fixed number of torch threads. On a loaded
machine wall-clock speeds wander; the ratios to generate_text, and the CPU time per token
(this thread's, which load from elsewhere leaves alone) are what to compare:

- ``generate_text (base)``            the chapter's function, the reference.
- ``app stream, redraw every token``  what app.show_stream did: showcase.stream_to with the
                                      HTML the page gets, redrawn after every piece.
- ``app stream, redraw <= 20/s``      what it does now (``showcase.UPDATE_INTERVAL_S``).
- ``app.py (AppTest), generate``     the real app.py run by Streamlit's AppTest: its own
  ``app.py (AppTest), instructions``  "tokens/s" caption, the figure a visitor sees (wall
                                      clock only: the script runs on Streamlit's thread);
                                      the instructions row answers with the QLoRA model.
- ``QLoRA as loaded for inference``   ``load_instruction_model(..., dense=True)``, what the
                                      app and ask.py answer with.
- ``QLoRA, 4-bit layers``             the training form: NF4 dequantized in every forward.

Each row also says whether its tokens equal generate_text's with the same model and seed
(the QLoRA rows: the 4-bit model's).
"""

import argparse
import html
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import showcase  # noqa: E402
from checkpoint import load_checkpoint, save_checkpoint, weights_fingerprint  # noqa: E402
from generation import encode_prompt, generate_ids, generate_text, stream_text  # noqa: E402
from instructions import load_instruction_model, make_qlora, save_instruction_adapters  # noqa: E402
from lora import lora_layers  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402

SETTINGS = dict(temperature=0.8, top_k=50, seed=1337)  # the app's Generate defaults
CPU_PRESET = dict(vocab_size=1024, context_length=128, n_layer=4, n_head=4, n_embd=128)
Measured = tuple[float, float | None, list[int] | None]  # tokens/s, CPU s per token, tokens
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.0, "targets": ["qkv", "out_proj", "fc_in", "fc_out"]}


def make_model(checkpoint: Path) -> tuple[GPTModel, BPETokenizer]:
    """The checkpoint if there is one, else a random model of the CPU preset's shape."""
    if checkpoint.is_file():
        model, tokenizer, _ = load_checkpoint(checkpoint)
        return model, tokenizer
    data = Path(os.environ.get("LLM_DATA_DIR", "data")) / "tinyshakespeare.txt"
    text = data.read_text(encoding="utf-8")[:200_000] if data.is_file() else \
        "To be, or not to be, that is the question. " * 2000
    tokenizer = BPETokenizer()
    tokenizer.train(text, CPU_PRESET["vocab_size"])
    torch.manual_seed(0)
    return GPTModel(GPTConfig(**CPU_PRESET)), tokenizer


def write_checkpoints(folder: Path, model: GPTModel, tokenizer: BPETokenizer) -> None:
    """model_weights.pth and qlora_adapters.pth (adapters with non-zero B) in ``folder``."""
    base_path = folder / "model_weights.pth"
    save_checkpoint(base_path, model, tokenizer)
    fingerprint = weights_fingerprint(model.state_dict())
    qlora = make_qlora(load_checkpoint(base_path)[0], "scratch", r=LORA["r"],
                       alpha=LORA["alpha"], targets=LORA["targets"])
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(qlora):
            layer.lora_B.normal_(std=0.02)  # trained adapters are not zero
    save_instruction_adapters(folder / "qlora_adapters.pth", qlora, tokenizer,
                              base_path=base_path, base_fingerprint=fingerprint,
                              backend="scratch", lora=LORA)


def tokens_of(model, tokenizer, prompt: str, n: int) -> list[int]:
    return list(generate_ids(model, encode_prompt(tokenizer, prompt), n,
                             vocab_size=tokenizer.vocab_size, **SETTINGS))


def timed(run) -> tuple[float, float]:
    """Wall seconds and this thread's CPU seconds of ``run()``. With one torch thread all the
    work is on this thread, so CPU time is the figure that load from elsewhere leaves alone."""
    wall, cpu = time.perf_counter(), time.thread_time()
    run()
    return time.perf_counter() - wall, time.thread_time() - cpu


def time_generate_text(model, tokenizer, prompt: str, n: int) -> Measured:
    """generate_text (stop_at_eot off, so every run makes n tokens)."""
    wall, cpu = timed(lambda: generate_text(model, tokenizer, prompt, n, stop_at_eot=False,
                                            **SETTINGS))
    return n / wall, cpu / n, tokens_of(model, tokenizer, prompt, n)


def time_app_stream(model, tokenizer, prompt: str, n: int, interval: float) -> Measured:
    """The app's streaming loop (showcase.stream_to), the page replaced by the HTML the app
    would send it, redrawn at most every ``interval`` seconds."""
    def render(text: str) -> None:
        pages.append(f"<div><b>{html.escape(prompt)}</b>{html.escape(text)}</div>")

    pages = []
    wall, cpu = timed(lambda: showcase.stream_to(
        stream_text(model, tokenizer, prompt, n, stop_at_eot=False, **SETTINGS), model, render,
        interval))
    return n / wall, cpu / n, tokens_of(model, tokenizer, prompt, n)


def time_app(app: Path, folder: Path, n: int, tab: str) -> Measured:
    """The tokens/s caption of the app after one click on Generate (or Answer)."""
    from streamlit.testing.v1 import AppTest
    os.environ.update(LLM_APP_DIR=str(folder), LLM_APP_DEVICE="cpu")
    at = AppTest.from_file(str(app.resolve()), default_timeout=120).run()
    key, index = ("gen", 2) if tab == "generate" else ("inst", 4)
    at.slider(key=f"{key}_max").set_value(n)
    at.button(key=f"{key}_go").click().run()
    caption = at.tabs[index].caption[-1].value  # "N tokens generated in X s: Y tokens/s"
    return float(caption.split(": ")[-1].split(" tokens/s")[0]), None, None


def interleaved(measures: dict, repeats: int) -> dict[str, Measured]:
    """Best tokens/s and CPU time per token of each measure, and its tokens: in rounds that run
    every measure once, so a burst of load from elsewhere hits all of them, not one."""
    best = {}
    for _ in range(repeats):
        for name, measure in measures.items():
            speed, cpu, tokens = measure()
            old_speed, old_cpu, _ = best.get(name, (0.0, None, None))
            best[name] = (max(speed, old_speed),
                          cpu if old_cpu is None else min(cpu, old_cpu), tokens)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="model_weights.pth")
    p.add_argument("--tokens", type=int, default=120, help="new tokens per run (app default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every row")
    p.add_argument("--app", nargs="*", default=[str(ROOT / "app.py")],
                   help="app scripts to time with AppTest (none: skip those rows); another "
                        "version of app.py, saved beside it, compares before and after")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model, tokenizer = make_model(Path(args.checkpoint))
    model.eval()
    folder = Path(tempfile.mkdtemp(prefix="bench-app-"))
    write_checkpoints(folder, model, tokenizer)
    qlora_4bit, _, _ = load_instruction_model(folder / "qlora_adapters.pth")
    qlora, _, _ = load_instruction_model(folder / "qlora_adapters.pth", dense=True)
    n, prompt = args.tokens, "ROMEO:"
    print(f"{model.num_parameters() / 1e6:.2f} M parameters, context "
          f"{model.config.context_length}, {n} new tokens, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}")

    measures = {
        "generate_text (base)": lambda: time_generate_text(model, tokenizer, prompt, n),
        "app stream, redraw every token": lambda: time_app_stream(model, tokenizer, prompt, n,
                                                                  0.0),
        "app stream, redraw <= 20/s": lambda: time_app_stream(model, tokenizer, prompt, n,
                                                              showcase.UPDATE_INTERVAL_S),
        "QLoRA as loaded for inference": lambda: time_generate_text(qlora, tokenizer, prompt, n),
        "QLoRA, 4-bit layers": lambda: time_generate_text(qlora_4bit, tokenizer, prompt, n),
    }
    for app in map(Path, args.app):
        for tab in ("generate", "instructions"):
            measures[f"{app.name} (AppTest), {tab}"] = \
                lambda app=app, tab=tab: time_app(app, folder, n, tab)
    results = interleaved(measures, args.repeats)
    reference, ref_cpu, base_tokens = results["generate_text (base)"]
    qlora_tokens = tokens_of(qlora_4bit, tokenizer, prompt, n)
    print(f"  {'path':38} {'tokens/s':>8} {'ratio':>6} {'CPU ms/token':>13} {'ratio':>6}  "
          "same tokens")
    for name, (speed, cpu, tokens) in results.items():
        same = "-" if tokens is None else \
            tokens == (qlora_tokens if name.startswith("QLoRA") else base_tokens)
        cpu_columns = f"{'-':>13} {'-':>6}" if cpu is None else \
            f"{cpu * 1e3:13.2f} {ref_cpu / cpu:5.2f}x"
        print(f"  {name:38} {speed:8.1f} {speed / reference:5.2f}x {cpu_columns}  {same}")

if __name__ == "__main__":
    main()
