"""Byte-level byte-pair-encoding (BPE) tokenizer, written from scratch.

A language model reads integers, not text. Byte-level BPE (GPT-2, GPT-4) turns any string into
integers in two steps:

1. The text becomes UTF-8 bytes, so ids 0-255 are the 256 possible bytes. Every string (emoji,
   Chinese, even a lone surrogate, via "surrogatepass") is a byte sequence, so there is no
   out-of-vocabulary token and decode(encode(s)) == s always holds.
2. Training repeatedly finds the most frequent adjacent pair of tokens in the corpus and gives the
   byte string it spells a new id (256, 257, ... in the order learned). Frequent words end up as
   one token, rare ones as a few pieces, and sequences get several times shorter than bytes.

Before counting, the text is split into chunks with GPT-4's (cl100k) regex: letters, up to three
digits, punctuation and whitespace go to separate chunks, and merges never cross chunk borders.
Without the split, BPE would spend its vocabulary on "dog." "dog!" "dog?" and ", the" instead of
reusable pieces; with it, " dog" is learned once.

Encoding follows tiktoken's rule exactly: inside each chunk, start from single bytes and keep
merging the adjacent pair whose concatenated bytes has the lowest rank (= id) in the vocabulary.
So the vocabulary is fully described by its rank table `bytes -> id` (`mergeable_ranks()`), and a
published tiktoken rank table such as GPT-4's cl100k_base runs through the same code.
Special tokens like <|endoftext|> get ids after the merges; user text only becomes a special id
when `encode` is told to allow it, so text can never inject a control token.

Read it in order: `get_stats`, `merge` and `train_merges_plain` are the whole training idea
(count the pairs, merge the most frequent, repeat), and `BPETokenizer.train` runs them on small
inputs. On larger ones it runs the named optimisation that follows them, `train_merges`: the
same merges (the tests check), with the counts updated instead of recounted (about 1 s instead
of 100 s on TinyShakespeare). `_bpe` is the whole encoding idea; `bpe_heap`, its optimisation
for long pieces, finds the same tokens with a heap. The file format is `to_dict` /
`_read_format`; the limits a file from elsewhere must keep are in support/file_checks.py.
"""

import codecs
import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import regex

from support.checks import check_encode_args, check_token_id, check_training_args
from support.file_checks import check_merges, check_rank_table, check_tokenizer_dict, tokenizer_file
from support.files import atomic_write

GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
GPT2_SPLIT_PATTERN = (  # GPT-2's regex (ByteLevel's built-in one in the tokenizers library)
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# The split patterns a tokenizer file may name. A file's pattern is compiled and run on every
# text, and a badly nested one can backtrack for hours, so only these exact strings load.
SPLIT_PATTERNS = {"GPT-4's": GPT4_SPLIT_PATTERN, "GPT-2's": GPT2_SPLIT_PATTERN, "none": ""}
ENDOFTEXT = "<|endoftext|>"
CACHE_SIZE = 100_000  # chunk -> ids entries kept; real text repeats " the", "\n" and co. endlessly
NO_RANK = float("inf")
LONG_PIECE = 64  # bytes; above this, _bpe's rescan of every pair per merge costs more than a heap
# Up to this many (merges x bytes of distinct chunks), `train` runs the plain trainer: at most
# ~30 ms (benchmarks/bench_tokenizer.py --trainers-only). Beyond it, the plain loop's recounting
# grows to 100 s on TinyShakespeare, while `train_merges` takes about 1 s.
PLAIN_TRAINING_MAX_WORK = 100_000
FORMAT_VERSION = 1  # of the tokenizer dict / file: to_dict writes it, _read_format reads it
Pair = tuple[int, int]


# ------------------------------------------------------------------ training: the plain idea
def get_stats(words: list[list[int]], counts: list[int]) -> Counter[Pair]:
    """How often each adjacent pair of ids occurs; word w stands for counts[w] occurrences."""
    stats: Counter[Pair] = Counter()
    for ids, count in zip(words, counts, strict=True):
        for pair in pairwise(ids):
            stats[pair] += count
    return stats


def merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` (left to right) with `new_id`."""
    out, i, n = [], 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_merges_plain(words: list[list[int]], counts: list[int], num_merges: int,
                       verbose: bool = False) -> dict[Pair, int]:
    """Textbook BPE: count all pairs, merge the most frequent into a new id, repeat.

    Ties in frequency go to the smaller pair, so training is reproducible. A pair whose bytes
    already have an id is passed over, because the rank table (bytes -> id) holds one id per
    byte string. (When every merge is applied everywhere, as here, that never happens in
    practice, but a tiktoken rank table relies on it.)
    """
    vocab = {i: bytes([i]) for i in range(256)}  # id -> the bytes it stands for
    merges: dict[Pair, int] = {}
    while len(merges) < num_merges:
        stats = get_stats(words, counts)
        known = set(vocab.values())
        new = [p for p in stats if vocab[p[0]] + vocab[p[1]] not in known]
        if not new:
            break
        pair = min(new, key=lambda p: (-stats[p], p))  # the most frequent; ties: smaller pair
        new_id = 256 + len(merges)
        merges[pair], vocab[new_id] = new_id, vocab[pair[0]] + vocab[pair[1]]
        words = [merge(ids, pair, new_id) for ids in words]
        if verbose:
            print(f"merge {len(merges)}/{num_merges}: {pair} -> {new_id} {vocab[new_id]!r} "
                  f"({stats[pair]} occurrences)")
    return merges


# ------------------------------------------------------------------ encoding: the plain idea
def _bpe(piece: bytes, ranks: dict[bytes, int], max_rank: float = NO_RANK) -> list[bytes]:
    """Split `piece` into tokens: merge the lowest-ranked adjacent pair (leftmost on ties) until
    no adjacent pair spells a token ranked below `max_rank`."""
    if len(piece) > LONG_PIECE:  # the same tokens, with a heap instead of rescans
        return bpe_heap(piece, ranks, max_rank)
    rank = ranks.get
    parts = [piece[i:i + 1] for i in range(len(piece))]
    pair_ranks = [rank(a + b, NO_RANK) for a, b in pairwise(parts)]
    while pair_ranks:
        best = min(pair_ranks)
        if best >= max_rank:
            break
        i = pair_ranks.index(best)
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
        del pair_ranks[i]  # only the two pairs around the merged token change
        if i > 0:
            pair_ranks[i - 1] = rank(parts[i - 1] + parts[i], NO_RANK)
        if i < len(pair_ranks):
            pair_ranks[i] = rank(parts[i] + parts[i + 1], NO_RANK)
    return parts


# ------------------------------------------------------------------ the named optimisation
# The plain loops above are easy to check by eye and too slow at scale: training on
# TinyShakespeare recounts every pair after every merge (~100 s; ~1 s below), and encoding a
# 20,000-letter "word" rescans every pair after every merge (7 s; 0.1 s below). The versions
# below keep the same counts in index structures and update only what a merge changes; `train`
# and `_bpe` run them beyond PLAIN_TRAINING_MAX_WORK and LONG_PIECE. They give exactly what
# the plain loops give: tests/test_tokenizer.py checks it with hypothesis.
def train_merges(words: list[list[int]], counts: list[int], num_merges: int,
                 verbose: bool = False) -> dict[Pair, int]:
    """Learn up to `num_merges` merges from `words` (byte ids, word w occurring counts[w] times).

    Same rules as `train_merges_plain`: the most frequent pair wins, ties go to the smaller
    pair, and a pair whose bytes already have an id is never merged; each word is merged by
    the same `merge`. Three structures make it fast:

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
    """`_bpe` for long pieces: the same tokens, O(n log n) instead of O(n^2).

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


def _surrogatepass_or_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decode UTF-8-encoded lone surrogates back to themselves, other invalid bytes to U+FFFD."""
    try:
        return codecs.lookup_error("surrogatepass")(err)
    except UnicodeDecodeError:
        return "\ufffd", err.end


codecs.register_error("bpe-surrogatepass-replace", _surrogatepass_or_replace)


class BPETokenizer:
    """Byte-level BPE with a regex pre-split; `pattern=""` means no split (text = one chunk)."""

    def __init__(self, pattern: str = GPT4_SPLIT_PATTERN) -> None:
        self.pattern = pattern
        self._regex = regex.compile(pattern) if pattern else None
        self.special_tokens: dict[str, int] = {}
        self._set_merges({})

    def _set_merges(self, merges: dict[Pair, int], byte_order: list[int] | None = None) -> None:
        """Build the vocabulary (id -> bytes) and rank table (bytes -> id) from the merges."""
        check_merges(merges)  # before any token is spelled: a hostile file could spell gigabytes
        self.merges = merges
        self._byte_order = byte_order or list(range(256))  # id of each single byte: a permutation
        self._vocab = {i: bytes([b]) for i, b in enumerate(self._byte_order)}
        for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
            self._vocab[new_id] = self._vocab[a] + self._vocab[b]
        self._ranks = {token: i for i, token in self._vocab.items()}
        if len(self._ranks) != len(self._vocab):
            raise ValueError("two merges spell the same bytes; each byte string needs one id")
        self._cache: dict[str, list[int]] = {}

    # ---------------------------------------------------------------- training
    def train(self, text: str, vocab_size: int, special_tokens: Iterable[str] = (ENDOFTEXT,),
              verbose: bool = False) -> None:
        """Learn vocab_size - 256 - len(special_tokens) merges from `text` (fewer if it runs out
        of pairs). Ties in pair frequency go to the smaller pair, so training is reproducible."""
        specials = check_training_args(text, vocab_size, special_tokens)
        # Count each distinct chunk once; the corpus is then a few thousand weighted words.
        chunk_counts = Counter(self._split(text))
        words = [list(chunk.encode("utf-8", "surrogatepass")) for chunk in chunk_counts]
        counts, num_merges = list(chunk_counts.values()), vocab_size - 256 - len(specials)
        if num_merges * sum(map(len, words)) <= PLAIN_TRAINING_MAX_WORK:
            merges = train_merges_plain(words, counts, num_merges, verbose)
        else:  # the optimisation: the very same merges, without recounting every pair
            merges = train_merges(words, counts, num_merges, verbose)
        self._set_merges(merges)
        self.special_tokens = {s: 256 + len(merges) + i for i, s in enumerate(specials)}

    # ---------------------------------------------------------------- encode / decode
    def _split(self, text: str) -> list[str]:
        if self._regex is None:
            return [text] if text else []
        return self._regex.findall(text)

    def _encode_chunk(self, chunk: str) -> list[int]:
        piece = chunk.encode("utf-8", "surrogatepass")
        if piece in self._ranks:  # the whole chunk is one token (tiktoken checks this first too)
            ids = [self._ranks[piece]]
        else:
            ids = [self._ranks[part] for part in _bpe(piece, self._ranks)]
        if len(self._cache) >= CACHE_SIZE:
            self._cache.clear()
        self._cache[chunk] = ids
        return ids

    def encode(self, text: str, allowed_special: str | set[str] = "none") -> list[int]:
        """Text -> ids. Special-token text becomes its id only if allowed ("all", one name or a
        set of names); by default ("none") it is encoded as ordinary bytes like any other text."""
        if allowed_special == "none":
            allowed = set()
        elif allowed_special == "all":
            allowed = set(self.special_tokens)
        elif isinstance(allowed_special, str):  # one name: set() would split it into characters
            allowed = {allowed_special}
        else:
            allowed = set(allowed_special)
        check_encode_args(text, allowed, self.special_tokens)  # a str; names this one knows
        segments = [text]
        if allowed:  # a capturing split keeps the specials at the odd positions
            longest_first = sorted(allowed, key=len, reverse=True)
            segments = regex.split("(" + "|".join(map(regex.escape, longest_first)) + ")", text)
        ids = []
        for i, segment in enumerate(segments):
            if i % 2:
                ids.append(self.special_tokens[segment])
            else:
                for chunk in self._split(segment):
                    ids.extend(self._cache.get(chunk) or self._encode_chunk(chunk))
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token; a special token's bytes are its UTF-8 text."""
        token_id = check_token_id(token_id, self._vocab, self.special_tokens)
        if token_id in self._vocab:
            return self._vocab[token_id]
        return next(name for name, i in self.special_tokens.items() if i == token_id).encode()

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Lone surrogates survive the round trip; bytes that are not valid UTF-8
        (e.g. half a character from a cut-off sequence) become U+FFFD."""
        data = b"".join(map(self.token_bytes, ids))
        return data.decode("utf-8", errors="bpe-surrogatepass-replace")

    # ---------------------------------------------------------------- vocabulary facts
    @property
    def vocab_size(self) -> int:
        """Number of ids the model's embedding needs: largest id + 1 (256 + merges + specials)."""
        return max([len(self._vocab) - 1, *self.special_tokens.values()]) + 1  # ids have no gaps

    @property
    def eot_id(self) -> int:
        if ENDOFTEXT not in self.special_tokens:
            raise ValueError(f"this tokenizer has no {ENDOFTEXT} special token.")
        return self.special_tokens[ENDOFTEXT]

    def mergeable_ranks(self) -> dict[bytes, int]:
        """tiktoken's view of the vocabulary: bytes of every non-special token -> its id."""
        return dict(self._ranks)

    def __repr__(self) -> str:
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_tokens})")

    # ---------------------------------------------------------------- serialization
    def to_dict(self) -> dict:
        """Plain Python types only (fits in a JSON file or a torch checkpoint)."""
        d = {"version": FORMAT_VERSION, "pattern": self.pattern,
             "special_tokens": dict(self.special_tokens),
             "merges": [list(pair) for pair in sorted(self.merges, key=self.merges.get)]}
        if self._byte_order != list(range(256)):  # e.g. cl100k lists the bytes in another order
            d["byte_order"] = list(self._byte_order)
        return d

    @staticmethod
    def _read_format(d: dict) -> tuple[str, dict[Pair, int], list[int] | None, dict[str, int]]:
        """to_dict's layout read back: the i-th merge listed gets id 256 + i."""
        merges = {(int(a), int(b)): 256 + i for i, (a, b) in enumerate(d["merges"])}
        special_tokens = {str(s): i for s, i in d["special_tokens"].items()}
        return d["pattern"], merges, d.get("byte_order"), special_tokens

    @classmethod
    def from_dict(cls, d: dict, patterns: dict[str, str] = SPLIT_PATTERNS) -> "BPETokenizer":
        """The inverse of to_dict; a dict from elsewhere is checked as it is read (one
        ValueError), its split pattern one of ``patterns`` (see SPLIT_PATTERNS)."""
        pattern, merges, byte_order, special_tokens = check_tokenizer_dict(
            d, FORMAT_VERSION, patterns, cls._read_format)
        tok = cls(pattern)
        tok._set_merges(merges, byte_order)
        tok.special_tokens = special_tokens
        return tok

    def save(self, path: str | Path) -> None:
        """Small, human-readable JSON: one merge [left_id, right_id] per line, ids 256, 257, ..."""
        d = self.to_dict()
        merges = d.pop("merges")
        head = json.dumps(d, indent=1, ensure_ascii=False)[:-2]  # drop the closing "\n}"
        body = ",\n".join(f"  [{a}, {b}]" for a, b in merges)
        # whole or not at all: a crash mid-write leaves the old file, never half of one
        atomic_write(path, f'{head},\n "merges": [\n{body}\n ]\n}}\n')

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        """Read a file written by save(); any problem is one ValueError naming the file."""
        with tokenizer_file(path) as d:
            return cls.from_dict(d)

    @classmethod
    def from_tiktoken_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str,
                            special_tokens: dict[str, int] | None = None) -> "BPETokenizer":
        """Adopt a published tiktoken vocabulary (e.g. cl100k_base). The rank table alone defines
        encoding; the merges (which two tokens each token was made from) are recovered by running
        BPE on each token's bytes with only the lower ranks allowed."""
        by_rank = sorted(mergeable_ranks, key=mergeable_ranks.get)
        parts = {token: _bpe(token, mergeable_ranks, max_rank=rank)
                 for rank, token in enumerate(by_rank[256:], start=256)}
        check_rank_table(mergeable_ranks, by_rank, parts)  # bytes first, then merges of two
        merges = [[mergeable_ranks[part] for part in two] for two in parts.values()]
        return cls.from_dict({"version": FORMAT_VERSION, "pattern": pattern, "merges": merges,
                              "byte_order": [token[0] for token in by_rank[:256]],
                              "special_tokens": dict(special_tokens or {})},
                             patterns={"the caller's": pattern})  # not from a file
