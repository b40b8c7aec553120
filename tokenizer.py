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
"""

import codecs
import heapq
import json
import operator
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

import regex

GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
ENDOFTEXT = "<|endoftext|>"
FORMAT_VERSION = 1
MAX_MERGES = 1_000_000  # cl100k has 100k merges; a file with more is hostile or broken
MAX_TOKEN_BYTES = 1024  # a chain of merges could otherwise spell gigabyte-long "tokens"
CACHE_SIZE = 100_000  # chunk -> ids entries kept; real text repeats " the", "\n" and co. endlessly
NO_RANK = float("inf")
LONG_PIECE = 64  # bytes; above this, _bpe's rescan of every pair per merge costs more than a heap


def _surrogatepass_or_replace(err: UnicodeDecodeError) -> tuple[str, int]:
    """Decode UTF-8-encoded lone surrogates back to themselves, other invalid bytes to U+FFFD."""
    try:
        return codecs.lookup_error("surrogatepass")(err)
    except UnicodeDecodeError:
        return "\ufffd", err.end


codecs.register_error("bpe-surrogatepass-replace", _surrogatepass_or_replace)


def _bpe(piece: bytes, ranks: dict[bytes, int], max_rank: float = NO_RANK) -> list[bytes]:
    """Split `piece` into tokens: merge the lowest-ranked adjacent pair (leftmost on ties) until
    no adjacent pair spells a token ranked below `max_rank`."""
    if len(piece) > LONG_PIECE:
        return _bpe_heap(piece, ranks, max_rank)
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


def _bpe_heap(piece: bytes, ranks: dict[bytes, int], max_rank: float = NO_RANK) -> list[bytes]:
    """_bpe for long pieces (a 20,000-letter "word" takes 0.1 s here, 7 s with the rescan).

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


def _merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
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


