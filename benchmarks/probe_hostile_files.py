"""Probe: every hostile-file class of issue 22 through the script a user would run.

    python benchmarks/probe_hostile_files.py                        # the scripts of this tree
    python benchmarks/probe_hostile_files.py --repo /tmp/before     # those of another checkout

Each case builds its file in a temporary folder (with this tree's code: the formats are the
same), runs the script from ``--repo`` in that folder under a memory cap (RLIMIT_AS, so a
bomb ends in an allocation error instead of taking the machine) and a time limit, and prints
one row: the case, the exit code ("timeout" when killed), the peak resident memory of the
process, the seconds, and the first line of what it wrote to stderr ("Traceback" for a
traceback). tests/test_hostile_files.py builds its files with the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from checkpoint import make_checkpoint, model_shapes, save_checkpoint, weights_fingerprint  # noqa: E402,E501
from classifier import GPTClassifier, save_lora_classifier  # noqa: E402
from export_hf import to_hf  # noqa: E402
from lora import apply_lora, freeze_all_but_lora  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402
from training import TrainConfig  # noqa: E402

CFG = GPTConfig(vocab_size=320, context_length=32, n_layer=1, n_head=2, n_embd=32)
# A model of about 1.6 GB in float32: what a bomb declares around a few kilobytes.
BOMB = dict(n_layer=2, n_embd=4096, n_head=2)
SHARED_BOMB = dict(n_layer=24, n_embd=1024, n_head=2)  # 1.2 GB model, its largest weight 16 MB
LORA = {"r": 2, "alpha": 16, "dropout": 0.0, "targets": ["qkv", "out_proj", "fc_in", "fc_out"]}
BOMB_RANK = 500_000  # r * (in + out) summed over a layer's four targets: about 1 GB
TIME_BOMB = r"(?:.|..)+\d{9}"  # backtracks exponentially in the length of every line
CAP_BYTES = 6 << 30
PROMPT = "a" * 40  # a line the time bomb needs hours for


def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train("it's a fine, funny film; i do n't like it. ROMEO: JULIET:\n" * 30, 300)
    return tok


def tiny_model(seed: int = 0) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(CFG).eval()


def base(folder: Path, name: str = "base.pth", seed: int = 0) -> Path:
    """A small, healthy base checkpoint (the one every adapter case stands on)."""
    path = folder / name
    if not path.exists():
        save_checkpoint(path, tiny_model(seed), tokenizer())
    return path


def edited(folder: Path, name: str, edit: Callable[[dict], None]) -> Path:
    """A copy of the base checkpoint with ``edit`` applied to its dict."""
    ckpt = torch.load(base(folder), weights_only=True)
    edit(ckpt)
    torch.save(ckpt, folder / name)
    return folder / name


def expanded_weights(ckpt: dict) -> None:
    """A 1.6 GB model's config, each weight one number expanded to its shape."""
    ckpt["config"].update(BOMB)
    shapes = model_shapes(GPTConfig(**ckpt["config"]))
    ckpt["state_dict"] = {name: torch.zeros(1).expand(*shape) for name, shape in shapes.items()}


def shared_storage(ckpt: dict) -> None:
    """A 1.2 GB model's config, every weight a view of the same 16 MB."""
    ckpt["config"].update(SHARED_BOMB)
    shapes = model_shapes(GPTConfig(**ckpt["config"]))
    store = torch.zeros(max(s.numel() for s in shapes.values()))
    ckpt["state_dict"] = {name: store[:s.numel()].view(s) for name, s in shapes.items()}


def deflated(folder: Path) -> Path:
    """A checkpoint with 400 MB of zeros stored deflated: a file of about 400 KB."""
    plain = edited(folder, "plain.pth",
                   lambda c: c["state_dict"].update(extra=torch.zeros(100_000_000)))
    path = folder / "deflated.pth"
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
        for member in src.infolist():
            dst.writestr(member.filename, src.read(member.filename))
    plain.unlink()
    return path


def set_dtype(dtype: torch.dtype) -> Callable[[dict], None]:
    def edit(ckpt: dict) -> None:
        w = ckpt["state_dict"]["tok_emb.weight"]
        ckpt["state_dict"]["tok_emb.weight"] = (w * 100).to(dtype)
    return edit


def nan_weights(ckpt: dict) -> None:
    ckpt["state_dict"]["ln_f.weight"][0] = float("nan")


def time_bomb(ckpt: dict) -> None:
    ckpt["tokenizer"]["pattern"] = TIME_BOMB


def hf_folder(folder: Path, name: str, edit: Callable[[Path], None]) -> Path:
    """Our base exported as a Hugging Face GPT-2 folder, then ``edit``ed."""
    out = folder / name
    to_hf(tiny_model(), tokenizer(), out)
    edit(out)
    return out


def edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(out: Path) -> None:
        data = json.loads((out / name).read_text())
        change(data)
        (out / name).write_text(json.dumps(data))
    return edit


def truncate(out: Path) -> None:
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])


def rename_tensor(out: Path) -> None:
    from safetensors.torch import load_file, save_file
    tensors = load_file(out / "model.safetensors")
    tensors["h.0"] = tensors.pop("transformer.h.0.ln_1.weight")
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})


def hf_time_bomb(spec: dict) -> None:
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = TIME_BOMB


def lora_file(folder: Path, name: str, base_name: str = "base.pth", rank: int | None = None,
              fingerprint: str | None = None, nan: bool = False) -> Path:
    """A LoRA classifier trained (here: perturbed) on ``base_name``; ``rank``: declare that
    rank and hold no adapter tensors; ``fingerprint``: claim another base."""
    base(folder, base_name)
    model = GPTClassifier(tiny_model())
    apply_lora(model.gpt, **LORA)
    freeze_all_but_lora(model, trainable_extra=("head",))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01)
                param[..., 0] = float("nan") if nan else param[..., 0]
    path = folder / name
    save_lora_classifier(path, model, tokenizer(), base_path=base_name, lora=LORA,
                         base_fingerprint=weights_fingerprint(tiny_model().state_dict()))
    if rank is not None or fingerprint is not None:
        ckpt = torch.load(path, weights_only=True)
        if rank is not None:
            ckpt["metadata"]["lora"]["r"] = rank
            ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "lora" not in k}
        ckpt["metadata"]["base_fingerprint"] = fingerprint or ckpt["metadata"]["base_fingerprint"]
        torch.save(ckpt, path)
    return path


def retrained_base(folder: Path) -> Path:
    """An adapter file whose base, under the same name, was trained again since."""
    path = lora_file(folder, "lora_retrained.pth", base_name="retrained.pth")
    save_checkpoint(folder / "retrained.pth", tiny_model(seed=1), tokenizer())
    return path


def deep_jsonl(folder: Path) -> Path:
    path = folder / "deep.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    return path


def hand_edited_state(folder: Path) -> Path:
    """runs/r/state.pt as main.py writes it, its step hand-edited into a string."""
    path = folder / "runs" / "r" / "state.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint("train-state", tiny_model().state_dict(), CFG, tokenizer(),
                           train_config=asdict(TrainConfig(max_steps=10)), batch_size=4,
                           out=str(folder / "out.pth"))
    ckpt["training"] = {"step": "5", "optimizer": {"state": {}, "param_groups": []},
                        "rng": {"torch": torch.get_rng_state()}}
    torch.save(ckpt, path)
    return path


def tokenizer_file_bomb(folder: Path) -> list[str]:
    """main.py reusing a tokenizer file of the size asked for, its split pattern the bomb."""
    tok = tokenizer()
    (folder / "evil.json").write_text(json.dumps(dict(tok.to_dict(), pattern=TIME_BOMB)))
    return ["main.py", "--tokenizer", str(folder / "evil.json"), "--vocab-size",
            str(tok.vocab_size), "--max-steps", "1", "--out", str(folder / "m.pth"),
            "--run-name", "probe", "--device", "cpu"]


# Each case: (name, builder(folder) -> argv after "python"); the file it names is built.
def _sample(path: Path) -> list[str]:
    return ["sample.py", "--model", str(path), "--max-new-tokens", "5", "--device", "cpu",
            "--prompt", PROMPT]


def _evaluate(folder: Path) -> list[str]:
    return ["evaluate.py", "--checkpoint", str(folder), "--device", "cpu", "--out",
            str(folder.parent / "metrics.json")]


def _classify(path: Path, *extra: str) -> list[str]:
    return ["classify.py", "--model", str(path), "--device", "cpu", *extra, "a fine film"]


