"""Where the data comes from: sources, checksums, downloads, file parsers and data folders.

data_utils.py teaches how text becomes batches; this is the file work underneath, for three
public datasets: TinyShakespeare (Karpathy's char-rnn input.txt), SST-2 (GLUE's
`sentence<TAB>label` files; a download rebuilds them from Hugging Face `stanfordnlp/sst2`) and
Dolly-15k (or any JSONL in its schema, e.g. the offline `instruction-data-1100.jsonl`).

A data folder named by `data_dir` (`--data-dir`) or `LLM_DATA_DIR` is the only place looked in,
and nothing is downloaded; otherwise files are cached in `data/` and downloaded on first use.
A canonical file's bytes must match its sha256 (KNOWN_FILES), because a silently different file
changes every number downstream; `verify=False` uses another on purpose (the tests' fixtures).
SST-2 rebuilt from Hugging Face may not reproduce GLUE's bytes, so its per-label row counts are
accepted too.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.errors import DataFileError, DataMissingError, first_line, one_sentence
from support.files import atomic_write

CACHE_DIR = Path(__file__).resolve().parent.parent / "data"  # download cache, git-ignored

TINYSHAKESPEARE = "tinyshakespeare.txt"
SST2_TRAIN = "sst2/train.tsv"
SST2_DEV = "sst2/dev.tsv"
DOLLY = "databricks-dolly-15k.jsonl"
INSTRUCTIONS_1100 = "instruction-data-1100.jsonl"  # offline stand-in, Dolly's schema
LabelledText = tuple[str, int]  # a sentence and its class, as read_sst2 gives them

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
        hint=f", or use any Dolly-schema JSONL instead (e.g. {INSTRUCTIONS_1100})",
    ),
    INSTRUCTIONS_1100: KnownFile(
        "bc2751ddade44bb303460221323120b49f0e9b7a4c993aecb1f372fe662c78ab",
        "rasbt/LLMs-from-scratch ch07 instruction-data.json, converted to Dolly's schema",
    ),
}


def notice(sentence: str) -> None:
    """Tell the user something that needs no action now: one sentence on stderr, no traceback."""
    print(sentence, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Locating files


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """The folder to read data from: the argument, else $LLM_DATA_DIR, else None (use cache)."""
    origin = "--data-dir"  # what the user typed (the argument is the flag's value)
    if not data_dir:
        data_dir, origin = os.environ.get("LLM_DATA_DIR"), "LLM_DATA_DIR"
    if not data_dir:
        return None
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise DataMissingError(f"The data folder {folder} (from {origin}) does not exist.")
    return folder


def locate(name: str, data_dir: str | Path | None, download: bool) -> Path:
    """Path of data file `name`: from the named folder, else the cache (downloading if allowed)."""
    folder = resolve_data_dir(data_dir)
    if folder is not None:  # an explicit folder is the only place we look; never download
        path = folder / name
        if not path.is_file():
            raise DataMissingError(
                f"Data file {name} is missing from the data folder {folder}: put it at {path} "
                f"(source: {KNOWN_FILES[name].source}) or point --data-dir / LLM_DATA_DIR at a "
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
            reason = why_the_download_failed(err)
    raise DataMissingError(
        f"Data file {name} is not in the cache {CACHE_DIR} and {reason}: put it at {path} "
        f"(source: {KNOWN_FILES[name].source}) or set --data-dir / LLM_DATA_DIR to a folder "
        f"that has it{KNOWN_FILES[name].hint}."
    ) from None


# What requests, urllib3, httpx, huggingface_hub and datasets raise when there is no network
# (or their offline mode is on). Matched by class name along the exception's chain, so that
# none of these optional packages has to be imported just to recognise its errors.
NETWORK_ERRORS = {"ConnectionError", "ConnectTimeout", "Timeout", "TimeoutError", "ConnectError",
                  "NameResolutionError", "NewConnectionError", "MaxRetryError", "gaierror",
                  "LocalEntryNotFoundError", "OfflineModeIsEnabled"}


def is_network_error(err: BaseException | None) -> bool:
    """Whether `err`, or an exception it was raised from, means the network is unreachable."""
    while err is not None:
        if NETWORK_ERRORS & {cls.__name__ for cls in type(err).__mro__}:
            return True
        err = err.__cause__ or err.__context__
    return False


def why_the_download_failed(err: BaseException) -> str:
    """The end of 'Data file X is not in the cache and ...': plain words, not a raw exception."""
    if is_network_error(err):
        return "there is no network to download it"
    return f"the download failed ({type(err).__name__}: {first_line(err)})"


# ----------------------------------------------------------------------------------------------
# Checksums and downloads


def verify_checksum(
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


def _download_shakespeare(cache: Path) -> None:
    import requests

    response = requests.get(SHAKESPEARE_URL, timeout=60)
    response.raise_for_status()
    verify_checksum(TINYSHAKESPEARE, Path(SHAKESPEARE_URL), response.content)
    atomic_write(cache / TINYSHAKESPEARE, response.content)


def _download_sst2(cache: Path) -> None:
    """Rebuild GLUE's train.tsv / dev.tsv from the Hugging Face copy of SST-2."""
    import datasets

    splits = datasets.load_dataset(SST2_HF_NAME)
    for name, split in ((SST2_TRAIN, "train"), (SST2_DEV, "validation")):
        # HF keeps GLUE's sentences verbatim (trailing space included), so this usually
        # reproduces the GLUE bytes; verify_checksum falls back to the label counts if it does not.
        lines = ["sentence\tlabel\n"]
        lines += [f"{row['sentence']}\t{row['label']}\n" for row in splits[split]]
        data = "".join(lines).encode("utf-8")
        rows, _ = _parse_sst2(data.decode("utf-8"), name)
        verify_checksum(name, Path(f"{SST2_HF_NAME}:{split}"), data, _label_counts(rows))
        atomic_write(cache / name, data)


