"""The whole pipeline in one command, in order, on the defaults; then a fresh results summary.

    python run_all.py                 # steps 1-5 of the README's pipeline, ~12 min on 2 CPU cores
    python run_all.py --quick         # toy scale, a few minutes, in runs/quick/: does it work?
    python run_all.py --data-dir DIR  # read the datasets from DIR (offline), passed to every step

Like nanochat's speedrun.sh: each step is the command the README gives, run as its own process
in the order the pipeline needs (each finetuning script starts from main.py's model); the first
step that fails ends the run with its exit code. At the end ``runs/summary.md`` collects the
figures the steps wrote under ``runs/``, the same files the app's Metrics tab reads, so a
reader can set them beside RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import showcase as sc
from support.cli import run
from support.flags import FlagParser, path_arg

ROOT = Path(__file__).resolve().parent
STEPS = ("main.py", "evaluate.py", "finetune_classifier.py", "finetune_lora_classifier.py",
         "finetune_qlora_instructions.py")
# Toy settings per script for --quick (the app's tests build their checkpoints the same way).
# 96 tokens of context leave room for an instruction prompt and its answer.
FINETUNE_QUICK = ["--max-steps", "4", "--train-size", "32", "--batch-size", "8",
                  "--eval-interval", "2"]
QUICK = {
    "main.py": ["--preset", "tiny", "--max-steps", "20", "--context-length", "96",
                "--sample-tokens", "0"],
    "finetune_classifier.py": [*FINETUNE_QUICK, "--skip-random-init"],
    "finetune_lora_classifier.py": FINETUNE_QUICK,
    "finetune_qlora_instructions.py": [*FINETUNE_QUICK, "--samples", "1",
                                       "--max-new-tokens", "8"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = FlagParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="toy settings, a few minutes; runs in --work-dir runs/quick")
    p.add_argument("--work-dir", type=path_arg, default=None,
                   help="folder the steps run in and write to; unset: here (--quick: runs/quick)")
    p.add_argument("--data-dir", type=path_arg, default=None,
                   help="read datasets from this folder; unset: $LLM_DATA_DIR, else download")
    p.add_argument("--instruction-file", type=path_arg, default=None,
                   help="Dolly-schema JSONL for main.py's tokenizer corpus and QLoRA's "
                        "training (--data-file); unset: Dolly-15k")
    return p.parse_args(argv)


def commands(args: argparse.Namespace) -> list[list[str]]:
    """One argument list per step: the script, then the flags this run adds to it."""
    data = ["--data-dir", str(Path(args.data_dir).resolve())] if args.data_dir else []
    instructions = args.instruction_file
    if instructions and Path(instructions).exists():  # the steps may run in another folder
        instructions = str(Path(instructions).resolve())  # (a bare name not here: data folder)
    result = []
    for script in STEPS:
        flags = [*(QUICK.get(script, []) if args.quick else []), *data]
        if instructions and script == "main.py":
            flags += ["--instruction-file", instructions]
        if instructions and script == "finetune_qlora_instructions.py":
            flags += ["--data-file", instructions]
        result.append([script, *flags])
    return result


# ---------------------------------------------------------------------------- the summary


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def number(value, fmt: str, unit: str = "") -> str:
    """``value`` formatted, or '-' where a run left it out (None, NaN, not a number)."""
    if not sc.is_number(value) or math.isnan(value):
        return "-"
    return format(value, fmt) + unit


def summary_markdown(runs: sc.Runs, seconds: dict[str, float]) -> str:
    """runs/summary.md: the figures of this run, one section per step that wrote any."""
    parts = ["# This run's results", "",
             "Written by `python run_all.py` from the files under runs/; compare RESULTS.md."]
    if seconds:
        parts += ["", table(["step", "wall time"],
                            [[f"`python {step}`", f"{s:.0f} s"] for step, s in seconds.items()])]
    pretrain = [r for r in runs.curves.get("pretrain", []) if sc.is_number(r.get("val_loss"))]
    if pretrain:
        best = min(pretrain, key=lambda r: r["val_loss"])
        parts += ["", "## Pretraining", "",
                  f"Best val loss {best['val_loss']:.4f} per token at step {best['step']}."]
    evaluation = sc.evaluation_frame(runs)
    if not evaluation.empty:
        parts += ["", "## Evaluation (test split)", "", table(
            ["model", "perplexity / token", "bits / char"],
            [[r.model, number(r.perplexity, ".2f"), number(r.bits_per_char, ".4f")]
             for r in evaluation.itertuples()])]
    rows = sc.result_rows(runs)
    sentiment = [r for r in rows if sc.is_number(r.get("dev_acc"))]
    if sentiment:
        parts += ["", "## Sentiment (GLUE dev set)", "", table(
            ["model", "dev accuracy", "trainable", "train time", "peak memory"],
            [[r["model"], number(100 * r["dev_acc"], ".1f", " %"), number(r.get("trainable"), ",d"),
              number(r.get("train_time_s"), ".0f", " s"),
              number(r.get("peak_mem_mb"), ".0f", " MB")] for r in sentiment])]
    instructions = [r for r in rows if sc.is_number(r.get("loss"))]
    if instructions:
        parts += ["", "## Instructions (held-out response tokens)", "", table(
            ["model", "loss", "perplexity"],
            [[r["model"], number(r["loss"], ".2f"), number(r.get("perplexity"), ",.0f")]
             for r in instructions])]
    for problem in runs.problems:
        parts += ["", f"Skipped: {problem}"]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- the run


def run_step(argv: list[str], cwd: Path) -> int:
    """A step's exit status. Ctrl-C reaches the step as well (one process group): wait while it
    saves and stops (main.py: 130, resumable; a finetune: 130, --out untouched), rather than
    kill it a quarter of a second later, as subprocess.run would."""
    with subprocess.Popen(argv, cwd=cwd) as process:
        try:
            return process.wait()
        except KeyboardInterrupt:
            return process.wait()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir or ("runs/quick" if args.quick else ".")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for script, *flags in commands(args):
        print(f"\n=== python {script} {' '.join(flags)}".rstrip(), flush=True)
        start = time.perf_counter()
        code = run_step([sys.executable, str(ROOT / script), *flags], work)
        if code != 0:
            print(f"run_all: python {script} failed (exit code {code}); stopping here.")
            return code
        seconds[script] = time.perf_counter() - start
    path = work / "runs" / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary_markdown(sc.read_runs(work / "runs"), seconds), encoding="utf-8")
    print(f"\nAll {len(STEPS)} steps done in {sum(seconds.values()):.0f} s; summary in {path}")
    return 0


if __name__ == "__main__":
    run(main)