CASES: dict[str, Callable[[Path], list[str]]] = {
    "pth: weights expanded from one number (1.6 GB model)":
        lambda f: _sample(edited(f, "expanded.pth", expanded_weights)),
    "pth: every weight a view of one storage (1.2 GB model)":
        lambda f: _sample(edited(f, "shared.pth", shared_storage)),
    "pth: 400 MB deflated into a zip member":
        lambda f: _sample(deflated(f)),
    "pth: a folder named x.pth":
        lambda f: (f / "x.pth").mkdir() or _sample(f / "x.pth"),
    "pth: int64 weights": lambda f: _sample(edited(f, "int.pth", set_dtype(torch.int64))),
    "pth: complex weights": lambda f: _sample(edited(f, "cplx.pth", set_dtype(torch.complex64))),
    "pth: NaN weight": lambda f: _sample(edited(f, "nan.pth", nan_weights)),
    "pth: no config": lambda f: _sample(edited(f, "noconfig.pth", lambda c: c.pop("config"))),
    "pth: config n_embd 'wide'": lambda f: _sample(edited(
        f, "badcfg.pth", lambda c: c["config"].update(n_embd="wide"))),
    "pth: tokenizer without merges": lambda f: _sample(edited(
        f, "nomerges.pth", lambda c: c["tokenizer"].pop("merges"))),
    "pth: catastrophic split regex": lambda f: _sample(edited(f, "regex.pth", time_bomb)),
    "tokenizer.json: catastrophic split regex (main.py --tokenizer)": tokenizer_file_bomb,
    "HF: config.json declares a 1.6 GB model": lambda f: _evaluate(hf_folder(
        f, "hf_big", edit_json("config.json", lambda c: c.update(BOMB)))),
    "HF: truncated model.safetensors": lambda f: _evaluate(hf_folder(f, "hf_cut", truncate)),
    "HF: config.json without n_layer": lambda f: _evaluate(hf_folder(
        f, "hf_nolayer", edit_json("config.json", lambda c: c.pop("n_layer")))),
    "HF: config.json n_head 3 (n_embd 32)": lambda f: _evaluate(hf_folder(
        f, "hf_heads", edit_json("config.json", lambda c: c.update(n_head=3)))),
    "HF: tokenizer.json without model": lambda f: _evaluate(hf_folder(
        f, "hf_nomodel", edit_json("tokenizer.json", lambda t: t.pop("model")))),
    "HF: tensor named h.0": lambda f: _evaluate(hf_folder(f, "hf_names", rename_tensor)),
    "HF: catastrophic split regex": lambda f: _evaluate(hf_folder(
        f, "hf_regex", edit_json("tokenizer.json", hf_time_bomb))),
    "LoRA: rank 500,000, no adapter tensors (1 GB)": lambda f: _classify(
        lora_file(f, "lora_rank.pth", rank=BOMB_RANK), "--base", str(base(f))),
    "LoRA: rank 500,000 on the wrong base": lambda f: _classify(
        lora_file(f, "lora_rank_wrong.pth", rank=BOMB_RANK, fingerprint="0" * 64),
        "--base", str(base(f))),
    "LoRA: NaN adapters": lambda f: _classify(lora_file(f, "lora_nan.pth", nan=True),
                                              "--base", str(base(f))),
    "LoRA: base retrained since, same name": lambda f: _classify(retrained_base(f)),
    "JSONL: a line nested 100,000 deep": lambda f: [
        "finetune_qlora_instructions.py", "--base", str(base(f)), "--data-file",
        str(deep_jsonl(f)), "--max-steps", "1", "--out", str(f / "q.pth"), "--device", "cpu"],
    "resume: step hand-edited to a string": lambda f: hand_edited_state(f) and [
        "main.py", "--resume", "--run-name", "r", "--device", "cpu"],
}


# Linux carries a process's peak RSS across fork and exec, so a script started straight from a
# big process (a test run) would report that process's peak as its own. A small launcher in
# between starts the script from a fresh process and reports the script's own peak and status.
LAUNCHER = """
import os, subprocess, sys
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}")
"""


def run_case(repo: Path, argv: list[str], cwd: Path, timeout: float) -> dict:
    """Run ``python repo/argv[0] ...`` in ``cwd``: exit code, peak RSS (MB), seconds, stderr."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (CAP_BYTES, CAP_BYTES))
        os.setsid()

    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report"
        proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), sys.executable,
                                 str(repo / argv[0]), *argv[1:]], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, text=True,
                                preexec_fn=cap)
        timer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        timer.start()
        proc.wait()
        killed = not timer.is_alive()
        timer.cancel()
        seconds = time.perf_counter() - start
        rc, peak_kb = report.read_text().split() if report.exists() else ("timeout", "0")
        err.seek(0)
        lines = [line for line in err.read().splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if first.startswith("Traceback"):
        first = "Traceback: " + lines[-1]
    return {"rc": "timeout" if killed else int(rc), "peak_mb": int(peak_kb) / 1024,
            "s": seconds, "stderr": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", type=Path, default=ROOT, help="the checkout whose scripts run")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case")
    p.add_argument("-k", default="", help="only the cases whose name contains this")
    args = p.parse_args()
    print(f"scripts from {args.repo}; cap {CAP_BYTES >> 30} GiB, {args.timeout:g} s per case")
    print(f"{'case':<66} {'exit':>7} {'peak MB':>8} {'s':>6}  stderr")
    for name, build in CASES.items():
        if args.k not in name:
            continue
        folder = Path(tempfile.mkdtemp(prefix="probe-"))
        try:
            row = run_case(args.repo, build(folder), folder, args.timeout)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"{name:<66} {row['rc']!s:>7} {row['peak_mb']:>8.0f} {row['s']:>6.1f}  "
              f"{row['stderr'][:150]}", flush=True)


if __name__ == "__main__":
    main()
