"""Benchmark preparing token files and training on them, at 100 MB and 1 GB.

Not a test (timings depend on the machine); it prints the figures RESULTS.md quotes:

1. Encoding speed (MB of text per second) of corpus.py on a SPEED-MB corpus:
   our encoder on 1 process and on every core, and tiktoken (built from our ranks) the same
   way. The token files of every way must be identical.
2. Peak memory (RSS) while preparing, and while training (`python main.py --text`, a few
   steps of the CPU preset), on a SMALL-MB corpus against a BIG-MB one: training memory must
   not grow with the corpus.
3. Time from starting `python main.py --text` on an already prepared corpus to its first
   training step (the progress bar appearing).

The corpora are built in a temporary folder under /tmp from the Python sources of the
installed packages (site-packages), concatenated into 4 MB documents and repeated to size,
and deleted at the end.

Usage: python benchmarks/bench_prepare.py [--small-mb 100] [--big-mb 1024] [--speed-mb 20]
"""

import argparse
import filecmp
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import corpus as cp  # noqa: E402
from tokenizer import BPETokenizer  # noqa: E402

SHARD = 4 << 20  # bytes per document of the benchmark corpora


def build_corpus(folder: Path, megabytes: int, sources: list[Path]) -> Path:
    """``megabytes`` of Python source in 4 MB files, cycling through ``sources``."""
    folder.mkdir(parents=True)
    target, written, shard, i = megabytes << 20, 0, [], 0
    while written < target:
        for path in sources:
            try:
                shard.append(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, OSError):
                continue
            if sum(map(len, shard)) >= SHARD or written + sum(map(len, shard)) >= target:
                data = "\n".join(shard)
                (folder / f"part{i:04}.txt").write_text(data, encoding="utf-8")
                written, shard, i = written + len(data.encode()), [], i + 1
                if written >= target:
                    break
    return folder


def encoding_speeds(found: cp.Survey, tokenizer: BPETokenizer, work: Path) -> None:
    """Each way of encoding ``found``, already read once (by the tokenizer's sample), so
    that every way is timed on the same footing."""
    files = {d.path: d.size for d in found.readable().docs}  # a single file: 3 parts, counted once
    size = sum(files.values()) / 1e6
    cores = os.cpu_count()
    print(f"\n1. Encoding {size:.1f} MB ({len(files)} documents), vocab "
          f"{tokenizer.vocab_size}:")
    first = None
    for workers, use_tiktoken in ((1, False), (cores, False), (1, True), (cores, True)):
        folder = work / f"speed-{workers}-{use_tiktoken}"
        start = time.perf_counter()
        cp.prepare_token_files(found, tokenizer, folder, workers, use_tiktoken)
        seconds = time.perf_counter() - start
        name = "tiktoken (our ranks)" if use_tiktoken else "our encoder"
        print(f"   {name:<22}{workers} process(es): {size / seconds:6.2f} MB/s ({seconds:.1f} s)")
        first = first or folder
        same = all(filecmp.cmp(first / f"{s}.bin", folder / f"{s}.bin", shallow=False)
                   for s in cp.SPLITS)
        assert same, f"{folder} differs from {first}"
    print("   token files identical every way: yes")