class BPETokenizer:
    """Byte-level BPE with a regex pre-split; `pattern=""` means no split (text = one chunk)."""

    def __init__(self, pattern: str = GPT4_SPLIT_PATTERN) -> None:
        self.pattern = pattern
        self._regex = regex.compile(pattern) if pattern else None
        self.special_tokens: dict[str, int] = {}
        self._set_merges({})

    def _set_merges(self, merges: dict[tuple[int, int], int], byte_order: list[int] | None = None):
        """Build the vocabulary (id -> bytes) and rank table (bytes -> id) from the merges."""
        self.merges = merges
        self._byte_order = byte_order or list(range(256))  # id of each single byte: a permutation
        self._vocab = {i: bytes([b]) for i, b in enumerate(self._byte_order)}
        for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
            if len(self._vocab[a]) + len(self._vocab[b]) > MAX_TOKEN_BYTES:
                raise ValueError(f"merge {new_id} would spell a token longer than "
                                 f"{MAX_TOKEN_BYTES} bytes")
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
        if not isinstance(text, str):
            raise ValueError(f"train() needs the corpus as a str, got {type(text).__name__}.")
        if not text:
            raise ValueError("train() got an empty corpus; there is nothing to learn merges from.")
        specials = list(special_tokens)
        if len(set(specials)) != len(specials) or not all(s and isinstance(s, str)
                                                          for s in specials):
            raise ValueError(f"special tokens must be distinct non-empty strings, got {specials}.")
        if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size must be an int >= 256 bytes + {len(specials)} special "
                             f"tokens = {256 + len(specials)}, got {vocab_size!r}.")

        # Count each distinct chunk once; the corpus is then a few thousand weighted words.
        chunk_counts = Counter(self._split(text))
        words = [list(chunk.encode("utf-8", "surrogatepass")) for chunk in chunk_counts]
        counts = list(chunk_counts.values())
        pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words containing it
        for w, (ids, count) in enumerate(zip(words, counts, strict=True)):
            for pair in pairwise(ids):
                pair_counts[pair] += count
                where[pair].add(w)
        # Max-heap of (-count, pair) with lazy deletion: entries whose count is stale are skipped.
        heap = [(-count, pair) for pair, count in pair_counts.items()]
        heapq.heapify(heap)

        self._set_merges({})
        vocab, ranks, merges = self._vocab, self._ranks, {}
        num_merges = vocab_size - 256 - len(specials)
        while len(merges) < num_merges and heap:
            neg_count, pair = heapq.heappop(heap)
            if pair_counts.get(pair) != -neg_count:
                continue
            token = vocab[pair[0]] + vocab[pair[1]]
            if token in ranks:  # a byte string gets one id. Cannot happen when every merge is
                continue        # applied everywhere, as here, but tiktoken's rank table needs it
            new_id = 256 + len(merges)
            merges[pair], vocab[new_id], ranks[token] = new_id, token, new_id
            delta: dict[tuple[int, int], int] = defaultdict(int)  # net change of pair counts
            for w in where.pop(pair):  # only the words that contain the pair
                old, count = words[w], counts[w]
                words[w] = new = _merge(old, pair, new_id)
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
        if not isinstance(text, str):
            raise ValueError(f"encode() needs a str, got {type(text).__name__}.")
        if allowed_special == "none":
            allowed = set()
        elif allowed_special == "all":
            allowed = set(self.special_tokens)
        elif isinstance(allowed_special, str):  # one name: set() would split it into characters
            allowed = {allowed_special}
        else:
            allowed = set(allowed_special)
        if unknown := allowed - set(self.special_tokens):
            raise ValueError(f"unknown special tokens {sorted(unknown)}; this tokenizer has "
                             f"{sorted(self.special_tokens)}.")
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
        try:  # a 0-d tensor hashes by identity, so `in self._vocab` needs its int value
            token_id = operator.index(token_id)
        except TypeError:
            raise ValueError(f"token ids must be integers, got {token_id!r}.") from None
        if token_id in self._vocab:
            return self._vocab[token_id]
        for name, special_id in self.special_tokens.items():
            if special_id == token_id:
                return name.encode("utf-8")
        raise ValueError(f"unknown token id {token_id!r}: this tokenizer's ids are 0.."
                         f"{self.vocab_size - 1}.")

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

    @classmethod
    def from_dict(cls, d: dict) -> "BPETokenizer":
        if not isinstance(d, dict) or d.get("version") != FORMAT_VERSION:
            raise ValueError(f"not a version-{FORMAT_VERSION} tokenizer dict.")
        try:
            tok = cls(d["pattern"])
            if len(d["merges"]) > MAX_MERGES:
                raise ValueError(f"{len(d['merges']):,} merges is more than the {MAX_MERGES:,} "
                                 "this loader accepts")
            merges = {(int(a), int(b)): 256 + i for i, (a, b) in enumerate(d["merges"])}
            if any(a >= new_id or b >= new_id for (a, b), new_id in merges.items()):
                raise ValueError("a merge refers to a token that does not exist yet")
            byte_order = d.get("byte_order")
            if byte_order is not None and sorted(byte_order) != list(range(256)):
                raise ValueError("byte_order must be a permutation of 0..255")
            tok._set_merges(merges, byte_order)
            tok.special_tokens = {str(s): i for s, i in d["special_tokens"].items()}
        except (KeyError, TypeError, AttributeError, regex.error) as e:
            raise ValueError(f"malformed tokenizer dict ({type(e).__name__}: {e}).") from None
        ids, first = list(tok.special_tokens.values()), len(tok._vocab)  # 256 bytes + merges
        if not all(type(i) is int and i >= first for i in ids) or len(set(ids)) != len(ids):
            raise ValueError(f"special token ids must be distinct ints >= {first}, so that they "
                             "do not collide with the bytes and merges.")
        return tok

    def save(self, path: str | Path) -> None:
        """Small, human-readable JSON: one merge [left_id, right_id] per line, ids 256, 257, ..."""
        d = self.to_dict()
        merges = d.pop("merges")
        head = json.dumps(d, indent=1, ensure_ascii=False)[:-2]  # drop the closing "\n}"
        body = ",\n".join(f"  [{a}, {b}]" for a, b in merges)
        Path(path).write_text(f'{head},\n "merges": [\n{body}\n ]\n}}\n', encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist.")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"tokenizer file {path} is not a valid tokenizer: {e}") from None

    @classmethod
    def from_tiktoken_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str,
                            special_tokens: dict[str, int] | None = None) -> "BPETokenizer":
        """Adopt a published tiktoken vocabulary (e.g. cl100k_base). The rank table alone defines
        encoding; the merges (which two tokens each token was made from) are recovered by running
        BPE on each token's bytes with only the lower ranks allowed."""
        by_rank = sorted(mergeable_ranks, key=mergeable_ranks.get)
        if ([mergeable_ranks[t] for t in by_rank] != list(range(len(by_rank)))
                or sorted(by_rank[:256]) != [bytes([b]) for b in range(256)]):
            raise ValueError("rank table must hold the 256 single bytes at ranks 0-255 and the "
                             "merged tokens at the ranks after them, without gaps.")
        merges = []
        for rank, token in enumerate(by_rank[256:], start=256):
            parts = _bpe(token, mergeable_ranks, max_rank=rank)
            if len(parts) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two "
                                 f"lower-ranked tokens, so this is not a BPE rank table.")
            merges.append([mergeable_ranks[part] for part in parts])
        return cls.from_dict({"version": FORMAT_VERSION, "pattern": pattern, "merges": merges,
                              "byte_order": [token[0] for token in by_rank[:256]],
                              "special_tokens": dict(special_tokens or {})})
