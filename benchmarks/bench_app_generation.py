"""Where the app's generation time goes: generate_text, the app's streaming, base vs QLoRA.

    python benchmarks/bench_app_generation.py [--checkpoint model_weights.pth] [--tokens 120]

One model (the checkpoint if it exists, else the CPU preset's shape with random weights and
a tokenizer trained here on TinyShakespeare) and one setting (the app's defaults: prompt
"ROMEO:", temperature 0.8, top-k 50, seed 1337) are timed in one process, each way back to
back, best of ``--repeats``, with one fixed number of torch threads. On a loaded machine the
absolute numbers wander; the ratios in the last column are what to compare:

- ``generate_text``                     the chapter's function, the reference.
- ``app streaming, no Streamlit``       what app.show_stream does per piece (showcase.stream_to
                                        with an HTML formatter as the display), without a page.
- ``app (AppTest)``                     the real app.py run by Streamlit's AppTest: its own
                                        "tokens/s" caption, the figure a visitor sees.
- ``QLoRA as loaded for inference``     instructions.load_instruction_model, as the app and
                                        ask.py use it.
- ``QLoRA, 4-bit layers``               the training form: NF4 dequantized in every forward.

Each row also says whether its tokens equal generate_text's on the same model (same seed).
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
from generation import encode_prompt, generate_ids  # noqa: E402
from instructions import load_instruction_model, make_qlora, save_instruction_adapters  # noqa: E402
from lora import lora_layers  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402

SETTINGS = dict(temperature=0.8, top_k=50, seed=1337)  # the app's Generate defaults
CPU_PRESET = dict(vocab_size=1024, context_length=128, n_layer=4, n_head=4, n_embd=128)
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


def time_generate_text(model, tokenizer, prompt: str, n: int) -> tuple[float, list[int]]:
    """tokens/s of generate_text (stop_at_eot off, so every run makes n tokens)."""
    from generation import generate_text
    start = time.perf_counter()
    generate_text(model, tokenizer, prompt, n, stop_at_eot=False, **SETTINGS)
    return n / (time.perf_counter() - start), tokens_of(model, tokenizer, prompt, n)


def time_app_stream(model, tokenizer, prompt: str, n: int) -> tuple[float, list[int]]:
    """tokens/s of the app's streaming loop (showcase.stream_to), the page replaced by the
    HTML the app would send."""
    from generation import stream_text

    pages = []

    def render(text: str) -> None:
        pages.append(f"<div><b>{html.escape(prompt)}</b>{html.escape(text)}</div>")

    start = time.perf_counter()
    _, tokens = showcase.stream_to(stream_text(model, tokenizer, prompt, n, stop_at_eot=False,
                                               **SETTINGS), model, render)
    return tokens / (time.perf_counter() - start), tokens_of(model, tokenizer, prompt, n)


def time_app(folder: Path, n: int, tab: str) -> float:
    """The tokens/s caption of the real app after one click on Generate (or Answer)."""
    from streamlit.testing.v1 import AppTest
    os.environ.update(LLM_APP_DIR=str(folder), LLM_APP_DEVICE="cpu")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    key, index = ("gen", 2) if tab == "generate" else ("inst", 4)
    at.slider(key=f"{key}_max").set_value(n)
    at.button(key=f"{key}_go").click().run()
    caption = at.tabs[index].caption[-1].value  # "N tokens generated in X s: Y tokens/s"
    return float(caption.split(": ")[-1].split(" tokens/s")[0])


def interleaved(measures: dict, repeats: int) -> dict[str, tuple[float, list[int] | None]]:
    """Best tokens/s of each measure, and its tokens: rounds that run every measure once, so
    a burst of load from elsewhere hits all of them rather than one."""
    speeds = {name: 0.0 for name in measures}
    tokens = {}
    for _ in range(repeats):
        for name, measure in measures.items():
            result = measure()
            speed, tokens[name] = result if isinstance(result, tuple) else (result, None)
            speeds[name] = max(speeds[name], speed)
    return {name: (speeds[name], tokens[name]) for name in measures}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="model_weights.pth")
    p.add_argument("--tokens", type=int, default=120, help="new tokens per run (app default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads for every row")
    p.add_argument("--no-app", action="store_true", help="skip the AppTest rows (slow start)")
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
        "app streaming, no Streamlit": lambda: time_app_stream(model, tokenizer, prompt, n),
        "app (AppTest), Generate tab": lambda: time_app(folder, n, "generate"),
        "QLoRA as loaded for inference": lambda: time_generate_text(qlora, tokenizer, prompt, n),
        "QLoRA, 4-bit layers": lambda: time_generate_text(qlora_4bit, tokenizer, prompt, n),
    }
    if args.no_app:
        del measures["app (AppTest), Generate tab"]
    results = interleaved(measures, args.repeats)
    reference, base_tokens = results["generate_text (base)"]
    qlora_tokens = tokens_of(qlora_4bit, tokenizer, prompt, n)
    rows = [(name, speed, None if tokens is None else
             tokens == (qlora_tokens if name.startswith("QLoRA") else base_tokens))
            for name, (speed, tokens) in results.items()]
    print(f"  {'path':34} {'tokens/s':>9} {'vs generate_text':>17}  same tokens")
    for name, speed, same in rows:
        print(f"  {name:34} {speed:9.1f} {speed / reference:16.2f}x  "
              f"{'-' if same is None else same}")


if __name__ == "__main__":
    main()
