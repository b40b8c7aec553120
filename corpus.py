"""Your own text as training data: documents -> seeded splits -> a tokenizer sample -> token files.

main.py trains on TinyShakespeare, or on any text you point it at: ``--text`` files and
folders, or ``--hf-dataset``. This chapter turns that text, once, into what data_utils.py cuts
its windows from: one file of token ids per split (nanoGPT's ``prepare.py``, for any text).

1. Documents (``Corpus``, ``list_documents``). Each text file is one document (a file, a folder
   searched recursively for ``include`` patterns, or several; binary and non-UTF-8 files are
   skipped and counted), or each row of a Hugging Face dataset streamed through ``datasets``
   (a local JSONL/parquet/CSV file goes through the very same ``load_dataset`` call).
2. Seeded splits (``assign_splits``). One text (a single file, TinyShakespeare) splits by
   characters (``character_splits``: train 85 %, val 5 %, test the last 10 %). Several
   documents split by document, so no document is cut in two: each gets a seeded hash u in
   [0, 1) of its name; files in u order give the first 10 % to test and the next 5 % to val
   (at least one each), a stream's rows go to test when u < 0.10 and to val when u < 0.15.
   The split is recorded (tokens.json, the checkpoint), and no test text is ever trained on.
3. A tokenizer sample (``draw_sample``): a bounded sample of train text, drawn evenly at random
   (a reservoir of pieces: a gigabyte is neither needed nor fast to train BPE on), that
   ``corpus_tokenizer`` trains our BPE on (or reuses the one saved at that size).
4. Token files (``prepare_token_files``): every document is encoded on all cores (through a
   ``tiktoken.Encoding`` built from our own ranks and pattern where tiktoken is installed; our
   encoder otherwise: the two give the same ids) into ``train.bin`` / ``val.bin`` /
   ``test.bin`` (uint16 when the vocabulary fits, else uint32) and ``tokens.json``: the
   sources with their sizes and modification times, the tokenizer's fingerprint, the split
   rule, and token and character counts per split. Documents are joined by <|endoftext|>,
   which counts as one character (the boundary), so nats per character stay exact.
5. Reuse (``ready_token_files``). Files whose JSON matches the sources and the tokenizer are
   reused; otherwise they are rebuilt, with one line saying why. Files are written under
   temporary names and renamed when complete, the JSON last: an interrupted prepare leaves
   no half-written file behind.

The idea reads top to bottom down to ``describe``; below it is the plumbing: the streamed
dataset, the fingerprints reuse compares, the encoding processes, the file writer, the flags.
What bad input is told is in support/checks.py.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import random
import sys
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import regex
from tqdm import tqdm

from support.checks import (
    check_hf_field,
    check_no_empty_split,
    check_one_source,
    check_some_text,
    check_split_by_document,
    check_text_files,
    check_unchanged,
    check_vocab_filled,
    disk_space_for,
    hf_dataset_readable,
)
from support.cli import nonnegative_int, path_arg, positive_int
from support.files import atomic_write
from support.optional_packages import import_datasets
from tokenizer import BPETokenizer

FORMAT = 1  # tokens.json's layout; another number means: rebuild
SPLITS = ("train", "val", "test")
VAL_FRACTION, TEST_FRACTION = 0.05, 0.10
DEFAULT_INCLUDE = "*.txt,*.md"
PIECE_CHARS = 1 << 20  # characters per encoding task: large enough to amortise the hand-off
SAMPLE_PIECE = 1 << 14  # characters per piece of the tokenizer sample
# A cut right after a newline that precedes a letter or digit splits no regex chunk of the
# GPT-4 pattern, so pieces encode to exactly the ids of the whole text.
SAFE_CUT = regex.compile(r"\n(?=[\p{L}\p{N}])")
HF_SUFFIXES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


DEFAULT_ROOT = Path("data/prepared")  # token files go to <this>/<corpus>-<hash>/


def _unit_hash(*parts: object) -> float:
    """A seeded hash in [0, 1): where a document falls among the splits."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


# ---------------------------------------------------------------------------- what to read

@dataclass
class Document:
    key: str  # its name in the corpus (a relative path, or a stream's row number)
    split: str = "train"
    chars: int = 0
    path: str = ""  # a file's full path; "" for a streamed row
    size: int = 0
    mtime_ns: int = 0
    start: int = 0  # a single text split by characters: the range this part covers
    stop: int | None = None


