"""From text to training batches: next-token windows, and the fixed splits of every dataset.

A language model learns to predict the next token. So a training example is a window of
`context_length` tokens as the input and the same window shifted one token to the right as the
target: for tokens [t0, t1, t2, t3, t4] and context 4, the input is [t0, t1, t2, t3] and the
target [t1, t2, t3, t4]. Every position is an example: after t0 comes t1, after t0 t1 comes t2,
and so on, so one window teaches `context_length` predictions at once.

Pretraining cuts its windows out of one long token array (`get_batch`, as nanoGPT does): the
array is a file of token ids, memory-mapped, so a gigabyte of text costs no memory.
`WindowBatches` visits every window once per epoch in a seeded random order, and batch n
depends on n alone, so a resumed run draws the very same batches and each DDP process takes
its own rows of the same global batch. The token files are made once per corpus by
corpus.py (text files, a Hugging Face dataset, or TinyShakespeare).
`TokenWindowDataset` cuts a token array into windows in order (a new one every `stride`
tokens), for measuring the loss on held-out text; `create_dataloader` batches them (shuffled
and sharded by `ShardedSampler`). The last part batches the other kind of data, sequences of
different lengths, for classification and instructions: `pad_batch` right-pads them,
`LengthGroupedBatches` keeps the padding small, `example_loader` hands them to training.

Splits are fixed and documented, so results compare across runs and with other projects:

- TinyShakespeare, by characters: train = first 85 %, val = next 5 %, test = last 10 %.
  The last 10 % is exactly the slice nanoGPT reports its validation loss on
  (`data[int(n * 0.9):]`). nanoGPT trains on everything before it, and the two losses
  compare only when we do too (`nanogpt=True`): our val 5 % begins a play the test continues.
- SST-2: the GLUE dev set (872 sentences) is our test set, never used for training or model
  selection; val is a seeded carve-out of GLUE train, train is the rest.
- Instructions: a seeded 95 / 5 train / test split.
- Your own text (main.py --text): one file splits by characters as TinyShakespeare does;
  several documents split by document, seeded (corpus.py says how).

The tokenizer is trained on train splits only (`tokenizer_training_corpus`), so no val or test
text shapes the vocabulary. Where the files come from (folders, downloads, checksums, parsers)
is support/datasets.py's business; a missing or wrong file is one sentence (DataMissingError,
DataFileError).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from corpus import Corpus, character_splits
from support.checks import (
    Range,
    check_batches,
    check_example_loader,
    check_loader,
    check_test_split,
    check_windows,
    need,
)
from support.datasets import (
    DOLLY,
    INSTRUCTIONS_1100,
    SST2_DEV,
    SST2_TRAIN,
    LabelledText,
    OptionalSources,
    read_instruction_records,
    read_sst2,
    read_tinyshakespeare,
    tinyshakespeare_file,
)

# ----------------------------------------------------------------------------------------------
# Next-token batches


def get_batch(tokens: np.ndarray, starts: np.ndarray, context_length: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of `tokens` at `starts`: inputs and targets, each [B, T]."""
    windows = np.stack([tokens[s : s + context_length + 1] for s in starts]).astype(np.int64)
    windows = torch.from_numpy(windows)
    return windows[:, :-1], windows[:, 1:]


