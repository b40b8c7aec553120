"""Datasets, fixed splits and batches for every script in the project.

Three public datasets, each from its canonical source:

- TinyShakespeare (pretraining): Karpathy's char-rnn `input.txt`, fetched with `requests`.
- SST-2 (sentiment classification): the GLUE `sentence<TAB>label` files `sst2/train.tsv`
  and `sst2/dev.tsv`; when downloaded they are rebuilt from the Hugging Face dataset
  `stanfordnlp/sst2` with the `datasets` library.
- Dolly-15k (instruction tuning): `databricks-dolly-15k.jsonl` from the Hugging Face dataset
  repo `databricks/databricks-dolly-15k`. Any JSONL file in Dolly's schema (one object per
  line with string fields instruction, context, response, category) can stand in for it,
  e.g. `instruction-data-1100.jsonl`, the offline copy the tests use.

Where files come from. When a data folder is named, by the `data_dir` argument (the scripts'
`--data-dir` flag) or else by the environment variable `LLM_DATA_DIR`, files are read from that
folder under the names above and nothing is ever downloaded. Otherwise files are cached in
`data/` next to this module and downloaded there on first use. A missing file raises
`DataMissingError` with one sentence that says which file and where to put it.

Checksums. The canonical files have known sha256 sums (KNOWN_FILES, copied from the shared
data README). A file under a known name whose bytes differ raises `DataFileError`, because a
silently different file changes every number downstream. Pass `verify=False` to use a
different file on purpose (the tests do, for tiny fixtures). SST-2 rebuilt from Hugging Face
may not reproduce GLUE's bytes exactly, so for SST-2 a file whose per-label row counts match
the published counts is accepted too.

Splits are fixed and documented, so results compare across runs and with other projects:

- TinyShakespeare, by characters: train = first 85 %, val = next 5 %, test = last 10 %.
  The last 10 % is exactly the slice nanoGPT reports its validation loss on
  (`data[int(n * 0.9):]`). nanoGPT trains on everything before it, and the two losses
  compare only when we do too (`nanogpt=True`): our val 5 % begins a play the test continues.
- SST-2: the GLUE dev set (872 sentences) is our test set, never used for training or model
  selection; val is a seeded carve-out of GLUE train, train is the rest.
- Instructions: a seeded 95 / 5 train / test split.

Batches: `create_dataloader` cuts a token stream into (input, target) windows for next-token
prediction, with seeded shuffling and rank sharding for DDP (`ShardedSampler`, which lives in
support/batching.py beside `pad_batch` and the other batching of variable-length examples).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from support.batching import ShardedSampler, pad_batch  # noqa: F401 - re-exported
from support.errors import DataFileError, DataMissingError  # noqa: F401 - re-exported

# ----------------------------------------------------------------------------------------------
# Where the files live


CACHE_DIR = Path(__file__).resolve().parent / "data"  # download cache, git-ignored

TINYSHAKESPEARE = "tinyshakespeare.txt"
SST2_TRAIN = "sst2/train.tsv"
SST2_DEV = "sst2/dev.tsv"
DOLLY = "databricks-dolly-15k.jsonl"
INSTRUCTIONS_1100 = "instruction-data-1100.jsonl"  # offline stand-in, Dolly's schema

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SST2_HF_NAME = "stanfordnlp/sst2"
DOLLY_HF_NAME = "databricks/databricks-dolly-15k"


@dataclass(frozen=True)
class KnownFile:
    sha256: str
    source: str
    label_counts: tuple[int, int] | None = None  # SST-2 only: (negative, positive) rows
    hint: str = ""  # appended to the "missing" message


KNOWN_FILES: dict[str, KnownFile] = {
    TINYSHAKESPEARE: KnownFile(
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", SHAKESPEARE_URL
    ),
    SST2_TRAIN: KnownFile(
        "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
        f"GLUE SST-2 train.tsv, or Hugging Face {SST2_HF_NAME}",
        label_counts=(29_780, 37_569),
    ),
    SST2_DEV: KnownFile(
        "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
        f"GLUE SST-2 dev.tsv, or Hugging Face {SST2_HF_NAME}",
        label_counts=(428, 444),
    ),
    DOLLY: KnownFile(
        "2df9083338b4abd6bceb5635764dab5d833b393b55759dffb0959b6fcbf794ec",
        f"Hugging Face dataset {DOLLY_HF_NAME}",
        hint=f", or pass any Dolly-schema JSONL (e.g. {INSTRUCTIONS_1100}) as data_file",
    ),
    INSTRUCTIONS_1100: KnownFile(
        "bc2751ddade44bb303460221323120b49f0e9b7a4c993aecb1f372fe662c78ab",
        "rasbt/LLMs-from-scratch ch07 instruction-data.json, converted to Dolly's schema",
    ),
}


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The folder to read data from: the argument, else $LLM_DATA_DIR, else None (use cache)."""
    origin = "data_dir / --data-dir"
    if not data_dir:
        data_dir, origin = os.environ.get("LLM_DATA_DIR"), "LLM_DATA_DIR"
    if not data_dir:
        return None
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataMissingError(f"The data folder {folder} (from {origin}) does not exist.")
    return folder


