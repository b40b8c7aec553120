"""Checks for tokenizer.py's inputs: training arguments, encode/decode arguments, and tokenizer
dicts and files, which may come from anywhere (a download, a checkpoint, a hand edit). The
format itself (what a tokenizer dict holds, and which special tokens `encode` allows) is
tokenizer.py's; these checks only refuse what breaks it.

Each check raises ValueError (FileNotFoundError for a missing file) with one sentence, or
returns the cleaned value, so the chapter's functions read as the idea with one call at the top.
The limits MAX_MERGES, MAX_TOKEN_BYTES and MAX_VOCAB_BYTES bound what a hostile file can
make us build.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

MAX_MERGES = 1_000_000  # cl100k has 100k merges; a file with more is hostile or broken
MAX_TOKEN_BYTES = 1024  # a chain of merges could otherwise spell gigabyte-long "tokens"
MAX_VOCAB_BYTES = 64 << 20  # all tokens' bytes together; cl100k's take 0.7 MB, o200k's 1.4 MB

Pair = tuple[int, int]


def check_training_args(text: object, vocab_size: object, special_tokens: Iterable[str]
                        ) -> list[str]:
    """The special tokens as a list, once the corpus and vocabulary size are usable."""
    if not isinstance(text, str):
        raise ValueError(f"train() needs the corpus as a str, got {type(text).__name__}.")
    if not text:
        raise ValueError("train() got an empty corpus; there is nothing to learn merges from.")
    specials = list(special_tokens)
    if len(set(specials)) != len(specials) or not all(s and isinstance(s, str) for s in specials):
        raise ValueError(f"special tokens must be distinct non-empty strings, got {specials}.")
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be an int >= 256 bytes + {len(specials)} special "
                         f"tokens = {256 + len(specials)}, got {vocab_size!r}.")
    return specials


def check_encode_args(text: object, allowed: set[str], special_tokens: dict[str, int]) -> None:
    """`encode` got a str, and the special tokens it may produce are ones this tokenizer has."""
    if not isinstance(text, str):
        raise ValueError(f"encode() needs a str, got {type(text).__name__}.")
    if unknown := allowed - set(special_tokens):
        raise ValueError(f"unknown special tokens {sorted(unknown)}; this tokenizer has "
                         f"{sorted(special_tokens)}.")


def check_token_id(token_id: object, vocab: dict[int, bytes], special_tokens: dict[str, int]
                   ) -> int:
    """`token_id` as an int that names a token (a regular one or a special one)."""
    try:  # a 0-d tensor hashes by identity, so `in vocab` needs its int value
        token_id = operator.index(token_id)
    except TypeError:
        raise ValueError(f"token ids must be integers, got {token_id!r}.") from None
    if token_id not in vocab and token_id not in special_tokens.values():
        size = max([len(vocab) - 1, *special_tokens.values()]) + 1
        raise ValueError(f"unknown token id {token_id!r}: this tokenizer's ids are 0.."
                         f"{size - 1}.")
    return token_id


def check_merges(merges: dict[Pair, int]) -> None:
    """Refuse merges that would spell a token longer than MAX_TOKEN_BYTES, or tokens of more
    than MAX_VOCAB_BYTES together, before any is spelled.

    The lengths add up like the bytes do (a merged token is its two parts side by side), so
    they are known without building a single token.
    """
    length = dict.fromkeys(range(256), 1)
    total = 256
    for (a, b), new_id in sorted(merges.items(), key=lambda item: item[1]):
        length[new_id] = length[a] + length[b]
        total += length[new_id]
        if length[new_id] > MAX_TOKEN_BYTES:
            raise ValueError(f"merge {new_id} would spell a token longer than "
                             f"{MAX_TOKEN_BYTES} bytes")
        if total > MAX_VOCAB_BYTES:  # a thousand long tokens pair up into a million longer ones
            raise ValueError(f"the merges up to {new_id} would spell more than "
                             f"{MAX_VOCAB_BYTES >> 20} MiB of tokens")


def check_split_pattern(pattern: object, known: Mapping[str, str]) -> None:
    """A split pattern read from a file must be one of the ``known`` ones, by exact string.

    A regex is a program: a pattern with nested quantifiers can backtrack for hours on a line
    of ordinary text, and no check of the pattern itself can rule that out. The known ones
    (name -> pattern) use possessive quantifiers that never backtrack."""
    if pattern not in known.values():
        raise ValueError(f"its split pattern {pattern!r:.60} is not one this loader runs "
                         f"({', '.join(known)}): a regex from a file could run for hours on "
                         "ordinary text, so only these are accepted.")


Entries = tuple[str, dict[Pair, int], list[int] | None, dict[str, int]]


def check_tokenizer_dict(d: object, version: int, patterns: Mapping[str, str],
                         read: Callable[[dict], Entries]) -> Entries:
    """``read(d)`` (pattern, merges, byte_order, special_tokens) once ``d`` is safe to use.

    Checked: ``d`` is a dict of ``version``, its pattern is one of ``patterns`` (name ->
    regex), at most MAX_MERGES merges, each a pair of ids that exist before it (and no pair
    twice), byte_order a permutation of the 256 bytes, and special ids that are distinct ints
    after the regular tokens. A missing or wrongly typed entry is one ValueError too.
    """
    if not isinstance(d, dict) or d.get("version") != version:
        raise ValueError(f"the tokenizer is missing or is not a version-{version} "
                         "tokenizer dict.")
    try:
        check_split_pattern(d["pattern"], patterns)
        if len(d["merges"]) > MAX_MERGES:
            raise ValueError(f"{len(d['merges']):,} merges is more than the {MAX_MERGES:,} "
                             "this loader accepts")
        pattern, merges, byte_order, special_tokens = read(d)
        if len(merges) != len(d["merges"]):
            raise ValueError("a merge is listed twice; each pair is merged once")
        if not all(0 <= a < new_id and 0 <= b < new_id for (a, b), new_id in merges.items()):
            raise ValueError("a merge refers to a token that does not exist yet")
        if byte_order is not None and sorted(byte_order) != list(range(256)):
            raise ValueError("byte_order must be a permutation of 0..255")
    except KeyError as e:
        raise ValueError(f"the tokenizer has no '{e.args[0]}' entry.") from None
    except (TypeError, AttributeError) as e:
        raise ValueError(f"a tokenizer entry has the wrong type ({e}).") from None
    ids, first = list(special_tokens.values()), 256 + len(merges)  # 256 bytes + merges
    if not all(type(i) is int and i >= first for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f"special token ids must be distinct ints >= {first}, so that they "
                         "do not collide with the bytes and merges.")
    return pattern, merges, byte_order, special_tokens


@contextmanager
def tokenizer_file(path: str | Path) -> Iterator[object]:
    """The JSON content of a tokenizer file; any ValueError while it is used names the file.

        with tokenizer_file(path) as d:
            return BPETokenizer.from_dict(d)
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist.")
    try:
        yield json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"tokenizer file {path} is not a valid tokenizer: {e}") from None
    except KeyError as e:  # a foreign file's entry that is not there
        raise ValueError(f"tokenizer file {path} is not a valid tokenizer: it has no "
                         f"{e.args[0]!r:.60} entry.") from None
    except (TypeError, AttributeError, IndexError) as e:
        raise ValueError(f"tokenizer file {path} is not a valid tokenizer: an entry has the "
                         f"wrong type ({e}).") from None
    except RecursionError:
        raise ValueError(f"tokenizer file {path} is not a valid tokenizer: it nests too "
                         "deeply.") from None


def check_rank_table(ranks: dict[bytes, int], by_rank: list[bytes],
                     parts: dict[bytes, list[bytes]]) -> None:
    """A tiktoken rank table is BPE: the 256 single bytes at ranks 0-255, the merged tokens
    after them without gaps, and each merged token (in `parts`, as BPE with only the lower
    ranks split it) a merge of exactly two lower-ranked tokens."""
    if ([ranks[t] for t in by_rank] != list(range(len(by_rank)))
            or sorted(by_rank[:256]) != [bytes([b]) for b in range(256)]):
        raise ValueError("rank table must hold the 256 single bytes at ranks 0-255 and the "
                         "merged tokens at the ranks after them, without gaps.")
    for token, two in parts.items():
        if len(two) != 2:
            raise ValueError(f"token {token!r} (rank {ranks[token]}) is not a merge of two "
                             f"lower-ranked tokens, so this is not a BPE rank table.")