def _download_dolly(cache: Path) -> None:
    # The raw JSONL (not the parsed `datasets` table) so the sha256 can be checked byte for byte.
    from huggingface_hub import hf_hub_download

    hub_path = Path(hf_hub_download(DOLLY_HF_NAME, DOLLY, repo_type="dataset"))
    data = hub_path.read_bytes()
    verify_checksum(DOLLY, hub_path, data)
    atomic_write(cache / DOLLY, data)


def _no_download(cache: Path) -> None:
    raise RuntimeError("this file has no download source; copy it into a data folder")


_DOWNLOADERS = {
    TINYSHAKESPEARE: _download_shakespeare,
    SST2_TRAIN: _download_sst2,
    SST2_DEV: _download_sst2,
    DOLLY: _download_dolly,
    INSTRUCTIONS_1100: _no_download,
}


def read_text(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()  # bytes, not read_text: no newline translation, exact char counts
    with one_sentence(DataFileError, {UnicodeDecodeError: lambda err: (
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}).")}):
        return data.decode("utf-8"), data


def _parse_lines(text: str, parse: Callable[[str], Any], header: str | None = None
                 ) -> tuple[list, list[int]]:
    """(rows, bad line numbers): what ``parse`` makes of each non-blank line of a TSV or JSONL
    file (None: not a row), a first line equal to ``header`` left out. Only "\n" ends a line:
    text fields may hold U+2028, form feeds and the like, which str.splitlines() would split on."""
    rows, bad = [], []
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or (lineno == 1 and line.strip() == header):
            continue
        row = parse(line)
        if row is None:
            bad.append(lineno)
        else:
            rows.append(row)
    return rows, bad


def _sst2_row(line: str) -> LabelledText | None:
    sentence, tab, label = line.rpartition("\t")
    sentence = sentence.strip()  # GLUE has a space before the tab
    return (sentence, int(label)) if tab and sentence and label.strip() in ("0", "1") else None


def _parse_sst2(text: str, where: str) -> tuple[list[LabelledText], list[int]]:
    """Rows (sentence, label) of a GLUE `sentence<TAB>label` file, and the bad line numbers."""
    rows, bad = _parse_lines(text, _sst2_row, header="sentence\tlabel")
    if not rows:
        raise DataFileError(f"{where} holds no `sentence<TAB>label` rows with label 0 or 1.")
    return rows, bad


def _label_counts(rows: list[LabelledText]) -> tuple[int, int]:
    counts = Counter(label for _, label in rows)
    return counts[0], counts[1]


def read_sst2(name: str, data_dir: str | Path | None, download: bool, verify: bool
              ) -> list[LabelledText]:
    """The (sentence, label) rows of a GLUE SST-2 file; malformed rows are skipped, with a note."""
    path = locate(name, data_dir, download)
    text, data = read_text(path)
    rows, bad = _parse_sst2(text, str(path))
    if bad:
        notice(f"{path}: skipped {len(bad)} malformed rows (no tab or label not 0/1), "
               f"first at line {bad[0]}.")
    if verify:
        verify_checksum(name, path, data, _label_counts(rows))
    return rows


# ----------------------------------------------------------------------------------------------
# TinyShakespeare


def tinyshakespeare_file(data_dir: str | Path | None, download: bool = True,
                         verify: bool = True) -> Path:
    """Where TinyShakespeare is, once found (downloaded if need be) and verified."""
    read_tinyshakespeare(data_dir, download, verify)
    return locate(TINYSHAKESPEARE, data_dir, download=False)


def read_tinyshakespeare(data_dir: str | Path | None, download: bool, verify: bool) -> str:
    path = locate(TINYSHAKESPEARE, data_dir, download)
    text, data = read_text(path)
    if verify:
        verify_checksum(TINYSHAKESPEARE, path, data)
    if not text:
        raise DataFileError(f"{path} is empty.")
    return text


# ----------------------------------------------------------------------------------------------
# Instruction data (Dolly schema)

INSTRUCTION_FIELDS = ("instruction", "context", "response", "category")


def _parse_record(line: str) -> dict[str, str] | None:
    """One Dolly-schema record with string fields, or None if the line is not one."""
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: nested thousands deep
        return None
    if not isinstance(obj, dict):
        return None
    obj = {**obj, "category": obj.get("category") or "general"}  # missing category: general
    if not all(isinstance(obj.get(name), str) for name in INSTRUCTION_FIELDS):
        return None
    return {name: obj[name] for name in INSTRUCTION_FIELDS}


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


def read_instruction_records(data_file: str | Path | None, data_dir: str | Path | None,
                             download: bool, verify: bool) -> tuple[list[dict[str, str]], Path]:
    """The Dolly-schema records of `data_file` (else Dolly-15k) and the file they came from.

    Lines that are not such records are skipped, with one note; a file with none is an error.
    """
    path = locate(DOLLY, data_dir, download) if data_file is None else \
        _instruction_file(data_file, data_dir)
    text, data = read_text(path)
    if verify and path.name in KNOWN_FILES:
        verify_checksum(path.name, path, data)
    records, bad = _parse_lines(text, _parse_record)
    if not records:
        raise DataFileError(
            f"{path} holds no Dolly-schema records (JSON lines with string fields "
            "instruction, context, response)."
        )
    if bad:
        notice(f"{path}: skipped {len(bad)} lines that are not Dolly-schema records "
               f"(bad JSON, missing or non-string fields), first at line {bad[0]}.")
    return records, path


# ----------------------------------------------------------------------------------------------
# Optional sources of the tokenizer corpus


@dataclass
class OptionalSources:
    """Collects the optional sources that are missing, then says so in one sentence.

        missing = OptionalSources(data_dir)
        with missing.allowed("SST-2", "sst2/", "put sst2/train.tsv and dev.tsv into that folder"):
            parts.append(...)          # skipped if its file is missing
        missing.report()
    """

    data_dir: str | Path | None = None
    missing: list[tuple[str, str, str]] = field(default_factory=list)

    @contextmanager
    def allowed(self, label: str, file_name: str, remedy: str, optional: bool = True
                ) -> Iterator[None]:
        """Run the block; if it finds a data file missing (and the source is optional), note it."""
        try:
            yield
        except DataMissingError:
            if not optional:
                raise
            self.missing.append((label, file_name, remedy))

    def report(self) -> None:
        if not self.missing:
            return
        labels, files, remedies = zip(*self.missing, strict=True)
        folder = resolve_data_dir(self.data_dir) or CACHE_DIR
        are = "is" if len(files) == 1 else "are"
        notice(f"The tokenizer corpus has no {' or '.join(labels)} text ({' and '.join(files)} "
               f"{are} not in {folder}); nothing needs redoing, as such text just takes a few "
               f"more tokens; to include it in a new tokenizer, {' and '.join(remedies)}.")