@dataclass
class Corpus:
    """Text files (``paths`` + ``include``), or a Hugging Face dataset (``hf_name``)."""

    paths: list[str] = field(default_factory=list)
    include: str = DEFAULT_INCLUDE
    exclude: str = ""  # names of files or folders to leave out, e.g. "site-packages,test"
    hf_name: str = ""
    hf_config: str | None = None
    hf_split: str = "train"
    hf_field: str = "text"
    hf_max_docs: int | None = None
    split_seed: int = 0
    nanogpt: bool = False  # one text only: train on the first 90 % (as nanoGPT does)
    name: str = ""  # a short label: "tinyshakespeare", or derived from the sources

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Corpus:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def label(self) -> str:
        if self.name:
            return self.name
        if self.hf_name:
            return Path(self.hf_name).name if Path(self.hf_name).exists() else self.hf_name
        first = Path(self.paths[0]).name or "corpus"
        return first + (f" and {len(self.paths) - 1} more" if len(self.paths) > 1 else "")

    def folder_name(self) -> str:
        """A folder name for the token files: readable, and unique to these sources."""
        spec = json.dumps({**self.to_dict(), "name": ""}, sort_keys=True)
        stem = regex.sub(r"[^\w.-]+", "-", self.label())[:40].strip("-") or "corpus"
        return f"{stem}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"


def _patterns(flag: str) -> list[str]:
    return [pattern.strip() for pattern in flag.split(",") if pattern.strip()]


def _matching_files(root: Path, include: list[str], exclude: list[str]) -> list[Path]:
    def left_out(path: Path) -> bool:
        return any(fnmatch.fnmatch(part, pattern) for part in path.relative_to(root).parts
                   for pattern in exclude)

    return sorted(p for p in root.rglob("*") if p.is_file() and not left_out(p)
                  and any(fnmatch.fnmatch(p.name, pattern) for pattern in include))


def list_documents(corpus: Corpus) -> list[Document]:
    """The corpus's text files, each one document; one sentence if there are none."""
    include, exclude = _patterns(corpus.include), _patterns(corpus.exclude)
    docs = []
    for given in corpus.paths:
        root = Path(given).expanduser()
        files = _matching_files(root, include, exclude) if root.is_dir() else [root]
        check_text_files(given, root, files, corpus.include)
        root = root if root.is_dir() else root.parent  # keys are relative to the folder
        for path in files:
            stat = path.stat()
            docs.append(Document(str(path.relative_to(root)), path=str(path.resolve()),
                                 size=stat.st_size, mtime_ns=stat.st_mtime_ns))
    return docs


def _file_text(path: str) -> str | None:
    """The file as text, or None when it is binary (a NUL byte) or not UTF-8."""
    data = Path(path).read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def scan_files(docs: list[Document]) -> tuple[list[Document], list[tuple[str, str]]]:
    """(readable documents with their character counts, (file, why) of each one skipped)."""
    kept, skipped = [], []
    for doc in tqdm(docs, desc="scan", unit="file", disable=len(docs) < 1000, leave=False):
        text = _file_text(doc.path)
        if not text:
            skipped.append((doc.key, "empty" if text == "" else "binary or not UTF-8"))
        else:
            doc.chars = len(text)
            kept.append(doc)
    return kept, skipped


def character_splits(n: int, nanogpt: bool = False) -> dict[str, tuple[int, int]]:
    """One text of ``n`` characters cut into (start, stop) per split: train the first 85 %,
    val the next 5 %, test the last 10 %, which is exactly the slice nanoGPT reports its
    validation loss on (``data[int(n * 0.9):]``). ``nanogpt=True`` trains on the first 90 %,
    as nanoGPT does, so that losses on the test slice compare with nanoGPT's published ones;
    val then lies inside the training text, and the test slice stays unseen either way."""
    # Integer arithmetic gives the same cut as nanoGPT's int(n * 0.9), without float surprises.
    train_end, val_end = n * 85 // 100, n * 90 // 100
    return {"train": (0, val_end if nanogpt else train_end), "val": (train_end, val_end),
            "test": (val_end, n)}