def _locate(name: str, data_dir: str | Path | None, download: bool) -> Path:
    """Path of data file `name`: from the named folder, else the cache (downloading if allowed)."""
    folder = resolve_data_dir(data_dir)
    if folder is not None:  # an explicit folder is the only place we look; never download
        path = folder / name
        if not path.is_file():
            raise DataMissingError(
                f"Data file {name} is missing from the data folder {folder}: put it at {path} "
                f"(source: {KNOWN_FILES[name].source}) or point LLM_DATA_DIR / --data-dir at a "
                f"folder that has it{KNOWN_FILES[name].hint}."
            )
        return path
    path = CACHE_DIR / name
    if path.is_file():
        return path
    reason = "downloads are turned off (download=False)"
    if download:
        try:
            _DOWNLOADERS[name](CACHE_DIR)
            return path
        except Exception as err:  # network, HTTP, hub, offline mode, a wrong download: "missing"
            reason = f"the download failed ({type(err).__name__}: {_first_line(err)})"
    raise DataMissingError(
        f"Data file {name} is not in the cache {CACHE_DIR} and {reason}: put it at {path} "
        f"(source: {KNOWN_FILES[name].source}) or set LLM_DATA_DIR / --data-dir to a folder "
        f"that has it{KNOWN_FILES[name].hint}."
    ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no details"


# ----------------------------------------------------------------------------------------------
# Checksums and downloads


def _verify(
    name: str, path: Path, data: bytes, label_counts: tuple[int, int] | None = None
) -> None:
    """Raise DataFileError unless `data` (the bytes of `path`) is the canonical file `name`."""
    known = KNOWN_FILES[name]
    digest = hashlib.sha256(data).hexdigest()
    if digest == known.sha256:
        return
    # SST-2 rebuilt from Hugging Face holds the same rows as GLUE's file, but we cannot promise
    # byte equality (whitespace, row order), so for SST-2 we settle for the published counts.
    if known.label_counts is not None and label_counts == known.label_counts:
        return
    raise DataFileError(
        f"{path} is not the canonical {name} (sha256 {digest[:12]}..., expected "
        f"{known.sha256[:12]}...): replace it with the file from {known.source}."
    )


def _atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), then move the finished file into place (no half files in cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _download_shakespeare(cache: Path) -> None:
    import requests

    response = requests.get(SHAKESPEARE_URL, timeout=60)
    response.raise_for_status()
    _verify(TINYSHAKESPEARE, Path(SHAKESPEARE_URL), response.content)
    _atomic_write(cache / TINYSHAKESPEARE, lambda tmp: tmp.write_bytes(response.content))


def _download_sst2(cache: Path) -> None:
    """Rebuild GLUE's train.tsv / dev.tsv from the Hugging Face copy of SST-2."""
    import datasets

    splits = datasets.load_dataset(SST2_HF_NAME)
    for name, split in ((SST2_TRAIN, "train"), (SST2_DEV, "validation")):
        # HF keeps GLUE's sentences verbatim (trailing space included), so this usually
        # reproduces the GLUE bytes; _verify falls back to the label counts if it does not.
        lines = ["sentence\tlabel\n"]
        lines += [f"{row['sentence']}\t{row['label']}\n" for row in splits[split]]
        data = "".join(lines).encode("utf-8")
        rows, _ = _parse_sst2(data.decode("utf-8"), name)
        _verify(name, Path(f"{SST2_HF_NAME}:{split}"), data, _label_counts(rows))
        _atomic_write(cache / name, lambda tmp, data=data: tmp.write_bytes(data))


def _download_dolly(cache: Path) -> None:
    # The raw JSONL (not the parsed `datasets` table) so the sha256 can be checked byte for byte.
    from huggingface_hub import hf_hub_download

    hub_path = Path(hf_hub_download(DOLLY_HF_NAME, DOLLY, repo_type="dataset"))
    _verify(DOLLY, hub_path, hub_path.read_bytes())
    _atomic_write(cache / DOLLY, lambda tmp: shutil.copyfile(hub_path, tmp))


def _no_download(cache: Path) -> None:
    raise RuntimeError("this file has no download source; copy it into a data folder")


_DOWNLOADERS = {
    TINYSHAKESPEARE: _download_shakespeare,
    SST2_TRAIN: _download_sst2,
    SST2_DEV: _download_sst2,
    DOLLY: _download_dolly,
    INSTRUCTIONS_1100: _no_download,
}


def _read_text(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()  # bytes, not read_text: no newline translation, exact char counts
    try:
        return data.decode("utf-8"), data
    except UnicodeDecodeError as err:
        raise DataFileError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start})."
        ) from None