class WindowBatches:
    """Endless training batches of windows of a token array, epoch after epoch.

    The windows start every `stride` tokens; epoch e visits each of them once, in an order
    shuffled with seed + e (`EpochOrder`), cut into batches of `batch_size` (the windows left
    over at an epoch's end are skipped). nanoGPT instead draws random offsets, with
    replacement; on the CPU preset that scored 1.7075 nats/char, against 1.6842 for visiting
    every window once per epoch (RESULTS.md). Batch n depends on n alone, so a resumed run
    draws the very same batches. Under DDP process `rank` of `world_size` takes every
    world_size-th window of the order, so 2 processes x 8 rows train as 1 process x 16.
    """

    def __init__(self, open_tokens, context_length: int, batch_size: int, seed: int,
                 stride: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.open_tokens = open_tokens  # () -> the token array, e.g. a fresh np.memmap
        self.context_length, self.batch_size, self.seed = context_length, batch_size, seed
        self.stride = stride or context_length
        self.rank, self.world_size = rank, world_size

    def from_batch(self, n: int):
        tokens = self.open_tokens()
        n_windows = (len(tokens) - self.context_length - 1) // self.stride + 1
        per_epoch = n_windows // self.world_size // self.batch_size
        check_batches(per_epoch, n_windows, self.batch_size, self.world_size)
        order = EpochOrder(n_windows, self.seed)
        while True:
            epoch, k = divmod(n, per_epoch)
            positions = (k * self.batch_size + np.arange(self.batch_size)) * self.world_size
            starts = order(epoch, positions + self.rank) * self.stride
            # A fresh memmap per batch, as nanoGPT does: pages read through an old mapping
            # would stay counted in the process's memory.
            yield get_batch(self.open_tokens(), starts, self.context_length)
            n += 1


SMALL_EPOCH = 1 << 21  # windows; up to here an epoch's order is a stored torch.randperm (16 MB)


class EpochOrder:
    """Which window comes at each position of epoch e: a shuffle seeded with seed + e.

    Up to SMALL_EPOCH windows this is torch.randperm, stored for the epoch: the very order
    ShardedSampler gives, so TinyShakespeare trains on the same batches as before token files.
    Beyond, storing it would grow with the corpus, so ``permuted`` computes each entry alone.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self.epoch, self.table = None, None

    def __call__(self, epoch: int, positions: np.ndarray) -> np.ndarray:
        if self.n > SMALL_EPOCH:
            return permuted(positions, self.n, self.seed + epoch)
        if self.epoch != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self.epoch, self.table = epoch, torch.randperm(self.n, generator=generator).numpy()
        return self.table[positions]


def permuted(positions, n: int, seed) -> np.ndarray:
    """Entries ``positions`` of a seeded random permutation of range(n), without building it.

    A shuffled order of a billion windows would itself take gigabytes; a Feistel network is a
    bijection of [0, 4**h) computed one number at a time (6 rounds of a keyed hash), and
    "cycle-walking" (applying it again while the result is >= n) turns it into a bijection of
    range(n). ``seed`` may be one int or one per position (e.g. seed + epoch).
    """
    bits = max(1, ((n - 1).bit_length() + 1) // 2)  # each half of the Feistel input
    mask = np.uint64((1 << bits) - 1)
    keys = np.broadcast_to(np.asarray(seed, dtype=np.uint64), np.shape(positions))
    out = np.asarray(positions, dtype=np.uint64).copy()
    todo = np.ones(out.shape, dtype=bool)
    with np.errstate(over="ignore"):  # the hash multiplies modulo 2**64 on purpose
        while todo.any():
            x, key = out[todo], keys[todo]
            left, right = x >> np.uint64(bits), x & mask
            for round_ in range(6):
                z = right + key * np.uint64(0x9E3779B97F4A7C15) + np.uint64(round_ + 1)
                z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                left, right = right, left ^ ((z ^ (z >> np.uint64(31))) & mask)
            out[todo] = (left << np.uint64(bits)) | right
            todo = out >= np.uint64(n)
    return out.astype(np.int64)


class TokenWindowDataset(Dataset):
    """Windows of a token array: item i is (tokens[s : s+T], tokens[s+1 : s+T+1]), s = i*stride."""

    def __init__(self, token_ids, context_length: int, stride: int) -> None:
        # an array (a memmap, too) is read window by window, never copied whole
        self.tokens = token_ids if isinstance(token_ids, np.ndarray) else \
            torch.as_tensor(token_ids, dtype=torch.long).flatten().numpy()
        self.context_length = context_length
        self.stride = stride
        check_windows(len(self.tokens), context_length, stride)
        # the last window needs context_length inputs plus one more token as its final target
        self.num_windows = (len(self.tokens) - context_length - 1) // stride + 1

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < self.num_windows:  # also what ends a plain `for x, y in dataset`
            raise IndexError(f"window {i} is out of range for {self.num_windows} windows.")
        start = i * self.stride
        window = self.tokens[start : start + self.context_length + 1].astype(np.int64)
        window = torch.from_numpy(window)
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
    stride = context_length if stride is None else stride
    dataset = TokenWindowDataset(token_ids, context_length, stride)
    sampler = ShardedSampler(len(dataset), shuffle, seed, rank, world_size)
    check_loader(len(dataset.tokens), sampler, batch_size, num_workers, drop_last)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
    )


class ShardedSampler(Sampler[int]):
    """Seeded shuffle, then rank `rank` of `world_size` takes every world_size-th index.

    Like torch's DistributedSampler(drop_last=True): the shuffled order is cut to a multiple
    of world_size, so the shards are disjoint and equally long (DDP ranks must take the same
    number of steps). Every rank uses the same seed, so they agree on the order. Epoch e
    shuffles with seed + e; each new iteration moves to the next epoch by itself, and
    set_epoch() sets it explicitly.
    """

    def __init__(self, n: int, shuffle: bool, seed: int, rank: int, world_size: int) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        self.epoch += 1
        usable = len(self) * self.world_size
        return iter(order[self.rank : usable : self.world_size])


def val_loader(open_tokens, context_length: int, batch_size: int,
               max_windows: int = 1024) -> DataLoader:
    """Held-out windows in order, side by side (stride = context) while at most `max_windows`
    fit, else `max_windows` spread evenly over the whole split: a large val split is sampled
    across all its documents, not read from its first one. The windows are copied out one by
    one, each through a fresh `open_tokens()` mapping, so the pages the system maps around
    them are let go and memory does not grow with the split."""
    room = len(open_tokens()) - context_length - 1
    stride = max(context_length, room // max(1, max_windows - 1) if room >= 0 else 1)
    windows = [np.array(open_tokens()[s : s + context_length + 1])
               for s in range(0, room + 1, stride)]
    tokens = np.concatenate(windows) if windows else np.zeros(0, dtype=np.int64)
    return create_dataloader(tokens, context_length, batch_size, stride=context_length + 1,
                             shuffle=False, drop_last=False)


# ----------------------------------------------------------------------------------------------
# The datasets and their fixed splits


def seeded_split(rows: list, n_held_out: int, seed: int) -> tuple[list, list]:
    """(kept, held_out): `n_held_out` rows drawn with `seed`; both parts keep the rows' order."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_held_out])
    return ([row for i, row in enumerate(rows) if i not in held_out],
            [row for i, row in enumerate(rows) if i in held_out])


def load_tinyshakespeare(
    data_dir: str | Path | None = None, download: bool = True, verify: bool = True
) -> str:
    """The full TinyShakespeare text (1,115,394 characters)."""
    return read_tinyshakespeare(data_dir, download, verify)


def split_shakespeare(text: str, nanogpt: bool = False) -> dict[str, str]:
    """Split by characters: train first 85 %, val next 5 %, test last 10 % (nanoGPT's val).

    ``nanogpt=True`` trains on the first 90 %, as nanoGPT does, so that losses on the test
    slice compare with nanoGPT's published ones. Val then lies inside the training text and
    says nothing about unseen text; the test slice stays unseen either way. The cut is
    corpus.character_splits', the one every single text gets.
    """
    return {split: text[a:b] for split, (a, b) in character_splits(len(text), nanogpt).items()}


def tinyshakespeare_corpus(data_dir: str | Path | None = None, nanogpt: bool = False) -> Corpus:
    """TinyShakespeare as a corpus for token files: one text, cut as `split_shakespeare` cuts it."""
    return Corpus(paths=[str(tinyshakespeare_file(data_dir))], name="tinyshakespeare",
                  nanogpt=nanogpt)


def load_sst2(
    data_dir: str | Path | None = None,
    val_size: int = 872,
    seed: int = 0,
    download: bool = True,
    verify: bool = True,
) -> dict[str, list[LabelledText]]:
    """SST-2 as (sentence, label) lists: {"train", "val" (seeded from GLUE train), "test"}.

    "test" is the GLUE dev set (872 rows), kept for final evaluation only. "val" is `val_size`
    rows drawn from GLUE train with `seed` (872 by default, as large as the test set); "train"
    is the rest. Both keep the file's order.
    """
    glue_train = read_sst2(SST2_TRAIN, data_dir, download, verify)
    test = read_sst2(SST2_DEV, data_dir, download, verify)
    need(val_size, Range(at_least=0, below=len(glue_train), whole=True),
         f"val_size must be in [0, {len(glue_train)})")
    train, val = seeded_split(glue_train, val_size, seed)
    return {"train": train, "val": val, "test": test}


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
    Lines that are not such records are skipped and counted in a note on stderr.
    """
    records, path = read_instruction_records(data_file, data_dir, download, verify)
    n_test = max(1, round(len(records) * test_fraction)) if test_fraction > 0 else 0
    check_test_split(test_fraction, n_test, len(records), path)
    train, test = seeded_split(records, n_test, seed)
    return {"train": train, "test": test}


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
    optional: if one is missing, the corpus is built from what exists, with one note.
    An `instruction_file` that was named explicitly must exist. `sst2_val_size` and `seed`
    must be the ones the finetuning scripts split with, so their val rows stay out.
    """
    parts = [split_shakespeare(load_tinyshakespeare(data_dir, download, verify))["train"]]
    missing = OptionalSources(data_dir)  # what is missing is said once, in one sentence
    if sst2:
        with missing.allowed("SST-2", "sst2/",
                             "put sst2/train.tsv and sst2/dev.tsv into that folder"):
            splits = load_sst2(data_dir, sst2_val_size, seed, download, verify)
            parts.append("\n".join(sentence for sentence, _ in splits["train"]))
    if instructions:
        with missing.allowed("instruction", DOLLY, f"pass --instruction-file with a "
                             f"Dolly-schema JSONL such as {INSTRUCTIONS_1100}",
                             optional=instruction_file is None):
            train = load_instructions(
                instruction_file, data_dir, seed=seed, download=download, verify=verify
            )["train"]
            parts.append("\n".join(_record_text(r) for r in train))
    missing.report()
    return "\n".join(parts)


def _record_text(record: dict[str, str]) -> str:
    fields = (record["instruction"], record["context"], record["response"])
    return "\n".join(field for field in fields if field)


# ----------------------------------------------------------------------------------------------
# Batches of examples of different lengths (classification, instructions)

# One encoded example: token ids, and what the model should predict from them: a class label
# (classification) or one next-token id per input position (instruction tuning).
Example = tuple[list[int], int | list[int]]

IGNORE_INDEX = -100  # the target value F.cross_entropy skips


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id sequences into ids [B, T_max] plus lengths [B] (both LongTensors).

    The collate hook for classification and instruction data: the lengths tell a classifier
    which position is each sequence's last real token, and a loss which positions to ignore
    (for targets, pad with the loss's ignore_index, e.g. pad_batch(targets, -100)).
    """
    if len(sequences) == 0:
        raise ValueError("pad_batch needs at least one sequence.")
    lengths = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
    if (lengths == 0).any():
        raise ValueError(f"Sequence {int((lengths == 0).nonzero()[0])} is empty; cannot pad it.")
    ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return ids, lengths


def pad_labelled(pad_id: int) -> Callable[[list[Example]], tuple[torch.Tensor, ...]]:
    """Collate (ids, label) examples into (ids [B, T], lengths [B], labels [B]), right-padded."""
    def collate(items: list[Example]) -> tuple[torch.Tensor, ...]:
        ids, lengths = pad_batch([ids for ids, _ in items], pad_id)
        return ids, lengths, torch.tensor([label for _, label in items], dtype=torch.long)
    return collate


def pad_inputs_and_targets(pad_id: int) -> Callable[[list[Example]], tuple[torch.Tensor, ...]]:
    """Collate (inputs, targets) examples into two [B, T] tensors; padded targets are -100.

    The pad id itself never matters: padding sits after every real token, so causal attention
    keeps real positions from seeing it, and its targets carry no loss.
    """
    def collate(batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, _ = pad_batch([inputs for inputs, _ in batch], pad_id)
        targets, _ = pad_batch([targets for _, targets in batch], IGNORE_INDEX)
        return inputs, targets
    return collate


class LengthGroupedBatches(Sampler[list[int]]):
    """Random batches of sentences of similar length, so that little of a batch is padding.

    A batch is padded to its longest sentence. SST-2's training phrases are 21 tokens long on
    average but a random batch of 32 is padded to about 65, so two thirds of the computed
    positions would be padding. Each epoch: shuffle (seed + epoch), sort each window of
    ``window`` batches by length, cut it into batches, and shuffle the batches. Every batch
    is still a random draw, only of neighbours in length (Hugging Face's group_by_length);
    the padded share drops to a few percent, so a CPU step is about 3x faster.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int, window: int = 50,
                 rank: int = 0, world_size: int = 1):
        self.lengths, self.batch_size, self.seed, self.window = lengths, batch_size, seed, window
        self.rank, self.world_size = rank, world_size  # under DDP: every world_size-th batch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths) // self.batch_size // self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        span = self.window * self.batch_size
        grouped = [i for start in range(0, len(order), span)
                   for i in sorted(order[start : start + span], key=self.lengths.__getitem__)]
        batches = [grouped[i * self.batch_size : (i + 1) * self.batch_size]
                   for i in range(len(self.lengths) // self.batch_size)]
        shuffled = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return iter(shuffled[self.rank : len(self) * self.world_size : self.world_size])


def example_loader(examples: Sequence[Example], batch_size: int, collate: Callable, *,
                   shuffle: bool, seed: int = 0, group_by_length: bool = False,
                   rank: int = 0, world_size: int = 1, unit: str = "examples",
                   too_few: str = "use more data") -> DataLoader:
    """Batches of ``examples`` through ``collate``.

    Training (``shuffle``): full batches in a new seeded order each epoch, a pure function of
    (seed, epoch), grouped by length if asked (LengthGroupedBatches); under DDP process
    ``rank`` takes its own share. Evaluation: the given order, every example, the last batch
    short. A training set smaller than one batch is one sentence: "N training ``unit``
    cannot fill one batch of B; ``too_few`` or a smaller --batch-size."
    """
    check_example_loader(len(examples), batch_size, shuffle, unit, too_few)
    if not shuffle:
        return DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if group_by_length:
        batches = LengthGroupedBatches([len(ids) for ids, _ in examples], batch_size, seed,
                                       rank=rank, world_size=world_size)
        return DataLoader(examples, batch_sampler=batches, collate_fn=collate)
    sampler = ShardedSampler(len(examples), shuffle=True, seed=seed, rank=rank,
                             world_size=world_size)
    return DataLoader(examples, batch_size=batch_size, sampler=sampler, drop_last=True,
                      collate_fn=collate)