def assign_splits(docs: list[Document], corpus: Corpus) -> list[Document]:
    """Each document's split (see the module docstring); one text is cut by characters."""
    if len(docs) == 1:  # as data_utils.split_shakespeare cuts TinyShakespeare
        (doc,) = docs
        return [Document(**{**asdict(doc), "split": split, "start": a, "stop": b})
                for split, (a, b) in character_splits(doc.chars, corpus.nanogpt).items()]
    check_split_by_document(corpus.label(), len(docs), corpus.nanogpt)
    order = sorted(docs, key=lambda d: _unit_hash(corpus.split_seed, d.key))
    n_test = max(1, round(len(docs) * TEST_FRACTION))
    n_val = max(1, round(len(docs) * VAL_FRACTION))
    for i, doc in enumerate(order):
        doc.split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return docs


def split_rule(corpus: Corpus, several: bool) -> str:
    """How the corpus is split: one text by characters, several documents by document."""
    if corpus.hf_name:
        return (f"by document: seeded hash (seed {corpus.split_seed}) < 0.10 test, "
                "< 0.15 val, else train")
    if not several:
        return ("by characters: train first 90 %, val 85-90 % (trained on), test last 10 %"
                if corpus.nanogpt else "by characters: train 85 %, val 5 %, test last 10 %")
    return (f"by document: seeded hash order (seed {corpus.split_seed}), first 10 % test, "
            "next 5 % val (at least one each), rest train")


# ---------------------------------------------------------------------------- text and sample

def document_texts(docs: list[Document], corpus: Corpus) -> Iterator[tuple[Document, str]]:
    """(document, its text) in corpus order: files read one at a time, or the stream's rows."""
    if corpus.hf_name:
        yield from hf_documents(corpus)
        return
    path, text = None, None
    for doc in docs:
        if doc.path != path:  # the three parts of one text are read once
            stat = Path(doc.path).stat()
            path, text = doc.path, _file_text(doc.path)
            check_unchanged(path, text, (stat.st_size, stat.st_mtime_ns), (doc.size, doc.mtime_ns))
        yield doc, text[doc.start:doc.stop]


def safe_pieces(text: str, size: int = PIECE_CHARS) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut only where no token can straddle."""
    start = 0
    while len(text) - start > size:
        cut = SAFE_CUT.search(text, start + size)
        if cut is None:
            break
        yield text[start:cut.end()]
        start = cut.end()
    if start < len(text):
        yield text[start:]


def draw_sample(texts: Iterable[str], budget: int, seed: int) -> str:
    """At most ``budget`` characters of ``texts``, drawn evenly: a seeded reservoir of pieces
    (every piece equally likely to be kept, wherever it is), joined in corpus order."""
    rng, kept, seen = random.Random(seed), [], 0
    slots = max(1, budget // SAMPLE_PIECE)
    for text in texts:
        for start in range(0, len(text), SAMPLE_PIECE):
            piece = text[start:start + SAMPLE_PIECE]  # a cut word only nudges a pair count
            if len(kept) < slots:
                kept.append((seen, piece))
            else:
                j = rng.randrange(seen + 1)
                if j < slots:
                    kept[j] = (seen, piece)
            seen += 1
    return "\n".join(piece for _, piece in sorted(kept))


# ---------------------------------------------------------------------------- the whole prepare

@dataclass
class Survey:
    """A corpus before encoding: its documents (files) and what they are made from."""

    corpus: Corpus
    docs: list[Document]
    fingerprint: dict
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    scanned: bool = False

    def readable(self) -> Survey:
        """Read every file once: keep the UTF-8 text files, count characters, assign splits."""
        if self.scanned or self.corpus.hf_name:
            return self
        kept, skipped = scan_files(self.docs)
        self.skipped = skipped
        check_some_text(self.corpus.paths, len(self.docs), skipped)
        self.docs, self.scanned = assign_splits(kept, self.corpus), True
        return self

    def train_texts(self) -> Iterator[str]:
        return (text for doc, text in document_texts(self.readable().docs, self.corpus)
                if doc.split == "train")

    def skipped_note(self) -> str:
        if not self.skipped:
            return ""
        whys = Counter(why for _, why in self.skipped)
        kinds = ", ".join(f"{n} {why}" for why, n in whys.items())
        return (f"Skipped {len(self.skipped)} file(s) that are not text ({kinds}; e.g. "
                f"{self.skipped[0][0]}).")


def survey(corpus: Corpus) -> Survey:
    """The corpus's files and their fingerprint, without reading them (fast)."""
    docs = [] if corpus.hf_name else list_documents(corpus)
    return Survey(corpus, docs, sources_fingerprint(corpus, docs))


