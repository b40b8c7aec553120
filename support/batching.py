"""Batches of variable-length examples: padding, seeded and sharded sampling, length grouping.

The finetuning chapters encode their data into ``Example``s (token ids plus a target) and hand
them to ``example_loader``; this module turns them into the padded batches ``train_model``
eats. Nothing here is specific to a task: the collate functions say what a batch looks like.

- ``pad_batch``             right-pad id sequences, and say how long each really is.
- ``pad_labelled``          (ids, class label) examples -> (ids, lengths, labels).
- ``pad_inputs_and_targets``  (inputs, targets) examples -> (inputs, targets), padded targets
                            ignored by the loss.
- ``ShardedSampler``        a seeded shuffle per epoch, one disjoint share per DDP process.
- ``LengthGroupedBatches``  random batches of similar-length examples: little padding.
- ``permuted``              a seeded shuffle of range(n), computed entry by entry (pretraining
                            windows: support for data_utils.WindowBatches).
- ``example_loader``        the DataLoader for training (shuffled, sharded, full batches) or
                            evaluation (in order, every example).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

# One encoded example: token ids, and what the model should predict from them: a class label
# (classification) or one next-token id per input position (instruction tuning).
Example = tuple[list[int], int | list[int]]
LabelledText = tuple[str, int]  # a sentence and its class, before encoding (SST-2's rows)

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
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}.")
    if not shuffle:
        return DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if len(examples) < batch_size:
        raise ValueError(f"{len(examples)} training {unit} cannot fill one batch of "
                         f"{batch_size}; {too_few} or a smaller --batch-size.")
    if group_by_length:
        batches = LengthGroupedBatches([len(ids) for ids, _ in examples], batch_size, seed,
                                       rank=rank, world_size=world_size)
        return DataLoader(examples, batch_sampler=batches, collate_fn=collate)
    sampler = ShardedSampler(len(examples), shuffle=True, seed=seed, rank=rank,
                             world_size=world_size)
    return DataLoader(examples, batch_size=batch_size, sampler=sampler, drop_last=True,
                      collate_fn=collate)


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