def _numbered_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for the lines of a TSV or JSONL file. Only "\n" ends a line: text
    fields may hold U+2028, form feeds and the like, which str.splitlines() would split on."""
    for lineno, line in enumerate(text.split("\n"), start=1):
        yield lineno, line.removesuffix("\r")


# ----------------------------------------------------------------------------------------------
# TinyShakespeare


def load_tinyshakespeare(
    data_dir: str | Path | None = None, download: bool = True, verify: bool = True
) -> str:
    """The full TinyShakespeare text (1,115,394 characters)."""
    path = _locate(TINYSHAKESPEARE, data_dir, download)
    text, data = _read_text(path)
    if verify:
        _verify(TINYSHAKESPEARE, path, data)
    if not text:
        raise DataFileError(f"{path} is empty.")
    return text


def split_shakespeare(text: str, nanogpt: bool = False) -> dict[str, str]:
    """Split by characters: train first 85 %, val next 5 %, test last 10 % (nanoGPT's val).

    ``nanogpt=True`` trains on the first 90 %, as nanoGPT does, so that losses on the test
    slice compare with nanoGPT's published ones. Val then lies inside the training text and
    says nothing about unseen text; the test slice stays unseen either way.
    """
    n = len(text)
    # Integer arithmetic gives the same cut as nanoGPT's int(n * 0.9), without float surprises.
    train_end, val_end = n * 85 // 100, n * 90 // 100
    return {"train": text[: val_end if nanogpt else train_end], "val": text[train_end:val_end],
            "test": text[val_end:]}


# ----------------------------------------------------------------------------------------------
# SST-2


def _parse_sst2(text: str, where: str) -> tuple[list[tuple[str, int]], list[int]]:
    """Rows (sentence, label) of a GLUE `sentence<TAB>label` file, and the bad line numbers."""
    rows, bad = [], []
    for lineno, line in _numbered_lines(text):
        if lineno == 1 and line.strip() == "sentence\tlabel":
            continue  # header
        if not line.strip():
            continue
        sentence, tab, label = line.rpartition("\t")
        sentence = sentence.strip()  # GLUE has a space before the tab
        if not tab or not sentence or label.strip() not in ("0", "1"):
            bad.append(lineno)
            continue
        rows.append((sentence, int(label)))
    if not rows:
        raise DataFileError(f"{where} holds no `sentence<TAB>label` rows with label 0 or 1.")
    return rows, bad


def _label_counts(rows: list[tuple[str, int]]) -> tuple[int, int]:
    counts = Counter(label for _, label in rows)
    return counts[0], counts[1]


def _read_sst2(name: str, data_dir, download: bool, verify: bool) -> list[tuple[str, int]]:
    path = _locate(name, data_dir, download)
    text, data = _read_text(path)
    rows, bad = _parse_sst2(text, str(path))
    if bad:
        warnings.warn(
            f"{path}: skipped {len(bad)} malformed rows (no tab or label not 0/1), "
            f"first at line {bad[0]}.",
            stacklevel=3,
        )
    if verify:
        _verify(name, path, data, _label_counts(rows))
    return rows


def load_sst2(
    data_dir: str | Path | None = None,
    val_size: int = 872,
    seed: int = 0,
    download: bool = True,
    verify: bool = True,
) -> dict[str, list[tuple[str, int]]]:
    """SST-2 as (sentence, label) lists: {"train", "val" (seeded from GLUE train), "test"}.

    "test" is the GLUE dev set (872 rows), kept for final evaluation only. "val" is `val_size`
    rows drawn from GLUE train with `seed` (872 by default, as large as the test set); "train"
    is the rest. Both keep the file's order.
    """
    glue_train = _read_sst2(SST2_TRAIN, data_dir, download, verify)
    test = _read_sst2(SST2_DEV, data_dir, download, verify)
    if not 0 <= val_size < len(glue_train):
        raise ValueError(f"val_size must be in [0, {len(glue_train)}), got {val_size}.")
    order = list(range(len(glue_train)))
    random.Random(seed).shuffle(order)
    val_ids = set(order[:val_size])
    return {
        "train": [row for i, row in enumerate(glue_train) if i not in val_ids],
        "val": [row for i, row in enumerate(glue_train) if i in val_ids],
        "test": test,
    }


# ----------------------------------------------------------------------------------------------
# Instruction data (Dolly schema)

INSTRUCTION_FIELDS = ("instruction", "context", "response", "category")


def _parse_record(line: str) -> dict[str, str] | None:
    """One Dolly-schema record with string fields, or None if the line is not one."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    obj = {**obj, "category": obj.get("category") or "general"}  # missing category: general
    if not all(isinstance(obj.get(field), str) for field in INSTRUCTION_FIELDS):
        return None
    return {field: obj[field] for field in INSTRUCTION_FIELDS}


def _instruction_file(data_file: str | Path, data_dir: str | Path | None) -> Path:
    """`data_file` as given, or, for a bare name not in the current folder, that file in the
    data folder (`data_dir`, else LLM_DATA_DIR, else the cache), where the other data lives."""
    path = Path(data_file).expanduser()
    if path.is_file():
        return path
    problem = "does not exist"
    if str(data_file) == path.name:  # a bare name such as instruction-data-1100.jsonl
        folder = resolve_data_dir(data_dir) or CACHE_DIR
        if (folder / path).is_file():
            return folder / path
        problem = f"is in neither the current folder nor the data folder {folder}"
    raise DataMissingError(
        f"Instruction file {path} {problem}: pass the path of a Dolly-schema JSONL file, or "
        f"the name of one in the data folder (LLM_DATA_DIR / --data-dir), e.g. "
        f"{INSTRUCTIONS_1100}."
    )


def load_instructions(
    data_file: str | Path | None = None,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.05,
    download: bool = True,
    verify: bool = True,
) -> dict[str, list[dict[str, str]]]:
    """Instruction records split seeded 95 / 5 into {"train", "test"}.

    Each record is {"instruction", "context", "response", "category"}, all str. The source is
    `data_file` (any Dolly-schema JSONL; a bare name not in the current folder is looked up in
    the data folder) when given, else databricks-dolly-15k.jsonl from the data folder or cache.
    Lines that are not such records are skipped and counted in a warning.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}.")
    if data_file is not None:
        path = _instruction_file(data_file, data_dir)
    else:
        path = _locate(DOLLY, data_dir, download)
    text, data = _read_text(path)
    if verify and path.name in KNOWN_FILES:
        _verify(path.name, path, data)

    records, bad = [], []
    for lineno, line in _numbered_lines(text):
        if not line.strip():
            continue
        record = _parse_record(line)
        if record is None:
            bad.append(lineno)
        else:
            records.append(record)
    if not records:
        raise DataFileError(
            f"{path} holds no Dolly-schema records (JSON lines with string fields "
            "instruction, context, response)."
        )
    if bad:
        warnings.warn(
            f"{path}: skipped {len(bad)} lines that are not Dolly-schema records "
            f"(bad JSON, missing or non-string fields), first at line {bad[0]}.",
            stacklevel=2,
        )

    n_test = max(1, round(len(records) * test_fraction)) if test_fraction > 0 else 0
    if n_test >= len(records):
        raise DataFileError(
            f"{path} has only {len(records)} records, too few for a train/test split."
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    test_ids = set(order[:n_test])
    return {
        "train": [r for i, r in enumerate(records) if i not in test_ids],
        "test": [r for i, r in enumerate(records) if i in test_ids],
    }


# ----------------------------------------------------------------------------------------------
# Tokenizer training corpus


def tokenizer_training_corpus(
    data_dir: str | Path | None = None,
    instruction_file: str | Path | None = None,
    *,
    sst2: bool = True,
    instructions: bool = True,
    sst2_val_size: int = 872,
    seed: int = 0,
    download: bool = True,
    verify: bool = True,
) -> str:
    """Text to train the tokenizer on: train splits only, never any val or test text.

    Shakespeare train + SST-2 train sentences + instruction train records (so modern words
    are cheap to encode). Shakespeare is required. SST-2 and the default Dolly source are
    optional: if one is missing, the corpus is built from what exists, with one warning.
    An `instruction_file` that was named explicitly must exist. `sst2_val_size` and `seed`
    must be the ones the finetuning scripts split with, so their val rows stay out.
    """
    parts = [split_shakespeare(load_tinyshakespeare(data_dir, download, verify))["train"]]
    missing = []
    if sst2:
        try:
            splits = load_sst2(data_dir, sst2_val_size, seed, download, verify)
            parts.append("\n".join(sentence for sentence, _ in splits["train"]))
        except DataMissingError as err:
            missing.append(f"SST-2 ({err})")
    if instructions:
        try:
            train = load_instructions(
                instruction_file, data_dir, seed=seed, download=download, verify=verify
            )["train"]
            parts.append("\n".join(_record_text(r) for r in train))
        except DataMissingError as err:
            if instruction_file is not None:
                raise
            missing.append(f"instructions ({err})")
    if missing:
        warnings.warn("Tokenizer corpus built without: " + "; ".join(missing), stacklevel=2)
    return "\n".join(parts)


def _record_text(record: dict[str, str]) -> str:
    fields = (record["instruction"], record["context"], record["response"])
    return "\n".join(field for field in fields if field)


# ----------------------------------------------------------------------------------------------
# Batches


class TokenWindowDataset(Dataset):
    """Windows of a token stream: item i is (tokens[s : s+T], tokens[s+1 : s+T+1]), s = i*stride."""

    def __init__(self, token_ids, context_length: int, stride: int) -> None:
        self.tokens = torch.as_tensor(token_ids, dtype=torch.long).flatten()
        self.context_length = context_length
        self.stride = stride
        # the last window needs context_length inputs plus one more token as its final target
        if len(self.tokens) < context_length + 1:
            raise ValueError(
                f"Need at least context_length + 1 = {context_length + 1} tokens for one "
                f"(input, target) window, got {len(self.tokens)}."
            )
        self.num_windows = (len(self.tokens) - context_length - 1) // stride + 1

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_windows:  # also what ends a plain `for x, y in dataset`
            raise IndexError(f"window {i} is out of range for {self.num_windows} windows.")
        start = i * self.stride
        window = self.tokens[start : start + self.context_length + 1]
        return window[:-1], window[1:]


def create_dataloader(
    token_ids,
    context_length: int,
    batch_size: int,
    stride: int | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """Next-token batches: (inputs, targets) LongTensors [B, T], targets = inputs shifted by one.

    `token_ids` is a list, array or tensor of ids. Windows start every `stride` tokens
    (default context_length: no overlap). `rank` / `world_size` give each DDP process its own
    disjoint shard of the windows (see ShardedSampler).
    """
    for name, value, low in (
        ("context_length", context_length, 1),
        ("batch_size", batch_size, 1),
        ("world_size", world_size, 1),
        ("num_workers", num_workers, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    stride = context_length if stride is None else stride
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")

    dataset = TokenWindowDataset(token_ids, context_length, stride)
    n_tokens = len(dataset.tokens)
    sampler = ShardedSampler(len(dataset), shuffle, seed, rank, world_size)
    if len(sampler) == 0 or (drop_last and len(sampler) < batch_size):
        raise ValueError(
            f"{n_tokens} tokens give {len(sampler)} windows per rank, not enough for one batch "
            f"of {batch_size}{' with drop_last=True' if drop_last else ''}: use fewer ranks, a "
            "smaller batch_size, context_length or stride, or more tokens."
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
    )