def saved_tokenizer(path: Path, vocab_size: int) -> BPETokenizer | None:
    """The tokenizer saved at ``path`` if it has ``vocab_size`` tokens (another size: train)."""
    if path.exists():
        tokenizer = BPETokenizer.load(path)
        if tokenizer.vocab_size == vocab_size:
            print(f"Reusing tokenizer {path} ({vocab_size} tokens)")
            return tokenizer
    return None


def corpus_tokenizer(path: Path, vocab_size: int, found: Survey, sample_chars: int
                     ) -> BPETokenizer:
    """Your own text's tokenizer: reused if it has the requested size, else trained on at
    most ``sample_chars`` characters of train text drawn evenly from the whole corpus."""
    tokenizer = saved_tokenizer(path, vocab_size)
    if tokenizer is not None:
        return tokenizer
    sample = draw_sample(found.train_texts(), sample_chars, found.corpus.split_seed)
    print(f"Training a {vocab_size}-token BPE tokenizer on {len(sample):,} characters drawn "
          f"evenly from {found.corpus.label()} ...")
    tokenizer = BPETokenizer()
    tokenizer.train(sample, vocab_size)
    check_vocab_filled(tokenizer.vocab_size, vocab_size, found.corpus.label(), len(sample))
    tokenizer.save(path)
    return tokenizer


def prepare_token_files(found: Survey, tokenizer, folder: Path, workers: int | None = None,
                        use_tiktoken: bool | None = None) -> dict:
    """Encode the corpus into ``folder``'s token files and tokens.json; returns the JSON."""
    corpus, docs = found.corpus, found.readable().docs
    workers = workers or os.cpu_count() or 1
    use_tiktoken = tiktoken_available() if use_tiktoken is None else use_tiktoken
    dtype = token_dtype(tokenizer.vocab_size)
    several = bool(corpus.hf_name) or len({d.path for d in docs}) > 1  # else: one text
    rule = split_rule(corpus, several)
    documents: Counter[str] = Counter()

    def counted(pairs: Iterator[tuple[Document, str]]) -> Iterator[tuple[Document, str]]:
        for doc, text in pairs:
            documents[doc.split] += 1
            yield doc, text

    tasks = encoding_tasks(counted(document_texts(docs, corpus)),
                           tokenizer.special_tokens.get("<|endoftext|>"), dtype, several)
    writer = SplitWriter(folder)
    bar = tqdm(total=sum({d.path: d.size for d in docs}.values()) or None, unit="B",
               unit_scale=True, desc=f"encode ({workers} processes, "
               f"{'tiktoken' if use_tiktoken else 'our encoder'})", file=sys.stderr)
    with disk_space_for(folder), writer:  # an error anywhere leaves no token file behind
        with bar:
            for split, ids, data, chars in _in_order(tasks, tokenizer, use_tiktoken, workers):
                writer.write(split, ids, data, chars)
                bar.update(data)
        for split in SPLITS:
            writer.counts[split]["documents"] = documents[split]
        meta = {"format": FORMAT, "corpus": corpus.to_dict(), "sources": found.fingerprint,
                "tokenizer": tokenizer_fingerprint(tokenizer), "vocab_size": tokenizer.vocab_size,
                "dtype": dtype.name, "split_rule": rule,
                "document_separator": "<|endoftext|> (counted as one character)" if several
                else None, "skipped": found.skipped[:100], "splits": writer.counts}
        check_no_empty_split(writer.counts, corpus.label(), rule, several)
        writer.commit(meta)
    return meta


def ready_token_files(found: Survey, tokenizer, folder: Path, workers: int | None = None,
                      use_tiktoken: bool | None = None) -> dict:
    """The corpus's token files in ``folder``: reused when they match the sources and the
    tokenizer, else (re)made, with one line saying why."""
    saved = saved_token_meta(folder)
    why = stale_reason(folder, saved, found.fingerprint, tokenizer)
    if why is None:
        print(f"Reusing the token files in {folder}")
        return saved
    if (folder / "tokens.json").exists():
        print(f"Rebuilding the token files in {folder}: {why}.")
    else:
        print(f"Preparing token files for {found.corpus.label()} in {folder} ...")
    meta = prepare_token_files(found, tokenizer, folder, workers, use_tiktoken)
    if found.skipped_note():
        print(found.skipped_note())
    return meta


