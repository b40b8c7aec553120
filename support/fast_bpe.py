"""The fast versions of tokenizer.py's two BPE loops; each gives exactly what the plain one gives.

tokenizer.py teaches byte-pair encoding with the plain loops: `train_merges_plain` recounts every
pair after every merge, and `_bpe` rescans every pair of a piece after every merge. Both are easy
to check by eye and too slow at scale (training on TinyShakespeare: ~100 s recounting, ~1 s
here; encoding a 20,000-letter "word": 7 s rescanning, 0.1 s here). The versions here keep the
same counts in index structures and update only what a merge changes; the chapter runs its
plain loops on small inputs and these beyond (PLAIN_TRAINING_MAX_WORK, LONG_PIECE).
tests/test_tokenizer.py checks both against the plain loops with hypothesis.

Everything works on plain ints and bytes, so nothing here needs the chapter.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable
from itertools import pairwise

Pair = tuple[int, int]
NO_RANK = float("inf")


def train_merges(words: list[list[int]], counts: list[int], num_merges: int,
                 merge: Callable[[list[int], Pair, int], list[int]],
                 verbose: bool = False) -> dict[Pair, int]:
    """Learn up to `num_merges` merges from `words` (byte ids, word w occurring counts[w] times).

    Same rules as tokenizer.train_merges_plain: the most frequent pair wins, ties go to the
    smaller pair, and a pair whose bytes already have an id is never merged. `merge` is the
    chapter's own merge step. Three structures make it fast:

    - `pair_counts` is updated by the net change (`delta`) of each merge instead of recounted;
    - `where` maps each pair to the words that contain it, so a merge visits only those words;
    - a max-heap of (-count, pair) finds the most frequent pair; an entry whose count is no
      longer current is stale and skipped when it comes out (lazy deletion).
    """
    words = list(words)  # its items are replaced by merged copies; the caller's list stays
    pair_counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for w, (ids, count) in enumerate(zip(words, counts, strict=True)):
        for pair in pairwise(ids):
            pair_counts[pair] += count
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    vocab = {i: bytes([i]) for i in range(256)}
    spelled = set(vocab.values())
    merges: dict[Pair, int] = {}
    while len(merges) < num_merges and heap:
        neg_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair) != -neg_count:
            continue  # stale
        token = vocab[pair[0]] + vocab[pair[1]]
        if token in spelled:  # a byte string gets one id
            continue
        new_id = 256 + len(merges)
        merges[pair], vocab[new_id] = new_id, token
        spelled.add(token)
        delta: dict[Pair, int] = defaultdict(int)  # net change of pair counts
        for w in where.pop(pair):  # only the words that contain the pair
            old, count = words[w], counts[w]
            words[w] = new = merge(old, pair, new_id)
            for p in pairwise(old):
                delta[p] -= count
            for p in pairwise(new):
                delta[p] += count
                if new_id in p:
                    where[p].add(w)
        for p, change in delta.items():
            if change:
                pair_counts[p] += change
                if pair_counts[p]:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:
                    del pair_counts[p]
        if verbose:
            print(f"merge {len(merges)}/{num_merges}: {pair} -> {new_id} {token!r} "
                  f"({-neg_count} occurrences)")
    return merges


def bpe_heap(piece: bytes, ranks: dict[bytes, int], max_rank: float = NO_RANK) -> list[bytes]:
    """tokenizer._bpe for long pieces: the same tokens, O(n log n) instead of O(n^2).

    Candidate pairs wait in a heap keyed (rank, position), so the lowest rank and then the
    leftmost comes out first, as in _bpe. A merge leaves stale entries behind; each is
    recognised when it comes out (its position no longer starts a pair of that rank) and
    skipped. Parts live in a linked list: merged-away ones become None.
    """
    rank = ranks.get
    parts: list[bytes | None] = [piece[i:i + 1] for i in range(len(piece))]
    end = len(parts)
    next_of, prev_of = list(range(1, end + 1)), list(range(-1, end - 1))  # end / -1: none
    heap: list[tuple[int, int]] = []

    def push(i: int) -> None:  # the pair starting at part i, if it spells a token
        if i >= 0 and next_of[i] < end:
            r = rank(parts[i] + parts[next_of[i]], NO_RANK)
            if r < max_rank:
                heapq.heappush(heap, (r, i))

    for i in range(end - 1):
        push(i)
    while heap:
        r, i = heapq.heappop(heap)
        j = next_of[i] if parts[i] is not None else end
        if j == end or rank(parts[i] + parts[j], NO_RANK) != r:
            continue  # stale
        parts[i], parts[j] = parts[i] + parts[j], None
        next_of[i] = next_of[j]
        if next_of[i] < end:
            prev_of[next_of[i]] = i
        push(prev_of[i])
        push(i)
    return [part for part in parts if part is not None]
