"""The whole pipeline in one command, in order, on the defaults; then a fresh results summary.

    python run_all.py                 # steps 1-5 of the README's pipeline, ~12 min on 2 CPU cores
    python run_all.py --quick         # toy scale, a few minutes, in runs/quick/: does it work?
    python run_all.py --instruction-file instruction-data-1100.jsonl   # without Dolly-15k
    python run_all.py --data-dir DIR  # read the datasets from DIR (offline), passed to every step

Like nanochat's speedrun.sh: each step is the command the README gives, run as its own process
in the order the pipeline needs (each finetuning script starts from main.py's model); the first
step that fails ends the run with its exit code. Every step's data (TinyShakespeare, SST-2,
the instruction file) is looked for before step 1, so a missing file stops the run in a second,
not after an hour of steps that had theirs. At the end ``runs/summary.md`` (``--quick``:
``runs/quick/summary.md``) collects the figures the steps wrote under ``runs/``, the same files
the app's Metrics tab reads, so a reader can set them beside RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import showcase as sc
from memory import MEMORY_KINDS
from support.cli import FlagParser, path_arg, run
from support.datasets import (
    INSTRUCTIONS_1100,
    SST2_DEV,
    SST2_TRAIN,
    TINYSHAKESPEARE,
    locate,
    read_instruction_records,
)
from support.errors import DataMissingError
from support.metrics import human_bytes, measured_peak

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


def check_inputs(args: argparse.Namespace) -> None:
    """Find every step's data before step 1 runs (downloading what may be downloaded):
    TinyShakespeare (main.py, evaluate.py), SST-2 (both classifiers) and the instruction file
    (finetune_qlora_instructions.py). A missing one raises DataMissingError naming this
    script's own flag."""
    for name in (TINYSHAKESPEARE, SST2_TRAIN, SST2_DEV):
        locate(name, args.data_dir, download=True)
    given = f"--instruction-file {args.instruction_file}: " if args.instruction_file else ""
    try:
        read_instruction_records(args.instruction_file, args.data_dir, download=True,
                                 verify=False)
    except DataMissingError as err:
        raise DataMissingError(
            f"{given}{err} run_all.py takes any Dolly-schema JSONL as --instruction-file, e.g. "
            f"--instruction-file {INSTRUCTIONS_1100}; nothing has run yet.") from None


# ---------------------------------------------------------------------------- the summary


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def number(value, fmt: str, unit: str = "") -> str:
    """``value`` formatted, or '-' where a run left it out (None, NaN, not a number)."""
    if not sc.is_number(value) or math.isnan(value):
        return "-"
    return format(value, fmt) + unit


BAR_CHARACTERS = dict(zip(MEMORY_KINDS, "█▓▒░", strict=True))


def text_bars(wide, width: int = 60) -> list[str]:
    """Stacked bars in characters, one per model, all on the largest total's scale."""
    scale = width / max(wide["total"].max(), 1)
    name_width = max(len(name) for name in wide["model"])
    return [f"{row['model']:<{name_width}}  "
            + "".join(BAR_CHARACTERS[k] * round(row[k] * scale) for k in MEMORY_KINDS)
            + f"  {human_bytes(row['total'], 'MB', 2)}" for _, row in wide.iterrows()]


def memory_section(frame, title: str, intro: str) -> list[str]:
    """A markdown section: the bytes of a training step by kind per model (a table and
    stacked text bars), the lesson, and what these numbers show of it."""
    wide = sc.memory_wide(frame)
    batches = dict(zip(frame["model"], frame["batch"], strict=False))
    legend = ", ".join(f"{c} {sc.MEMORY_TITLES[k]}" for k, c in BAR_CHARACTERS.items())
    return ["", title, "", intro, "", table(
        ["model", "batch", *(sc.MEMORY_TITLES[k] for k in MEMORY_KINDS), "total"],
        [[row["model"], batches[row["model"]],
          *(human_bytes(row[k], "MB", 2) for k in [*MEMORY_KINDS, "total"])]
         for _, row in wide.iterrows()]), "", "```", *text_bars(wide), "```", "",
        f"Bars: {legend}. {sc.MEMORY_LESSON}", "", *(f"- {n}" for n in sc.memory_notes(frame))]


def summary_markdown(runs: sc.Runs, seconds: dict[str, float],
                     projection=None) -> str:
    """runs/summary.md: the figures of this run, one section per step that wrote any, and
    the memory of a training step by method, for this run and for ``projection`` (the same
    count for GPT-2 124 M, ``showcase.projected_memory``) when given."""
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
            ["model", "perplexity / token", "nats / char", "bits / char"],
            [[r.model, number(r.perplexity, ",.2f"), number(r.nats_per_char, ".4f"),
              number(r.bits_per_char, ".4f")] for r in evaluation.itertuples()])]
    rows = sc.result_rows(runs)
    sentiment = [r for r in rows if sc.is_number(r.get("dev_acc"))]
    if sentiment:
        parts += ["", "## Sentiment (GLUE dev set)", "", table(
            ["model", "dev accuracy", "trainable", "train time", "measured peak"],
            [[r["model"], number(100 * r["dev_acc"], ".1f", " %"), number(r.get("trainable"), ",d"),
              number(r.get("train_time_s"), ",.0f", " s"), measured_peak(r)]
             for r in sentiment])]
    instructions = [r for r in rows if sc.is_number(r.get("loss"))]
    if instructions:
        parts += ["", "## Instructions (held-out response tokens)", "", table(
            ["model", "loss", "perplexity"],
            [[r["model"], number(r["loss"], ".2f"), number(r.get("perplexity"), ",.0f")]
             for r in instructions])]
    memory = sc.memory_frame(runs)
    if not memory.empty:
        parts += memory_section(memory, "## Memory of one training step, by method", (
            "Counted exactly from the tensors (memory.py) at each run's largest batch "
            "(examples x tokens), float32. A measured process RSS above also holds the "
            "allocator's slack, the data and the libraries, so it does not show the method."))
    if projection is not None:
        parts += memory_section(projection, "## The same count for GPT-2 124 M", (
            "The SST-2 classifier on the GPT-2 124 M shape, batch 8 x 128 tokens (the "
            "classifier scripts' GPT-2 defaults), counted on the meta device: nothing is "
            "allocated. There attention saves its weights (a fused kernel would not)."))
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
    check_inputs(args)
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
    # Here: runs/summary.md, where RESULTS.md points; in another work folder, at its top.
    path = work / "runs" / "summary.md" if work == Path.cwd().resolve() else work / "summary.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(summary_markdown(sc.read_runs(work / "runs"), seconds,
                                     sc.projected_memory()), encoding="utf-8")
    print(f"\nAll {len(STEPS)} steps done in {sum(seconds.values()):.0f} s; summary in {path}")
    return 0


if __name__ == "__main__":
    run(main)