def describe(meta: dict) -> str:
    """What a model was trained on, in a line (the app's overview shows it)."""
    splits = meta["splits"]
    documents = sum(s["documents"] for s in splits.values())
    chars = sum(s["chars"] for s in splits.values())
    label = Corpus.from_dict(meta["corpus"]).label()
    what = f"{documents:,} documents, " if meta["document_separator"] else ""
    return (f"{label} ({what}{chars / 1e6:,.1f} M characters; "
            f"{splits['train']['tokens']:,} train tokens, {meta['split_rule']})")


def corpus_facts(corpus: Corpus, folder: Path, token_meta: dict) -> dict:
    """What a checkpoint records of its corpus (``token_meta``: its tokens.json): enough for
    evaluate.py to find its test split."""
    return {"dataset": corpus.name or ("hf" if corpus.hf_name else "text"),
            "corpus": corpus.to_dict(), "prepared": str(folder),
            "split_rule": token_meta["split_rule"], "trained_on": describe(token_meta)}


# The plumbing: what the idea above calls, one step away.

# ---------------------------------------------------------------------------- a streamed dataset

def hf_rows(corpus: Corpus) -> Iterator[str]:
    """The text of each row of a Hugging Face dataset, streamed (a local file the same way)."""
    datasets = import_datasets()
    local = Path(corpus.hf_name)
    builder = HF_SUFFIXES.get(local.suffix) if local.is_file() else None
    source = dict(path=builder, data_files=str(local)) if builder else dict(
        path=corpus.hf_name, name=corpus.hf_config)
    with hf_dataset_readable(corpus.hf_name):
        rows = datasets.load_dataset(**source, split=corpus.hf_split, streaming=True)
        for i, row in enumerate(rows):
            if corpus.hf_max_docs is not None and i >= corpus.hf_max_docs:
                return
            check_hf_field(corpus.hf_name, corpus.hf_field, row)
            yield str(row[corpus.hf_field] or "")


def hf_documents(corpus: Corpus) -> Iterator[tuple[Document, str]]:
    for i, text in enumerate(hf_rows(corpus)):
        u = _unit_hash(corpus.split_seed, i)
        split = "test" if u < TEST_FRACTION else "val" if u < TEST_FRACTION + VAL_FRACTION \
            else "train"
        yield Document(str(i), split=split, chars=len(text)), text


