"""support/batching.py: length-grouped batches, sharding between DDP processes, the loader."""

import pytest
import torch

from support.batching import (
    LengthGroupedBatches,
    example_loader,
    pad_inputs_and_targets,
    pad_labelled,
)


def test_length_grouped_batches_are_random_full_and_nearly_unpadded():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 80, (1000,), generator=g).tolist()
    sampler = LengthGroupedBatches(lengths, batch_size=10, seed=0, window=20)
    first, second = list(sampler), list(sampler)  # two epochs
    assert len(first) == len(sampler) == 100 and all(len(b) == 10 for b in first)
    assert sorted(i for b in first for i in b) == list(range(1000))
    assert first != second  # a new shuffle each epoch ...
    sampler.set_epoch(0)
    assert list(sampler) == first  # ... that is a function of (seed, epoch)

    def real_share(batches):
        return sum(lengths[i] for b in batches for i in b) / sum(
            max(lengths[i] for i in b) * len(b) for b in batches)

    random_batches = torch.randperm(1000, generator=g).view(100, 10).tolist()
    assert real_share(random_batches) < 0.7 < 0.9 < real_share(first)


def test_ddp_ranks_split_the_batches_between_them():
    lengths = torch.randint(1, 80, (1000,), generator=torch.Generator().manual_seed(1)).tolist()
    single = list(LengthGroupedBatches(lengths, batch_size=10, seed=0))
    ranks = [LengthGroupedBatches(lengths, batch_size=10, seed=0, rank=r, world_size=2)
             for r in (0, 1)]
    assert [len(r) for r in ranks] == [50, 50]
    first, second = (list(r) for r in ranks)
    # Rank r takes batches r, r + 2, ... of what one process would draw: together they see
    # every batch once, in the same epoch, and no sentence twice.
    assert first == single[0::2] and second == single[1::2]




def test_the_two_collates_pad_right_and_ignore_padded_targets():
    ids, lengths, labels = pad_labelled(0)([([5, 6, 7], 1), ([8], 0)])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    assert labels.tolist() == [1, 0]
    inputs, targets = pad_inputs_and_targets(9)([([1, 2], [-100, 3]), ([4], [5])])
    assert inputs.tolist() == [[1, 2], [4, 9]] and targets.tolist() == [[-100, 3], [5, -100]]


def test_example_loader_trains_on_full_shuffled_batches_and_evaluates_every_example():
    examples = [([i] * (1 + i % 4), i % 2) for i in range(10)]
    train = example_loader(examples, 4, pad_labelled(0), shuffle=True, seed=1)
    assert len(train) == 2 and all(len(labels) == 4 for _, _, labels in train)
    evaluation = example_loader(examples, 4, pad_labelled(0), shuffle=False)
    assert [ids[0, 0].item() for ids, _, _ in evaluation] == [0, 4, 8]  # in order, 4 + 4 + 2
    with pytest.raises(ValueError, match=r"^3 training sentences cannot fill one batch of 4; "
                       r"use a larger --train-size or a smaller --batch-size\.$"):
        example_loader(examples[:3], 4, pad_labelled(0), shuffle=True, unit="sentences",
                       too_few="use a larger --train-size")
