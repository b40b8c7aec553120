"""Compare pretraining settings: run main.py once per variant, score each on the val split.

    python benchmarks/sweep_pretrain.py base= "drop=--dropout 0.1" "b16=--batch-size 16 \
        --max-steps 1200" --jobs 2 --common "--device cpu"

Each variant is NAME=FLAGS (FLAGS are main.py flags laid over --common). Variants run as
separate processes, --jobs at a time; each writes runs/sweep-NAME/ and is scored with
evaluate.py on the *val* split (the test split stays unseen while choosing settings;
--also-test adds it, for reporting the choice afterwards).
Tokenizers are trained once per vocabulary size before the runs start, so parallel runs
never race to write the same file. Results: a table, and runs/sweep/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from main import PRESETS, get_tokenizer, parse_args  # noqa: E402


def run_variant(name: str, flags: list[str], log_dir: Path, splits: list[str]) -> dict:
    main_args = parse_args(flags)  # evaluate.py scores on the device and data main.py used
    run_dir = Path("runs") / f"sweep-{name}"
    weights = run_dir / "model.pth"
    started = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        train = subprocess.run([sys.executable, str(ROOT / "main.py"), *flags,
                                "--run-name", f"sweep-{name}", "--out", str(weights),
                                "--sample-tokens", "0", "--checkpoint-interval", "0"],
                               stdout=log, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - started
        if train.returncode != 0:
            return {"name": name, "flags": " ".join(flags),
                    "error": f"main.py exited with {train.returncode}"}
        data = ["--data-dir", main_args.data_dir] if main_args.data_dir else []
        for split in splits:
            subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--checkpoint",
                            str(weights), "--split", split, "--device", main_args.device, *data,
                            "--out", str(run_dir / f"{split}.json")],
                           stdout=log, stderr=subprocess.STDOUT, check=True)
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = steps[-1]
    result = {"name": name, "flags": " ".join(flags), "wall_s": round(wall, 1),
              "train_s": round(last["elapsed"], 1), "step": last["step"],
              "train_loss": round(last["train_loss"], 4)}
    for split in splits:
        scores = json.loads((run_dir / f"{split}.json").read_text())["model"]
        result[f"{split}_nats_per_char"] = round(scores["nats_per_char"], 4)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+", help="NAME=FLAGS, e.g. 'drop=--dropout 0.1'")
    p.add_argument("--common", default="", help="main.py flags shared by every variant")
    p.add_argument("--jobs", type=int, default=1, help="variants run at the same time")
    p.add_argument("--out-dir", default="runs/sweep")
    p.add_argument("--also-test", action="store_true",
                   help="score the test split too: for reporting a choice, not for making it")
    args = p.parse_args()
    splits = ["val", "test"] if args.also_test else ["val"]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    variants = {}
    for spec in args.variants:
        name, _, flags = spec.partition("=")
        variants[name] = shlex.split(args.common) + shlex.split(flags)
    for name, flags in variants.items():  # one tokenizer per vocabulary size, trained up front
        main_args = parse_args(flags)
        vocab = main_args.vocab_size or PRESETS[main_args.preset]["vocab_size"]
        path = out_dir / f"tokenizer-{vocab}.json"
        get_tokenizer(path, vocab, main_args.data_dir, main_args.instruction_file)
        variants[name] = flags + ["--tokenizer", str(path)]

    def run_and_record(item: tuple[str, list[str]]) -> dict:
        result = run_variant(*item, out_dir, splits)
        with open(out_dir / "results.jsonl", "a") as f:  # as each finishes: nothing is lost
            f.write(json.dumps(result) + "\n")
        print(json.dumps(result), flush=True)
        return result

    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_and_record, variants.items()))
    print(f"{'variant':<14}{'steps':>6}{'train s':>9}{'train loss':>11}"
          + "".join(f"{split + ' nats/char':>16}" for split in splits))
    for r in results:
        if "error" in r:
            print(f"{r['name']:<14}{r['error']}")
        else:
            print(f"{r['name']:<14}{r['step']:>6}{r['train_s']:>9.1f}{r['train_loss']:>11.3f}"
                  + "".join(f"{r[split + '_nats_per_char']:>16.4f}" for split in splits))
    return 0


if __name__ == "__main__":
    sys.exit(main())