def hf_fingerprint(corpus: Corpus) -> dict:
    local = Path(corpus.hf_name)
    if local.is_file():
        stat = local.stat()
        return {"file": str(local.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return {"dataset": corpus.hf_name, "config": corpus.hf_config, "split": corpus.hf_split}


# ---------------------------------------------------------------------------- what was read

def sources_fingerprint(corpus: Corpus, docs: list[Document]) -> dict:
    """What the token files were made from: each file's size and modification time (or the
    stream's name); a change in any of them means the files are rebuilt."""
    if corpus.hf_name:
        return {"hf": hf_fingerprint(corpus), "max_docs": corpus.hf_max_docs}
    return {"paths": [str(Path(p).expanduser().resolve()) for p in corpus.paths],
            "include": corpus.include, "exclude": corpus.exclude,
            "files": [[d.key, d.size, d.mtime_ns] for d in docs]}


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON: same fingerprint, same ids for every text."""
    canonical = json.dumps(tokenizer.to_dict(), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _changed_source(old: dict, new: dict) -> str:
    if "files" not in old or "files" not in new:
        return "the dataset's settings changed"
    before = {key: (size, mtime) for key, size, mtime in old["files"]}
    now = {key: (size, mtime) for key, size, mtime in new["files"]}
    for key in sorted(before.keys() | now.keys()):
        if key not in now:
            return f"{key} was removed"
        if key not in before:
            return f"{key} is new"
        if before[key] != now[key]:
            return f"{key} changed (size or modification time)"
    return "the sources changed"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def stale_reason(folder: Path, meta: dict | None, fingerprint: dict, tokenizer) -> str | None:
    """Why the token files in ``folder``, described by ``meta`` (their tokens.json, None when
    it is missing or unreadable), cannot be reused (None: they can)."""
    if meta is None:
        return "no complete token files yet"
    if meta.get("format") != FORMAT:
        return "they were written in another format"
    if meta["sources"] != fingerprint:
        return _changed_source(meta["sources"], fingerprint)
    if meta["tokenizer"] != tokenizer_fingerprint(tokenizer):
        return "the tokenizer changed"
    dtype = np.dtype(meta["dtype"])
    for split in SPLITS:
        path, tokens = folder / f"{split}.bin", meta["splits"][split]["tokens"]
        size = path.stat().st_size if path.exists() else 0
        if size != tokens * dtype.itemsize:
            return (f"{path.name} holds {size:,} bytes but tokens.json says {tokens:,} "
                    f"{dtype.name} tokens ({tokens * dtype.itemsize:,} bytes)")
        if tokens and _largest_id(path, dtype, tokens) >= tokenizer.vocab_size:
            return f"{path.name} holds token ids the tokenizer does not have"
    return None


def _largest_id(path: Path, dtype: np.dtype, tokens: int, sample: int = 1 << 22) -> int:
    """The largest id in 16 stretches spread over the file (at most ``sample`` ids in all):
    a spot check that costs milliseconds at any size, read without mapping the file."""
    stretch = max(1, min(tokens, sample) // 16)
    starts = np.linspace(0, max(0, tokens - stretch), 16).astype(np.int64)
    return max(int(np.fromfile(path, dtype, stretch, offset=int(s) * dtype.itemsize).max())
               for s in starts)


def read_token_meta(folder: Path) -> dict:
    return json.loads((folder / "tokens.json").read_text())


def saved_token_meta(folder: Path) -> dict | None:
    """``folder``'s tokens.json, or None where there is none or it cannot be read."""
    try:
        return read_token_meta(folder)
    except (OSError, ValueError):
        return None


def open_tokens(folder: Path, split: str, meta: dict) -> np.memmap | np.ndarray:
    """The split's token ids, memory-mapped: read from disk as windows are drawn."""
    path = folder / f"{split}.bin"
    if meta["splits"][split]["tokens"] == 0:
        return np.zeros(0, dtype=meta["dtype"])  # np.memmap cannot map an empty file
    return np.memmap(path, dtype=meta["dtype"], mode="r")


# ---------------------------------------------------------------------------- encoding

_encode = None  # each worker process's encoder, set by _start_worker


def make_encoder(tokenizer, use_tiktoken: bool):
    """text -> ids: a tiktoken.Encoding built from our own ranks and pattern, or our encoder.

    Our encoder follows tiktoken's rule exactly (tests/test_tokenizer.py), so the ids agree;
    tiktoken's is only faster."""
    if use_tiktoken:
        import tiktoken

        encoding = tiktoken.Encoding("ours", pat_str=tokenizer.pattern,
                                     mergeable_ranks=tokenizer.mergeable_ranks(),
                                     special_tokens=tokenizer.special_tokens)
        return encoding.encode_ordinary
    return tokenizer.encode


def tiktoken_available() -> bool:
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return False
    return True


def _start_worker(tokenizer, use_tiktoken: bool) -> None:
    global _encode
    _encode = make_encoder(tokenizer, use_tiktoken)


def _encode_task(task: tuple[str, list[str], int | None, np.dtype]
                 ) -> tuple[str, np.ndarray, int, int]:
    """One hand-off: a few texts of one split -> (split, ids, UTF-8 bytes, characters)."""
    split, texts, eot, dtype = task
    ids: list[int] = []
    for text in texts:
        if text is None:  # the end of a document
            ids.append(eot)
        else:
            ids.extend(_encode(text))
    data = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if t is not None)
    chars = sum(1 if t is None else len(t) for t in texts)
    return split, np.asarray(ids, dtype=dtype), data, chars


def encoding_tasks(texts: Iterable[tuple[Document, str]], eot: int | None, dtype: np.dtype,
                   several: bool) -> Iterator[tuple]:
    """Pieces of about PIECE_CHARS characters per split, in corpus order. Between documents
    (``several``) comes <|endoftext|>, written as None: the worker puts the id there."""
    pending = {split: ([], 0) for split in SPLITS}
    for doc, text in texts:
        texts_, size = pending[doc.split]
        for piece in safe_pieces(text):
            texts_.append(piece)
            size += len(piece)
            if size >= PIECE_CHARS:
                yield doc.split, texts_, eot, dtype
                texts_, size = [], 0
        if several and eot is not None:
            texts_.append(None)
        pending[doc.split] = (texts_, size)
    for split, (texts_, _) in pending.items():
        if texts_:
            yield split, texts_, eot, dtype


def _in_order(tasks: Iterable[tuple], tokenizer, use_tiktoken: bool, workers: int
              ) -> Iterator[tuple]:
    """``_encode_task`` of every task, on ``workers`` processes, results in task order. At most
    two tasks per worker wait at a time, so memory does not grow with the corpus."""
    if workers <= 1:
        _start_worker(tokenizer, use_tiktoken)
        yield from map(_encode_task, tasks)
        return
    with get_context().Pool(workers, _start_worker, (tokenizer, use_tiktoken)) as pool:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(_encode_task, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class SplitWriter:
    """Appends ids to ``<split>.bin.part`` files; ``commit`` renames them into place. Used as a
    context manager, it discards the .part files when anything goes wrong before the commit."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        (folder / "tokens.json").unlink(missing_ok=True)  # the old files are no longer valid
        self.files = {s: open(folder / f"{s}.bin.part", "wb") for s in SPLITS}  # noqa: SIM115
        self.counts = {s: {"tokens": 0, "chars": 0, "bytes": 0, "documents": 0} for s in SPLITS}

    def write(self, split: str, ids: np.ndarray, data: int, chars: int) -> None:
        ids.tofile(self.files[split])
        count = self.counts[split]
        count["tokens"] += len(ids)
        count["chars"] += chars
        count["bytes"] += data

    def commit(self, meta: dict) -> None:
        for split, f in self.files.items():
            f.close()
            os.replace(self.folder / f"{split}.bin.part", self.folder / f"{split}.bin")
        # last: the token files are complete
        atomic_write(self.folder / "tokens.json", json.dumps(meta, indent=1))

    def discard(self) -> None:
        for split, f in self.files.items():
            f.close()
            (self.folder / f"{split}.bin.part").unlink(missing_ok=True)

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, error_type, *_) -> None:
        if error_type is not None:  # an interrupt, a full disk, an empty split: nothing stays
            self.discard()


# ---------------------------------------------------------------------------- the flags

def add_corpus_args(p, training: bool) -> None:
    """What to read: TinyShakespeare (no flag), text files, or a Hugging Face dataset."""
    g = p.add_argument_group("your own text", "default: TinyShakespeare")
    g.add_argument("--text", nargs="+", metavar="PATH", type=path_arg, default=None,
                   help="text files or folders (searched recursively; each file one document)")
    g.add_argument("--include", default=DEFAULT_INCLUDE,
                   help="which files in a --text folder count, e.g. '*.py' (default: %(default)s)")
    g.add_argument("--exclude", default="",
                   help="names of files or folders in --text to leave out, e.g. site-packages")
    g.add_argument("--hf-dataset", metavar="NAME", default=None,
                   help="a Hugging Face dataset streamed with `datasets`, or a local "
                        ".jsonl/.parquet/.csv file read the same way")
    g.add_argument("--hf-config", default=None, help="the dataset's configuration, if it has some")
    g.add_argument("--hf-split", default="train", help="the dataset's split to read")
    g.add_argument("--hf-field", default="text", help="the field that holds the text")
    g.add_argument("--hf-max-docs", type=positive_int, default=None,
                   help="read at most this many rows of the dataset")
    g.add_argument("--split-seed", type=nonnegative_int, default=0,
                   help="seeds which documents go to val and test")
    g.add_argument("--prepared-dir", type=path_arg, default=None,
                   help=f"folder of the token files (default: {DEFAULT_ROOT}/<corpus>-<hash>)")
    g.add_argument("--workers", type=positive_int, default=None,
                   help="processes that encode the corpus (default: every core)")
    if training:
        g.add_argument("--tokenizer-sample", type=positive_int, default=20_000_000,
                       help="characters of train text drawn evenly to train the tokenizer on")


def corpus_from_args(args) -> Corpus | None:
    """The corpus of --text or --hf-dataset; None when neither was given."""
    check_one_source(args.text, args.hf_dataset)
    if not (args.text or args.hf_dataset):
        return None
    return Corpus(paths=[str(Path(t).expanduser().resolve()) for t in args.text or []],
                  include=args.include, exclude=args.exclude, hf_name=args.hf_dataset or "",
                  hf_config=args.hf_config, hf_split=args.hf_split, hf_field=args.hf_field,
                  hf_max_docs=args.hf_max_docs,
                  split_seed=args.split_seed, nanogpt=getattr(args, "nanogpt_split", False))