PREPARE = """
import resource, sys, time
sys.path.insert(0, {root!r})
from pathlib import Path
import corpus as cp
from tokenizer import BPETokenizer
start = time.perf_counter()
cp.ready_token_files(cp.survey(cp.Corpus(paths=[{corpus!r}])), BPETokenizer.load({tok!r}),
                     Path({out!r}))
print("SECONDS", time.perf_counter() - start)
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
      resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

TRAIN = """
import resource, runpy, sys
sys.path.insert(0, {root!r})
sys.argv = ["main.py", *{args!r}]
try:
    runpy.run_path({main!r}, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure(corpus: Path, tok: Path, work: Path, name: str) -> dict:
    """Prepare (peak RSS of the main process and of the largest worker), then train a few
    steps on the prepared files (peak RSS, seconds to the first step)."""
    prepared = work / f"prep-{name}"
    result = subprocess.run([sys.executable, "-c", PREPARE.format(
        root=str(ROOT), corpus=str(corpus), tok=str(tok), out=str(prepared))],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout.split()
    prepare_s = float(out[out.index("SECONDS") + 1])
    main_kb, worker_kb = map(int, out[out.index("RSS") + 1 : out.index("RSS") + 3])
    args = ["--text", str(corpus), "--tokenizer", str(tok), "--prepared-dir", str(prepared),
            "--max-steps", "5", "--eval-interval", "1000", "--sample-tokens", "0", "--dtype",
            "float32", "--run-name", f"bench-{name}", "--out", str(work / f"{name}.pth")]
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", TRAIN.format(
                                args=args, root=str(ROOT), main=str(ROOT / "main.py"))],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_step, seen = None, ""
    while first_step is None:  # the progress bar appears as the first step starts
        char = proc.stderr.read(1)
        if not char:
            break
        seen += char
        if "pretrain:" in seen:
            first_step = time.perf_counter() - start
    rest, err = proc.communicate()
    assert proc.returncode == 0, seen + err
    train_kb = int(rest.split()[rest.split().index("RSS") + 1])
    meta = cp.read_token_meta(prepared)
    size = sum(s["bytes"] for s in meta["splits"].values()) / 1e6
    return {"corpus_mb": size, "tokens": sum(s["tokens"] for s in meta["splits"].values()),
            "prepare_s": prepare_s, "prepare_mb_s": size / prepare_s,
            "prepare_rss_mb": main_kb / 1024, "worker_rss_mb": worker_kb / 1024,
            "train_rss_mb": train_kb / 1024, "first_step_s": first_step}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small-mb", type=int, default=100)
    p.add_argument("--big-mb", type=int, default=1024)
    p.add_argument("--speed-mb", type=int, default=20)
    p.add_argument("--vocab-size", type=int, default=1024)
    args = p.parse_args()
    sources = sorted(Path(site.getsitepackages()[0]).rglob("*.py"))
    work = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir="/tmp"))
    try:
        print(f"{len(sources):,} .py files in site-packages; corpora in {work}")
        speed = build_corpus(work / "speed", args.speed_mb, sources)
        found = cp.survey(cp.Corpus(paths=[str(speed)]))
        start = time.perf_counter()
        tokenizer = cp.corpus_tokenizer(work / "tokenizer.json", args.vocab_size, found,
                                        5_000_000)
        print(f"tokenizer: {args.vocab_size} tokens; files read, sample drawn and BPE trained "
              f"in {time.perf_counter() - start:.1f} s")
        encoding_speeds(found, tokenizer, work)
        rows = {}
        for name, megabytes in (("small", args.small_mb), ("big", args.big_mb)):
            corpus = build_corpus(work / name, megabytes, sources)
            rows[name] = measure(corpus, work / "tokenizer.json", work, name)
            shutil.rmtree(corpus)
        print(f"\n2./3. Prepare with every core ({os.cpu_count()}), tiktoken where installed; "
              "then 5 steps of the CPU preset on the prepared files:")
        print(f"   {'corpus':>10}{'tokens':>14}{'prepare':>10}{'MB/s':>7}{'prep RSS':>10}"
              f"{'worker RSS':>12}{'train RSS':>11}{'to 1st step':>13}")
        for r in rows.values():
            print(f"   {r['corpus_mb']:>7.0f} MB{r['tokens']:>14,}{r['prepare_s']:>9.0f}s"
                  f"{r['prepare_mb_s']:>7.2f}{r['prepare_rss_mb']:>7.0f} MB"
                  f"{r['worker_rss_mb']:>9.0f} MB{r['train_rss_mb']:>8.0f} MB"
                  f"{r['first_step_s']:>12.1f}s")
        growth = rows["big"]["train_rss_mb"] / rows["small"]["train_rss_mb"] - 1
        print(f"   training memory, {rows['big']['corpus_mb'] / rows['small']['corpus_mb']:.0f}x "
              f"the corpus: {growth:+.1%}")
        print(json.dumps(rows))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
