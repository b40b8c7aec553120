"""Tests for data_utils: fixed splits, offline loading, clear errors, next-token batches, and
batches of examples of different lengths (padding, length grouping, DDP shares, the loader)."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

import data_utils
from data_utils import (
    LengthGroupedBatches,
    create_dataloader,
    example_loader,
    load_instructions,
    load_sst2,
    load_tinyshakespeare,
    pad_batch,
    pad_inputs_and_targets,
    pad_labelled,
    split_shakespeare,
    tokenizer_training_corpus,
)
from support import datasets
from support.datasets import resolve_data_dir
from support.errors import DataFileError, DataMissingError


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No LLM_DATA_DIR from the caller, an empty cache, and no network for any test."""
    monkeypatch.delenv("LLM_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")

    def no_network(*args, **kwargs):
        raise ConnectionError("network disabled in tests")

    monkeypatch.setattr("requests.get", no_network)


def write_fixture(folder, shakespeare="First Citizen:\nSpeak, speak.\n" * 20, sst2=True):
    """A tiny data folder with the canonical file names."""
    (folder / "tinyshakespeare.txt").write_text(shakespeare)
    if sst2:
        (folder / "sst2").mkdir()
        rows = [f"sentence {i} \t{i % 2}" for i in range(30)]
        (folder / "sst2" / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
        (folder / "sst2" / "dev.tsv").write_text("sentence\tlabel\na fine film \t1\nbad \t0\n")
    return folder


def instruction_lines(n):
    return [
        json.dumps({"instruction": f"task {i}", "context": "", "response": f"answer {i}"})
        for i in range(n)
    ]


needs_shared = pytest.mark.skipif(
    not (SHARED_DATA / "tinyshakespeare.txt").is_file(), reason="shared data not available"
)


# ---------------------------------------------------------------------------------------------
# Splits


def test_shakespeare_split_exact_sizes_in_order_without_overlap():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    splits = split_shakespeare(text)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [850, 50, 100]
    assert splits["train"] + splits["val"] + splits["test"] == text


@pytest.mark.parametrize("n", [0, 1, 7, 99, 1001, 1_115_394])
def test_shakespeare_split_matches_nanogpt_val_slice(n):
    text = "x" * n
    splits = split_shakespeare(text)
    assert sum(len(part) for part in splits.values()) == n
    assert len(splits["test"]) == n - int(n * 0.9)  # nanoGPT: val = data[int(n * 0.9):]
    assert len(splits["train"]) == n * 85 // 100
    theirs = split_shakespeare(text, nanogpt=True)
    assert len(theirs["train"]) == int(n * 0.9) and theirs["test"] == splits["test"]


def test_nanogpt_split_trains_on_nanogpts_train_slice_and_keeps_the_same_test():
    text = "".join(chr(ord("a") + i % 26) for i in range(1000))
    ours, theirs = split_shakespeare(text), split_shakespeare(text, nanogpt=True)
    assert theirs["train"] == text[: int(len(text) * 0.9)]  # nanoGPT: train = data[:int(n*0.9)]
    assert theirs["train"] == ours["train"] + ours["val"]
    assert theirs["val"] == ours["val"] and theirs["test"] == ours["test"]


def test_sst2_val_is_seeded_carve_out_of_train_and_test_is_dev(tmp_path):
    write_fixture(tmp_path)
    a = load_sst2(tmp_path, val_size=5, seed=1, verify=False)
    b = load_sst2(tmp_path, val_size=5, seed=1, verify=False)
    c = load_sst2(tmp_path, val_size=5, seed=2, verify=False)
    assert a == b and a["val"] != c["val"]
    assert len(a["train"]) == 25 and len(a["val"]) == 5
    assert set(a["train"]) | set(a["val"]) == {(f"sentence {i}", i % 2) for i in range(30)}
    assert not set(a["train"]) & set(a["val"])
    assert a["test"] == [("a fine film", 1), ("bad", 0)]  # stripped, header skipped
    with pytest.raises(ValueError, match=r"^val_size must be in \[0, 30\), got 30\.$"):
        load_sst2(tmp_path, val_size=30, verify=False)
    with pytest.raises(ValueError, match=r"^val_size must be in \[0, 30\), got 5\.0\.$"):
        load_sst2(tmp_path, val_size=5.0, verify=False)  # a float was a TypeError in a slice


def test_instruction_split_is_seeded_95_5(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(instruction_lines(200)) + "\n")
    a = load_instructions(path, seed=0)
    assert len(a["train"]) == 190 and len(a["test"]) == 10
    assert a == load_instructions(path, seed=0)
    assert a["test"] != load_instructions(path, seed=1)["test"]
    train_tasks = {r["instruction"] for r in a["train"]}
    test_tasks = {r["instruction"] for r in a["test"]}
    assert not train_tasks & test_tasks and len(train_tasks | test_tasks) == 200
    assert a["train"][0]["category"] == "general"  # missing category gets the default
    assert set(a["train"][0]) == {"instruction", "context", "response", "category"}


# ---------------------------------------------------------------------------------------------
# Loading from a folder, and the errors


def test_loads_from_env_folder_and_argument_wins(tmp_path, monkeypatch):
    env_dir, arg_dir = tmp_path / "env_dir", tmp_path / "arg_dir"
    env_dir.mkdir()
    arg_dir.mkdir()
    write_fixture(env_dir)
    (arg_dir / "tinyshakespeare.txt").write_text("from the argument\n")
    monkeypatch.setenv("LLM_DATA_DIR", str(env_dir))
    assert resolve_data_dir() == env_dir
    assert load_tinyshakespeare(verify=False).startswith("First Citizen:")
    assert load_tinyshakespeare(arg_dir, verify=False) == "from the argument\n"
    assert not datasets.CACHE_DIR.exists()  # nothing downloaded, nothing cached


def test_a_data_file_that_is_not_utf8_is_one_sentence(tmp_path):
    (tmp_path / "tinyshakespeare.txt").write_bytes(b"First Citizen:\n\xff\n")
    with pytest.raises(DataFileError, match=r"tinyshakespeare.txt is not UTF-8 text \(invalid "
                       r"start byte at byte 15\)\.$") as err:
        load_tinyshakespeare(tmp_path, verify=False)
    assert err.value.__suppress_context__  # no "During handling..." traceback behind it


def test_checksum_mismatch_is_a_clear_error(tmp_path):
    write_fixture(tmp_path)
    with pytest.raises(DataFileError, match="canonical tinyshakespeare.txt.*replace it with"):
        load_tinyshakespeare(tmp_path)
    with pytest.raises(DataFileError, match="not the canonical sst2/train.tsv"):
        load_sst2(tmp_path, val_size=5)


def test_missing_file_in_data_folder_says_which_and_where(tmp_path):
    write_fixture(tmp_path, sst2=False)
    with pytest.raises(DataMissingError) as err:
        load_sst2(tmp_path, verify=False)
    message = str(err.value)
    assert "sst2/train.tsv" in message and str(tmp_path) in message
    assert "LLM_DATA_DIR" in message and "\n" not in message
    with pytest.raises(DataMissingError, match="does not exist"):
        load_tinyshakespeare(tmp_path / "nowhere")


@pytest.mark.parametrize("download", [True, False])
def test_offline_without_copy_raises_data_missing_not_a_network_traceback(download):
    with pytest.raises(DataMissingError) as err:
        load_tinyshakespeare(download=download)
    message = str(err.value)
    assert "tinyshakespeare.txt" in message and "LLM_DATA_DIR" in message
    reason = ("there is no network to download it" if download
              else "downloads are turned off (download=False)")
    assert f"{datasets.CACHE_DIR} and {reason}: put it at " in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_offline_the_error_says_no_network_plainly_and_what_to_do(monkeypatch):
    import requests

    def no_dns(url, timeout):  # what requests raises with no network, nested message and all
        raise requests.ConnectionError(
            "HTTPSConnectionPool(host='raw.githubusercontent.com', port=443): Max retries "
            "exceeded (Caused by NameResolutionError(\"HTTPSConnection(host='raw.githubuser"
            "content.com', port=443): Failed to resolve 'raw.githubusercontent.com'\"))")

    monkeypatch.setattr("requests.get", no_dns)
    with pytest.raises(DataMissingError) as err:
        load_tinyshakespeare()
    cache = datasets.CACHE_DIR
    assert str(err.value) == (
        f"Data file tinyshakespeare.txt is not in the cache {cache} and there is no network to "
        f"download it: put it at {cache / 'tinyshakespeare.txt'} (source: "
        f"{datasets.SHAKESPEARE_URL}) or set --data-dir / LLM_DATA_DIR to a folder that has it.")


def test_network_errors_of_every_download_library_are_recognised():
    import requests
    from huggingface_hub.errors import LocalEntryNotFoundError

    class NameResolutionError(Exception):  # urllib3's, seen only as the cause of another error
        pass

    wrapped = RuntimeError("hub call failed")
    wrapped.__cause__ = NameResolutionError("Failed to resolve 'huggingface.co'")
    for err in (requests.ConnectionError("x"), requests.Timeout("x"), ConnectionError("x"),
                LocalEntryNotFoundError("not cached and no connection"), wrapped):
        assert datasets.why_the_download_failed(err) == "there is no network to download it"
    assert datasets.why_the_download_failed(DataFileError("wrong bytes\nmore")) == \
        "the download failed (DataFileError: wrong bytes)"


def test_download_is_verified_then_cached(monkeypatch):
    payload = b"not shakespeare at all\n"
    calls = []

    def fake_get(url, timeout):
        calls.append(url)
        return types.SimpleNamespace(content=payload, raise_for_status=lambda: None)

    monkeypatch.setattr("requests.get", fake_get)
    with pytest.raises(DataMissingError, match="download failed.*DataFileError"):
        load_tinyshakespeare()
    assert calls == [datasets.SHAKESPEARE_URL]
    assert not (datasets.CACHE_DIR / "tinyshakespeare.txt").exists()  # bad bytes not cached


def test_line_separators_inside_fields_do_not_split_records(tmp_path, capsys):
    # json.dumps(ensure_ascii=False) writes U+2028, U+0085 and form feeds raw inside strings;
    # only "\n" (or "\r\n") ends a JSONL or TSV line.
    odd = "first\u2028second\x85third\x0cfourth"
    records = [{"instruction": f"task {i}", "context": "", "response": f"{odd} {i}"}
               for i in range(20)]
    path = tmp_path / "odd.jsonl"
    path.write_bytes("\r\n".join(json.dumps(r, ensure_ascii=False) for r in records).encode())
    splits = load_instructions(path)
    assert capsys.readouterr().err == ""  # no "skipped lines" note
    loaded = splits["train"] + splits["test"]
    assert sorted(r["response"] for r in loaded) == sorted(r["response"] for r in records)

    write_fixture(tmp_path)
    dev = tmp_path / "sst2" / "dev.tsv"
    dev.write_text(dev.read_text() + f"an {odd} film\t1\n")
    assert (f"an {odd} film", 1) in load_sst2(tmp_path, val_size=5, verify=False)["test"]


def test_sst2_bad_rows_are_skipped_and_counted(tmp_path, capsys):
    write_fixture(tmp_path)
    train = tmp_path / "sst2" / "train.tsv"
    train.write_text(train.read_text() + "no tab here\nlabel two \t2\n\t1\n")
    splits = load_sst2(tmp_path, val_size=5, verify=False)
    assert capsys.readouterr().err == (f"{train}: skipped 3 malformed rows (no tab or label not "
                                       "0/1), first at line 32.\n")
    assert len(splits["train"]) + len(splits["val"]) == 30


def test_sst2_file_without_valid_rows_is_an_error(tmp_path):
    write_fixture(tmp_path)
    (tmp_path / "sst2" / "dev.tsv").write_text("just prose\nwith no labels\n")
    with pytest.raises(DataFileError, match="no `sentence<TAB>label` rows"):
        load_sst2(tmp_path, val_size=5, verify=False)


def test_instruction_bad_lines_are_counted_and_wrong_file_is_an_error(tmp_path, capsys):
    lines = instruction_lines(40) + [
        "{broken json",
        json.dumps({"instruction": "no response", "context": ""}),
        json.dumps({"instruction": 3, "context": "", "response": "x"}),
        json.dumps(["a", "list"]),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n\n")
    splits = load_instructions(path)
    assert capsys.readouterr().err == (f"{path}: skipped 4 lines that are not Dolly-schema "
                                       "records (bad JSON, missing or non-string fields), first "
                                       "at line 41.\n")
    assert len(splits["train"]) + len(splits["test"]) == 40

    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text("sentence\tlabel\nhello \t1\n")
    with pytest.raises(DataFileError, match="no Dolly-schema records"):
        load_instructions(wrong)
    with pytest.raises(DataMissingError, match="does not exist"):
        load_instructions(tmp_path / "absent.jsonl")


def test_a_bare_instruction_file_name_is_found_in_the_data_folder(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "mine.jsonl").write_text("\n".join(instruction_lines(40)) + "\n")
    monkeypatch.chdir(tmp_path)  # the file is not in the current folder
    assert len(load_instructions("mine.jsonl", data_dir=folder)["test"]) == 2
    monkeypatch.setenv("LLM_DATA_DIR", str(folder))
    assert len(load_instructions("mine.jsonl")["train"]) == 38
    with pytest.raises(DataMissingError) as err:
        load_instructions("absent.jsonl")
    assert f"neither the current folder nor the data folder {folder}:" in str(err.value)
    assert str(err.value).endswith("e.g. instruction-data-1100.jsonl.")  # a name that works


def test_default_dolly_missing_points_to_data_file_option(tmp_path):
    write_fixture(tmp_path)
    with pytest.raises(DataMissingError,
                       match="databricks-dolly-15k.jsonl.*any Dolly-schema JSONL instead"):
        load_instructions(data_dir=tmp_path)


MISSING_DOLLY_NOTE = (
    "The tokenizer corpus has no instruction text (databricks-dolly-15k.jsonl is not in {}); "
    "nothing needs redoing, as such text just takes a few more tokens; to include it in a new "
    "tokenizer, pass --instruction-file with a Dolly-schema JSONL such as "
    "instruction-data-1100.jsonl.\n"
)


def test_tokenizer_corpus_uses_train_splits_only_and_notes_once_for_missing(tmp_path, capsys):
    text = " ".join(f"w{i}" for i in range(500))  # every stretch of text is unique
    write_fixture(tmp_path, shakespeare=text)
    corpus = tokenizer_training_corpus(tmp_path, sst2_val_size=5, verify=False)
    assert capsys.readouterr().err == MISSING_DOLLY_NOTE.format(tmp_path)  # one plain sentence
    splits = split_shakespeare(text)
    assert corpus.startswith(splits["train"])
    assert splits["val"] not in corpus and splits["test"] not in corpus
    assert "a fine film" not in corpus  # SST-2 test (GLUE dev) never enters the corpus
    sst2, lines = load_sst2(tmp_path, val_size=5, verify=False), set(corpus.splitlines())
    assert all(sentence in lines for sentence, _ in sst2["train"])
    assert not any(sentence in lines for sentence, _ in sst2["val"])

    path = tmp_path / "instr.jsonl"
    path.write_text("\n".join(instruction_lines(100)) + "\n")
    corpus = tokenizer_training_corpus(tmp_path, path, sst2_val_size=5, verify=False)
    assert capsys.readouterr().err == ""
    instructions, lines = load_instructions(path), set(corpus.splitlines())
    assert all(r["response"] in lines for r in instructions["train"])
    assert not any(r["response"] in lines for r in instructions["test"])


def test_tokenizer_corpus_with_only_shakespeare(tmp_path, capsys):
    write_fixture(tmp_path, sst2=False)
    corpus = tokenizer_training_corpus(tmp_path, verify=False)
    assert capsys.readouterr().err == (
        f"The tokenizer corpus has no SST-2 or instruction text (sst2/ and "
        f"databricks-dolly-15k.jsonl are not in {tmp_path}); nothing needs redoing, as such text "
        "just takes a few more tokens; to include it in a new tokenizer, put sst2/train.tsv and "
        "sst2/dev.tsv into that folder and pass --instruction-file with a Dolly-schema JSONL "
        "such as instruction-data-1100.jsonl.\n")
    assert corpus == split_shakespeare(load_tinyshakespeare(tmp_path, verify=False))["train"]


# ---------------------------------------------------------------------------------------------
# Batches


def test_dataloader_shapes_and_one_token_shift():
    tokens = list(range(1000))
    loader = create_dataloader(tokens, context_length=8, batch_size=4, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert x[0].tolist() == list(range(8)) and x[1, 0] == 8  # stride defaults to context
    assert len(loader) == ((1000 - 9) // 8 + 1) // 4


@pytest.mark.parametrize("stride", [1, 3, 8, 20])
def test_stride_sets_window_starts(stride):
    tokens = torch.arange(100)
    loader = create_dataloader(tokens, 8, batch_size=1, stride=stride, shuffle=False)
    starts = [int(x[0, 0]) for x, _ in loader]
    assert starts == list(range(0, 100 - 8, stride))
    assert starts[-1] + 8 < 100  # the last window still has its final target


def test_window_dataset_ends_and_refuses_too_few_tokens():
    dataset = data_utils.TokenWindowDataset(torch.arange(20), context_length=8, stride=4)
    windows = list(dataset)  # plain iteration stops at the IndexError after the last window
    assert len(windows) == len(dataset) == 3
    assert [int(x[0]) for x, _ in windows] == [0, 4, 8] and int(windows[-1][1][-1]) == 16
    with pytest.raises(IndexError):
        dataset[-1]
    with pytest.raises(ValueError, match="at least context_length \\+ 1 = 9 tokens"):
        data_utils.TokenWindowDataset(torch.arange(8), context_length=8, stride=1)


def test_shuffle_is_deterministic_by_seed_and_reshuffles_each_epoch():
    def order(seed, epochs=2):
        loader = create_dataloader(torch.arange(401), 4, batch_size=5, seed=seed)  # 100 windows
        return [
            [int(x[0]) for x, _ in zip(*batch, strict=True)]
            for _ in range(epochs)
            for batch in loader
        ]

    assert order(0) == order(0)
    assert order(0) != order(1)
    first, second = order(0, epochs=1), order(0)[len(order(0, epochs=1)) :]
    assert first != second and sorted(sum(first, [])) == sorted(sum(second, []))


@pytest.mark.parametrize("n_windows, world_size", [(24, 4), (27, 4), (10, 3)])
def test_rank_shards_are_disjoint_equal_and_cover(n_windows, world_size):
    tokens = torch.arange(n_windows * 4 + 1)
    starts = []
    for rank in range(world_size):
        loader = create_dataloader(
            tokens, 4, batch_size=1, seed=7, rank=rank, world_size=world_size
        )
        starts.append([int(x[0, 0]) for x, _ in loader])
    shards = [set(s) for s in starts]
    assert all(len(s) == n_windows // world_size for s in starts)  # equal steps for DDP
    assert sum(len(s) for s in shards) == len(set().union(*shards))  # disjoint
    assert len(set().union(*shards)) == n_windows - n_windows % world_size
    if n_windows % world_size == 0:
        assert set().union(*shards) == set(range(0, n_windows * 4, 4))


def test_dataloader_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="at least context_length \\+ 1 = 9 tokens.*got 8"):
        create_dataloader(list(range(8)), 8, batch_size=1)
    with pytest.raises(ValueError, match="context_length must be"):
        create_dataloader(list(range(8)), 0, batch_size=1)
    with pytest.raises(ValueError, match="rank must be"):
        create_dataloader(list(range(80)), 4, batch_size=1, rank=2, world_size=2)
    with pytest.raises(ValueError, match="not enough for one batch"):
        create_dataloader(list(range(17)), 4, batch_size=8)
    assert len(create_dataloader(list(range(17)), 4, batch_size=8, drop_last=False)) == 1


def test_get_batch_cuts_the_windows_at_the_starts_shifted_by_one():
    tokens = np.arange(10_000, dtype=np.uint16)
    x, y = data_utils.get_batch(tokens, np.array([0, 17, 9_983]), 16)
    assert x.shape == y.shape == (3, 16) and x.dtype == y.dtype == torch.long
    assert x[:, 0].tolist() == [0, 17, 9_983] and int(y[-1, -1]) == 9_999
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(x, x[:, :1] + torch.arange(16))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_window_batches_are_the_shuffled_dataloaders_batches(world_size):
    """Up to SMALL_EPOCH windows, the batches of the DataLoader that trained before token files
    (ShardedSampler: torch.randperm per epoch, drop_last), epoch after epoch, on every rank."""
    from training import batches_from

    tokens = np.arange(3_000, dtype=np.uint16)
    for rank in range(world_size):
        old = batches_from(create_dataloader(tokens, 16, 4, stride=8, shuffle=True, seed=5,
                                             rank=rank, world_size=world_size))
        new = data_utils.WindowBatches(lambda: tokens, 16, 4, 5, 8, rank, world_size)
        stream, drawn = new.from_batch(0), []
        for n in range(300):  # a few epochs
            x, y = next(stream)
            x_old, y_old = next(old)
            assert torch.equal(x, x_old) and torch.equal(y, y_old), (rank, n)
            drawn.append(x)
        assert torch.equal(next(new.from_batch(123))[0], drawn[123])  # as a resumed run


def test_large_epochs_visit_every_window_once_without_storing_the_order(monkeypatch):
    monkeypatch.setattr(data_utils, "SMALL_EPOCH", 10)
    tokens = np.arange(8 * 20 + 1, dtype=np.uint16)  # 20 windows of 8 at stride 8
    batches = data_utils.WindowBatches(lambda: tokens, 8, 4, seed=3)
    stream = batches.from_batch(0)
    starts = [int(s) for _ in range(10) for s in next(stream)[0][:, 0]]  # two epochs
    assert sorted(starts[:20]) == sorted(starts[20:]) == list(range(0, 160, 8))
    assert starts[:20] != starts[20:] and starts[:20] != sorted(starts[:20])
    assert torch.equal(next(batches.from_batch(7))[0][:, 0], torch.tensor(starts[28:32]))
    other = data_utils.WindowBatches(lambda: tokens, 8, 4, seed=4).from_batch(0)
    assert [int(s) for _ in range(5) for s in next(other)[0][:, 0]] != starts[:20]


def test_a_split_too_small_for_one_batch_is_one_sentence():
    with pytest.raises(ValueError, match="holds 5 windows, not enough for one batch of 4 per "
                                         "process \\(2 processes\\)"):
        next(data_utils.WindowBatches(lambda: np.arange(41), 8, 4, 0, 8, 0, 2).from_batch(0))


def test_ddp_ranks_together_take_one_processes_batch():
    tokens = np.arange(5_000, dtype=np.uint16)
    one = next(data_utils.WindowBatches(lambda: tokens, 8, 4, 3).from_batch(5))[0]
    ranks = [next(data_utils.WindowBatches(lambda: tokens, 8, 2, 3, None, rank, 2)
                  .from_batch(5))[0] for rank in range(2)]
    assert sorted(torch.cat(ranks)[:, 0].tolist()) == sorted(one[:, 0].tolist())


@given(st.integers(1, 5_000), st.integers(0, 2**32))
@settings(max_examples=50, deadline=None)
def test_permuted_is_a_permutation_of_range_n(n, seed):
    order = data_utils.permuted(np.arange(n), n, seed)
    assert sorted(order.tolist()) == list(range(n))
    assert data_utils.permuted(np.arange(n), n, seed).tolist() == order.tolist()


@pytest.mark.parametrize("n_tokens", [300, 5_000, 100_000])
def test_val_loader_reads_side_by_side_windows_or_spreads_them_over_the_split(n_tokens):
    tokens = np.arange(n_tokens, dtype=np.uint32)
    loader = data_utils.val_loader(lambda: tokens, 16, 8, max_windows=64)
    starts = [int(x[0]) for batch, _ in loader for x in batch]
    assert all(torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
               for x, y in loader)
    assert len(starts) <= 64 and starts[0] == 0 and starts[-1] + 16 < n_tokens
    gaps = set(np.diff(starts).tolist())
    assert len(gaps) == 1 and gaps.pop() >= 16  # evenly spaced, never overlapping
    if n_tokens <= 64 * 16:
        assert len(starts) == (n_tokens - 17) // 16 + 1  # every window, side by side
    else:
        assert starts[-1] > n_tokens * 0.9  # the whole split, not its beginning


def test_pad_batch_pads_right_and_returns_lengths():
    ids, lengths = pad_batch([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert lengths.tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match="empty"):
        pad_batch([[1], []], pad_id=0)


# ---------------------------------------------------------------------------------------------
# The real shared files


@needs_shared
def test_shared_files_verify_and_have_documented_sizes():
    text = load_tinyshakespeare(SHARED_DATA)
    assert len(text) == 1_115_394
    sst2 = load_sst2(SHARED_DATA)
    assert len(sst2["train"]) + len(sst2["val"]) == 67_349 and len(sst2["val"]) == 872
    assert len(sst2["test"]) == 872
    assert sum(label for _, label in sst2["test"]) == 444
    instructions = load_instructions(SHARED_DATA / "instruction-data-1100.jsonl")
    assert len(instructions["train"]) + len(instructions["test"]) == 1_100
    assert len(instructions["test"]) == 55


@needs_shared
def test_sst2_rebuilt_from_hugging_face_reproduces_glue_bytes(monkeypatch, tmp_path):
    """The download path, with `datasets` faked by rows read back from the GLUE files."""

    def rows(name):
        lines = (SHARED_DATA / name).read_text().splitlines()[1:]
        return [{"sentence": s, "label": int(label)} for s, label in (x.split("\t") for x in lines)]

    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda name: {
        "train": rows("sst2/train.tsv"),
        "validation": rows("sst2/dev.tsv"),
    }
    monkeypatch.setitem(sys.modules, "datasets", fake)
    splits = load_sst2()  # empty cache: "downloads", verifies, caches
    for name in ("sst2/train.tsv", "sst2/dev.tsv"):
        assert (datasets.CACHE_DIR / name).read_bytes() == (SHARED_DATA / name).read_bytes()
    assert len(splits["test"]) == 872


# ---------------------------------------------------------------------------- batches of examples

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
