"""Probe the command-line surface with hostile flags, output folders and signals.

    python benchmarks/probe_hostile_cli.py                 # this checkout's scripts
    python benchmarks/probe_hostile_cli.py --root /tmp/old # another checkout (e.g. before a fix)

Each case runs a script as its own process, in a scratch folder holding tiny checkpoints (made
here) and a user's README.md / tokenizer.json, with the address space capped at 4 GiB (a
request for more fails instead of swapping the machine). Printed per case: exit status, wall
time, and what happened: "sentence" (one line "error: ..."), "traceback", "user file
overwritten", "NaN model saved", "wrote outside runs/", "invalid JSON" and so on. The data
come from $LLM_DATA_DIR (TinyShakespeare, SST-2, instruction-data-1100.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from checkpoint import read_checkpoint, save_checkpoint  # noqa: E402
from classifier import GPTClassifier, save_classifier  # noqa: E402
from model import GPTConfig, GPTModel  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402

TEXT = ("ROMEO:\nBut soft, what light through yonder window breaks?\n"
        "it 's a charming and often affecting journey . the acting is astounding .\n") * 30
MEMORY_CAP = 4 * 2**30
TIMEOUT = 60
SMALL = ["--train-size", "32", "--batch-size", "8", "--device", "cpu"]


def tiny_gpt(nan: bool = False) -> tuple[GPTModel, BPETokenizer]:
    """A 2-layer model and its tokenizer; ``nan``: every weight is NaN."""
    tokenizer = BPETokenizer()
    tokenizer.train(TEXT, 300)
    torch.manual_seed(0)
    model = GPTModel(GPTConfig(vocab_size=320, context_length=96, n_layer=2, n_head=2,
                               n_embd=32))
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    return model, tokenizer


def save_checkpoints_and_user_files(folder: Path) -> None:
    """model_weights.pth, nan_weights.pth, classifier.pth and two files of the user's
    (README.md, tokenizer.json): a project after main.py (tests/test_hostile_cli.py's too)."""
    model, tokenizer = tiny_gpt()
    save_checkpoint(folder / "model_weights.pth", model, tokenizer)
    save_classifier(folder / "classifier.pth", GPTClassifier(model), tokenizer)
    save_checkpoint(folder / "nan_weights.pth", *tiny_gpt(nan=True))
    (folder / "README.md").write_text("the user's notes\n")
    (folder / "tokenizer.json").write_text('{"the user": "tokenizer"}\n')


def make_project(folder: Path) -> None:
    """``save_checkpoints_and_user_files``, a folder of the user's holding a file (full/) and
    one two levels deep (deep/er, a working folder for a case)."""
    save_checkpoints_and_user_files(folder)
    (folder / "full").mkdir()
    (folder / "full" / "config.json").write_text("{}\n")
    (folder / "deep" / "er").mkdir(parents=True)


def user_files(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes()
            for name in ("README.md", "tokenizer.json", "full/config.json")}


def cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def launch(root: Path, cwd: Path, argv: list[str], stdin: bytes | None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    return subprocess.Popen([sys.executable, str(root / argv[0]), *argv[1:]], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=cap_memory)


def signal_when_training(process: subprocess.Popen, log: Path, sig: int) -> None:
    """Send ``sig`` once the run's metrics log has its first line (training is under way)."""
    deadline = time.monotonic() + TIMEOUT
    while process.poll() is None and time.monotonic() < deadline:
        if log.exists() and log.read_text():
            process.send_signal(sig)
            return
        time.sleep(0.1)


def outcome(code: int | None, err: str) -> str:
    lines = err.strip().splitlines()
    if code is None:
        return "still running at the timeout"
    if "Traceback" in err:
        return "traceback: " + (lines[-1][:60] if lines else "")
    if code != 0 and lines and lines[-1].startswith("error: "):  # after the progress bars
        return "sentence: " + lines[-1][7:77]
    return "exit 0" if code == 0 else "message: " + (lines[-1][:60] if lines else "")


def run_case(root: Path, project: Path, case: dict) -> tuple[int | None, float, str]:
    before = user_files(project)
    out = project / case.get("out", "none")
    if "out" in case:
        out.write_bytes(b"the last finished run")
    started = time.perf_counter()
    process = launch(root, project / case.get("cwd", ""), case["argv"], case.get("stdin"))
    if "signal" in case:
        signal_when_training(process, project / "runs" / case["run"] / "metrics.jsonl",
                             case["signal"])
    try:
        stdout, stderr = process.communicate(case.get("stdin"), timeout=TIMEOUT)
        code = process.returncode
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        code = None
    seconds = time.perf_counter() - started
    what = [outcome(code, stderr.decode(errors="replace"))]
    if user_files(project) != before:
        what.append("USER FILE OVERWRITTEN")
    if "out" in case:
        kept = out.read_bytes() == b"the last finished run"
        what.append("--out kept" if kept else f"--out REPLACED{nan_note(out)}")
    what += case.get("check", lambda project, stdout: [])(project, stdout)
    return code, seconds, "; ".join(what)


def nan_note(path: Path) -> str:
    try:
        weights = read_checkpoint(path)["state_dict"].values()
    except Exception:
        return ""
    return " by a NaN model" if any(torch.isnan(t).any() for t in weights
                                    if t.is_floating_point()) else " by an early model"


def outside_runs(project: Path, stdout: bytes) -> list[str]:
    return ["wrote outside runs/"] if (project / "deep" / "x").exists() else []


def json_lines_valid(project: Path, stdout: bytes) -> list[str]:
    try:
        [json.loads(line) for line in stdout.decode("utf-8").splitlines()]
    except ValueError:
        return ["stdout not valid UTF-8 JSON"]
    return ["stdout valid JSON"]


def stdout_is_utf8(project: Path, stdout: bytes) -> list[str]:
    try:
        stdout.decode("utf-8")
    except ValueError:
        return ["stdout not valid UTF-8"]
    return ["stdout valid UTF-8"]


def metrics_valid(project: Path, stdout: bytes) -> list[str]:
    path = project / "nan.json"
    if not path.exists():
        return []
    try:
        json.loads(path.read_text(), parse_constant=lambda name: 1 / 0)
    except (ValueError, ZeroDivisionError):
        return ["nan.json not valid JSON"]
    return ["nan.json valid JSON"]


def cases() -> dict[str, dict]:
    data = os.environ.get("LLM_DATA_DIR", "data")
    dolly = ["--data-file", str(Path(data) / "instruction-data-1100.jsonl"), "--samples", "0"]
    long_run = ["--max-steps", "100000", *SMALL]
    return {
        "export --out .": {"argv": ["export_hf.py", "--out", "."]},
        'export --out ""': {"argv": ["export_hf.py", "--out", ""]},
        "export --out non-empty folder": {"argv": ["export_hf.py", "--out", "full"]},
        "export --out under a file": {"argv": ["export_hf.py", "--out", "README.md/hf"]},
        "export --out unwritable (/sys)": {"argv": ["export_hf.py", "--out", "/sys/hf-probe"]},
        "finetune_classifier SIGINT": {
            "argv": ["finetune_classifier.py", *long_run, "--skip-random-init", "--out", "o.pth"],
            "out": "o.pth", "signal": signal.SIGINT, "run": "classifier"},
        "finetune_lora_classifier SIGTERM": {
            "argv": ["finetune_lora_classifier.py", *long_run, "--out", "o.pth"],
            "out": "o.pth", "signal": signal.SIGTERM, "run": "lora-classifier"},
        "finetune_qlora_instructions SIGINT": {
            "argv": ["finetune_qlora_instructions.py", *long_run, *dolly, "--out", "o.pth"],
            "out": "o.pth", "signal": signal.SIGINT, "run": "qlora-instruct"},
        "finetune_qlora_instructions SIGTERM": {
            "argv": ["finetune_qlora_instructions.py", *long_run, *dolly, "--out", "o.pth"],
            "out": "o.pth", "signal": signal.SIGTERM, "run": "qlora-instruct"},
        "sample NaN weights, temperature 0.8": {
            "argv": ["sample.py", "--model", "nan_weights.pth", "--device", "cpu"]},
        "sample --temperature 1e39": {"argv": ["sample.py", "--temperature", "1e39"]},
        "sample --max-new-tokens 1e11": {"argv": ["sample.py", "--max-new-tokens",
                                                  "100000000000"]},
        "finetune --base of 5,000 chars": {"argv": ["finetune_classifier.py", "--base",
                                                    "b" * 5000]},
        "finetune_lora --rank 100000000": {
            "argv": ["finetune_lora_classifier.py", "--rank", "100000000", "--max-steps", "2",
                     *SMALL, "--out", "o.pth"], "out": "o.pth"},
        "main --seed 2**64": {"argv": ["main.py", "--seed", "18446744073709551616"]},
        "main --run-name ../../x": {
            "argv": ["main.py", "--preset", "tiny", "--max-steps", "2", "--sample-tokens", "0",
                     "--run-name", "../../x", "--instruction-file", dolly[1]],
            "cwd": "deep/er", "check": outside_runs},
        "main --n-embd 65536": {"argv": ["main.py", "--n-embd", "65536", "--n-head", "1",
                                         "--tokenizer", "fresh.json", "--vocab-size", "300",
                                         "--instruction-file", dolly[1]]},
        "main --tokenizer unwritable (/sys)": {
            "argv": ["main.py", "--preset", "tiny", "--tokenizer", "/sys/tokenizer.json",
                     "--instruction-file", dolly[1]]},
        "evaluate --out a folder": {"argv": ["evaluate.py", "--out", "full", "--device", "cpu"]},
        "finetune_lora --alpha inf": {
            "argv": ["finetune_lora_classifier.py", "--alpha", "inf", "--max-steps", "4", *SMALL,
                     "--out", "o.pth"], "out": "o.pth"},
        "finetune_lora --lr 1e30 (loss NaN)": {
            "argv": ["finetune_lora_classifier.py", "--lr", "1e30", "--max-steps", "20", *SMALL,
                     "--out", "o.pth"], "out": "o.pth"},
        "evaluate NaN weights -> metrics.json": {
            "argv": ["evaluate.py", "--checkpoint", "nan_weights.pth", "--out", "nan.json",
                     "--device", "cpu"], "check": metrics_valid},
        "sample --prompt invalid UTF-8": {
            "argv": ["sample.py", "--prompt", os.fsdecode(b"RO\xffMEO"), "--max-new-tokens", "5"],
            "check": stdout_is_utf8},
        "classify --json invalid UTF-8": {
            "argv": ["classify.py", "--json", "-", os.fsdecode(b"bad \xff")],
            "stdin": b"caf\xe9 is good\n\xff\xfe\n", "check": json_lines_valid},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=str(HERE), help="the checkout whose scripts to probe")
    p.add_argument("--only", default=None, help="run the cases whose name contains this")
    args = p.parse_args()
    root = Path(args.root).resolve()
    for name, case in cases().items():
        if args.only and args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            project = Path(tmp)
            make_project(project)
            code, seconds, what = run_case(root, project, case)
        print(f"| {name} | {code if code is not None else 'timeout'} | {seconds:.1f} s | {what} |",
              flush=True)


if __name__ == "__main__":
    main()
