"""corpus.py: the ids equal the tokenizer's on every path (1 or 2 processes, tiktoken or ours),
splits are by document and seeded, files are reused or rebuilt with a reason, writes are atomic,
a streamed dataset reads local files through the same call, and bad input is one sentence."""

import errno
import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corpus as cp
from support.checks import check_fills_window, check_vocab_filled
from support.errors import DataFileError, DataMissingError
from tokenizer import BPETokenizer

WORDS = ("the cat sat on a mat; def main():\n    return 42\n\nÜber naïve café 日本語 emoji 😀\n"
         "class Thing:\n\tpass  # trailing   \r\n")


def make_corpus(folder, n_files: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        lines = [f"doc {i} line {j}: " + WORDS[: rng.integers(10, len(WORDS))]
                 for j in range(int(rng.integers(5, 40)))]
        (folder / f"f{i:02}.txt").write_text("\n".join(lines), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tok():
    t = BPETokenizer()
    t.train(WORDS * 30 + "doc line 0123456789:", 300)
    return t


def read_split(folder, split, meta):
    return np.fromfile(folder / f"{split}.bin", dtype=meta["dtype"]).tolist()


def expected_ids(found, tok, split):
    ids = []
    for doc in found.docs:
        if doc.split == split:
            ids += tok.encode(open(doc.path, encoding="utf-8", newline="").read()) + [tok.eot_id]
    return ids


# ---------------------------------------------------------------------------- known answers

@pytest.mark.parametrize("workers, use_tiktoken", [(1, False), (2, False), (2, True)])
def test_token_files_hold_the_tokenizers_ids_for_each_split(tmp_path, tok, workers,
                                                            use_tiktoken):
    corpus = cp.Corpus(paths=[str(make_corpus(tmp_path / "text"))])
    found = cp.survey(corpus)
    meta = cp.prepare_token_files(found, tok, tmp_path / "p", workers, use_tiktoken)
    for split in cp.SPLITS:
        assert read_split(tmp_path / "p", split, meta) == expected_ids(found, tok, split)
        docs = [d for d in found.docs if d.split == split]
        # one character per document boundary (<|endoftext|>), so nats/char stay exact
        assert meta["splits"][split]["chars"] == sum(d.chars + 1 for d in docs)
        assert meta["splits"][split]["documents"] == len(docs)
    assert meta["dtype"] == "uint16" and meta["tokenizer"] == cp.tokenizer_fingerprint(tok)
    assert sorted(os.listdir(tmp_path / "p")) == ["test.bin", "tokens.json", "train.bin",
                                                  "val.bin"]


def test_splits_are_by_document_seeded_and_recorded(tmp_path):
    make_corpus(tmp_path / "text", n_files=40)
    corpus = cp.Corpus(paths=[str(tmp_path / "text")])
    docs = cp.survey(corpus).readable().docs
    by_split = {s: {d.key for d in docs if d.split == s} for s in cp.SPLITS}
    assert [len(by_split[s]) for s in cp.SPLITS] == [34, 2, 4]  # 10 % test, 5 % val
    again = cp.survey(corpus).readable().docs
    assert {d.key: d.split for d in again} == {d.key: d.split for d in docs}
    other = cp.survey(cp.Corpus(paths=[str(tmp_path / "text")], split_seed=1)).readable().docs
    assert {d.key: d.split for d in other} != {d.key: d.split for d in docs}
    assert "seed 0" in cp.split_rule(corpus, several=True)


def test_one_file_splits_by_characters_like_tinyshakespeare(tmp_path, tok):
    text = "".join(f"line {i}: {WORDS}" for i in range(50))
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    for nanogpt in (False, True):
        corpus = cp.Corpus(paths=[str(tmp_path / "one.txt")], nanogpt=nanogpt)
        meta = cp.prepare_token_files(cp.survey(corpus), tok, tmp_path / str(nanogpt), 1)
        n = len(text)
        cuts = {"train": text[: n * (90 if nanogpt else 85) // 100],
                "val": text[n * 85 // 100 : n * 90 // 100], "test": text[n * 90 // 100 :]}
        for split, part in cuts.items():
            assert read_split(tmp_path / str(nanogpt), split, meta) == tok.encode(part)
            assert meta["splits"][split]["chars"] == len(part)
        assert meta["document_separator"] is None


def test_character_splits_cut_like_nanogpt():
    assert cp.character_splits(1000) == {"train": (0, 850), "val": (850, 900),
                                         "test": (900, 1000)}
    assert cp.character_splits(1000, nanogpt=True)["train"] == (0, 900)
    n = 1_115_394  # TinyShakespeare: the test split is exactly nanoGPT's data[int(n * 0.9):]
    assert cp.character_splits(n)["test"] == (int(n * 0.9), n)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab é1 \n\t.:_", min_size=0, max_size=400), st.integers(1, 50))
def test_safe_pieces_encode_exactly_as_the_whole_text(tok, text, size):
    pieces = list(cp.safe_pieces(text, size))
    assert "".join(pieces) == text
    assert [i for piece in pieces for i in tok.encode(piece)] == tok.encode(text)


def test_tokenizer_sample_is_bounded_seeded_and_drawn_from_the_whole_corpus():
    texts = [f"document {i}\n" + f"words of document {i}\n" * 2000 for i in range(30)]
    sample = cp.draw_sample(texts, budget=200_000, seed=0)
    assert len(sample) <= 200_000
    assert sample == cp.draw_sample(texts, budget=200_000, seed=0)
    assert sample != cp.draw_sample(texts, budget=200_000, seed=1)
    seen = {int(n) for n in re.findall(r"document (\d+)", sample)}
    assert min(seen) < 10 and max(seen) > 20  # from the beginning and the end
    assert cp.draw_sample(["short text"], budget=10**6, seed=0) == "short text"


# ---------------------------------------------------------------------------- reuse and rebuild

def stale_reason(folder, corpus, tokenizer):
    return cp.stale_reason(folder, cp.saved_token_meta(folder), cp.survey(corpus).fingerprint,
                           tokenizer)


def test_files_are_reused_then_rebuilt_with_the_reason(tmp_path, tok, capsys):
    text = make_corpus(tmp_path / "text")
    corpus, folder = cp.Corpus(paths=[str(text)]), tmp_path / "p"
    cp.ready_token_files(cp.survey(corpus), tok, folder, 1)
    assert "Preparing token files" in capsys.readouterr().out
    cp.ready_token_files(cp.survey(corpus), tok, folder, 1)
    assert "Reusing the token files" in capsys.readouterr().out

    (text / "f03.txt").write_text("changed\n", encoding="utf-8")
    cp.ready_token_files(cp.survey(corpus), tok, folder, 1)
    assert "Rebuilding the token files in" in (out := capsys.readouterr().out)
    assert "f03.txt changed (size or modification time)" in out
    (text / "new.txt").write_text("new document\n", encoding="utf-8")
    cp.ready_token_files(cp.survey(corpus), tok, folder, 1)
    assert "new.txt is new" in capsys.readouterr().out

    other = BPETokenizer()
    other.train(WORDS * 30, 290)
    meta = cp.ready_token_files(cp.survey(corpus), other, folder, 1)
    assert "the tokenizer changed" in capsys.readouterr().out
    assert meta["tokenizer"] == cp.tokenizer_fingerprint(other)

    with open(folder / "train.bin", "ab") as f:  # a file that does not match its JSON
        f.write(b"\0\0")
    assert re.fullmatch(r"train\.bin holds [\d,]+ bytes but tokens\.json says [\d,]+ uint16 "
                        r"tokens \([\d,]+ bytes\)",
                        stale_reason(folder, corpus, other))
    cp.prepare_token_files(cp.survey(corpus), other, folder, 1)
    ids = np.memmap(folder / "val.bin", dtype=np.uint16, mode="r+")
    ids[0] = 299  # an id the smaller tokenizer does not have
    ids.flush()
    del ids
    assert stale_reason(folder, corpus, other) == \
        "val.bin holds token ids the tokenizer does not have"


def test_an_interrupted_prepare_leaves_no_file_behind(tmp_path, tok, monkeypatch):
    corpus = cp.Corpus(paths=[str(make_corpus(tmp_path / "text"))])
    folder = tmp_path / "p"
    cp.prepare_token_files(cp.survey(corpus), tok, folder, 1)
    calls = []

    def interrupted(task):
        calls.append(task)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    real = cp._encode_task
    monkeypatch.setattr(cp, "PIECE_CHARS", 200)
    monkeypatch.setattr(cp, "_encode_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cp.prepare_token_files(cp.survey(corpus), tok, folder, 1)
    # no half-written file, and no JSON that would vouch for the old ones
    assert not list(folder.glob("*.part")) and not (folder / "tokens.json").exists()
    assert stale_reason(folder, corpus, tok) == \
        "no complete token files yet"


def test_a_full_disk_is_one_sentence_and_leaves_no_file(tmp_path, tok, monkeypatch):
    corpus = cp.Corpus(paths=[str(make_corpus(tmp_path / "text"))])

    def full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cp.SplitWriter, "write", full)
    with pytest.raises(DataFileError, match=r"^The disk filled up while writing token files to "
                       r".*p \([\d,]+ MB free\); free some space or pass --prepared-dir on "
                       r"another disk\.$"):
        cp.prepare_token_files(cp.survey(corpus), tok, tmp_path / "p", 1)
    assert not list((tmp_path / "p").iterdir())


# ---------------------------------------------------------------------------- a streamed dataset

@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_local_dataset_file_streams_through_load_dataset(tmp_path, tok, suffix):
    rows = [{"text": f"row {i}: {WORDS}", "id": i} for i in range(200)]
    path = tmp_path / f"data{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    corpus = cp.Corpus(hf_name=str(path))
    assert list(cp.hf_rows(corpus)) == [r["text"] for r in rows]
    meta = cp.prepare_token_files(cp.survey(corpus), tok, tmp_path / "p", 2)
    assert sum(s["documents"] for s in meta["splits"].values()) == 200
    expected = {s: [] for s in cp.SPLITS}
    for doc, text in cp.hf_documents(corpus):
        expected[doc.split] += tok.encode(text) + [tok.eot_id]
    for split in cp.SPLITS:
        assert read_split(tmp_path / "p", split, meta) == expected[split]
    assert len(list(cp.hf_rows(cp.Corpus(hf_name=str(path), hf_max_docs=7)))) == 7
    with pytest.raises(DataFileError, match="has no field 'body' \\(it has text, id\\); name "
                                            "the text field with --hf-field"):
        list(cp.hf_rows(cp.Corpus(hf_name=str(path), hf_field="body")))


# ---------------------------------------------------------------------------- bad input

def test_an_empty_folder_or_no_matching_file_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataMissingError, match=r"--text .*empty is an empty folder; point it "
                                               r"at text files or change --include\.$"):
        cp.survey(cp.Corpus(paths=[str(tmp_path / "empty")]))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("x = 1\n")
    with pytest.raises(DataMissingError, match=r"holds no file matching --include \*\.txt,\*\.md"):
        cp.survey(cp.Corpus(paths=[str(tmp_path / "code")]))
    (tmp_path / "code" / "notes.md").write_text("# notes\n")
    (tmp_path / "code" / "site-packages").mkdir()
    (tmp_path / "code" / "site-packages" / "b.py").write_text("y = 2\n")
    found = cp.survey(cp.Corpus(paths=[str(tmp_path / "code")], include="*.py,*.md",
                                exclude="site-packages"))
    assert [d.key for d in found.docs] == ["a.py", "notes.md"]
    with pytest.raises(DataMissingError, match="--text .*nowhere: no such file or folder"):
        cp.survey(cp.Corpus(paths=[str(tmp_path / "nowhere")]))


def test_binary_and_non_utf8_files_are_skipped_with_a_count(tmp_path, tok, capsys):
    text = make_corpus(tmp_path / "text")
    (text / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    (text / "latin1.txt").write_bytes("café".encode("latin-1"))
    (text / "empty.txt").write_bytes(b"")
    found = cp.survey(cp.Corpus(paths=[str(text)]))
    cp.ready_token_files(found, tok, tmp_path / "p", 1)
    out = capsys.readouterr().out
    assert ("Skipped 3 file(s) that are not text (1 empty, 2 binary or not UTF-8; e.g. "
            "empty.txt).") in out
    assert len(found.docs) == 12
    only_binary = tmp_path / "bin"
    only_binary.mkdir()
    (only_binary / "a.txt").write_bytes(b"\0\1\2")
    with pytest.raises(DataFileError, match=r"none of its 1 files is UTF-8 text \(e\.g\. a\.txt: "
                                            r"binary or not UTF-8\)"):
        cp.survey(cp.Corpus(paths=[str(only_binary)])).readable()


def test_too_few_documents_small_splits_and_a_vocabulary_too_large_are_one_sentence(tmp_path):
    two = make_corpus(tmp_path / "two", n_files=2)
    with pytest.raises(DataFileError, match="holds 2 readable documents: too few for train, val "
                                            "and test splits by document"):
        cp.survey(cp.Corpus(paths=[str(two)])).readable()
    meta = {"splits": {"train": {"tokens": 500}, "val": {"tokens": 20}, "test": {"tokens": 9}},
            "corpus": {"paths": ["/home/me/notes"]}}
    with pytest.raises(DataFileError, match=r"^The val split of notes holds 20 tokens, fewer "
                                            r"than one window of 33; use more text or a smaller "
                                            r"--context-length\.$"):
        check_fills_window(meta["splits"], 32, cp.Corpus.from_dict(meta["corpus"]).label())
    with pytest.raises(DataFileError, match=r"^The 1,000 characters drawn from notes fill only "
                                            r"300 of the 1024 tokens of --vocab-size; give a "
                                            r"--vocab-size of at most 300, or more text\.$"):
        check_vocab_filled(300, 1024, "notes", 1000)


def test_nanogpt_split_of_several_documents_is_one_sentence(tmp_path):
    text = make_corpus(tmp_path / "text", n_files=4)
    with pytest.raises(DataFileError, match="^--nanogpt-split cuts one text by characters, and "
                                            "text holds 4 documents; leave it out\\.$"):
        cp.survey(cp.Corpus(paths=[str(text)], nanogpt=True)).readable()


def test_a_stream_whose_split_comes_out_empty_is_one_sentence(tmp_path, tok):
    path = tmp_path / "few.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(3)))
    with pytest.raises(DataFileError, match=r"^The (val|test) split of few\.jsonl came out empty "
                                            r"\(by document: .*\); add more documents\.$"):
        cp.prepare_token_files(cp.survey(cp.Corpus(hf_name=str(path))), tok, tmp_path / "p", 1)
    assert not (tmp_path / "p" / "tokens.json").exists()


def test_one_short_text_whose_split_comes_out_empty_asks_for_more_text(tmp_path, tok):
    path = tmp_path / "tiny.txt"
    path.write_text("hello there\n", encoding="utf-8")  # 12 characters: val gets none
    with pytest.raises(DataFileError, match=r"^The val split of tiny\.txt came out empty "
                                            r"\(by characters: train 85 %, val 5 %, test last "
                                            r"10 %\); use more text\.$"):
        cp.prepare_token_files(cp.survey(cp.Corpus(paths=[str(path)])), tok, tmp_path / "p", 1)
    assert not (tmp_path / "p" / "tokens.json").exists()


def test_corpus_tokenizer_trains_on_the_sample_and_is_reused_at_its_size(tmp_path, capsys):
    corpus = cp.Corpus(paths=[str(make_corpus(tmp_path / "notes"))])
    found, path = cp.survey(corpus), tmp_path / "tokenizer.json"
    trained = cp.corpus_tokenizer(path, 300, found, sample_chars=50_000)
    sample = cp.draw_sample(found.train_texts(), 50_000, corpus.split_seed)
    expected = BPETokenizer()
    expected.train(sample, 300)  # the same sample, the same merges
    assert trained.to_dict() == expected.to_dict() == BPETokenizer.load(path).to_dict()
    assert "Training a 300-token BPE tokenizer" in capsys.readouterr().out
    assert cp.corpus_tokenizer(path, 300, found, 50_000).to_dict() == trained.to_dict()
    assert "Reusing tokenizer" in capsys.readouterr().out
    assert cp.saved_tokenizer(path, 301) is None  # another size: trained anew by the caller
