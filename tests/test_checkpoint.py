"""Checkpoints: exact round trip, atomic writes, and one clear sentence for every bad file."""

import pickle
from pathlib import Path

import pytest
import torch

import checkpoint
from checkpoint import (
    check_config_fits_weights,
    load_checkpoint,
    meta_shapes,
    read_checkpoint,
    save_checkpoint,
    weights_fingerprint,
)
from model import GPTConfig, GPTModel
from support.errors import CheckpointError
from support.files import atomic_save, check_writable
from tokenizer import BPETokenizer


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train("the quick brown fox jumps over the lazy dog " * 30, 280)
    return tok


@pytest.fixture
def model() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=320, context_length=16, n_layer=2, n_head=2, n_embd=32))


def test_save_then_load_gives_identical_logits_tokenizer_and_metadata(tmp_path, model, tokenizer):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer, step=7, note="hello")
    loaded, tok, meta = load_checkpoint(path)
    idx = torch.randint(0, 280, (2, 16))
    assert torch.equal(loaded(idx), model.eval()(idx))
    assert tok.to_dict() == tokenizer.to_dict()
    assert meta == {"step": 7, "note": "hello"}
    assert loaded.config == model.config


def test_checkpoint_loads_with_weights_only(tmp_path, model, tokenizer):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == "llm-from-scratch" and ckpt["kind"] == "gpt"


def test_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="run python main.py first"):
        load_checkpoint(tmp_path / "nope.pth")


class Payload:
    """Unpickling this would create a marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"format": "llm-from-scratch", "payload": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_raw_pickle_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Payload(str(marker))))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files_get_one_clear_error(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupted|not an llm-from-scratch"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_reported_as_corrupt(tmp_path, model, tokenizer):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_a_foreign_state_dict_is_not_mistaken_for_a_checkpoint(tmp_path, model):
    path = tmp_path / "foreign.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="not an llm-from-scratch checkpoint"):
        load_checkpoint(path)


def test_mismatched_weights_get_a_clear_error(tmp_path, model, tokenizer):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["n_embd"] = 64
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(path)


@pytest.mark.parametrize("weights", ["missing", None, [1, 2]])
def test_a_checkpoint_without_weights_gets_a_clear_error(tmp_path, model, tokenizer, weights):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    ckpt = torch.load(path, weights_only=True)
    if weights == "missing":
        del ckpt["state_dict"]
    else:
        ckpt["state_dict"] = weights
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("name, value", [("n_embd", 32.0), ("n_layer", True),
                                         ("context_length", 16.0)])
def test_a_non_integer_size_in_the_config_gets_a_clear_error(tmp_path, model, tokenizer, name,
                                                            value):
    # 32.0 passes GPTConfig's range checks but would fail deep inside nn.Embedding.
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"][name] = value
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=f"its config entry '{name}' is {value}; it must be"):
        load_checkpoint(path)


def test_an_unwritable_path_is_one_sentence_before_any_work(tmp_path):
    check_writable(tmp_path / "new" / "m.pth")  # a missing folder is made
    with pytest.raises(CheckpointError, match="is a folder; give a file name"):
        check_writable(tmp_path)
    with pytest.raises(CheckpointError, match="is a folder; give a file name"):
        atomic_save({"x": 1}, tmp_path)  # not "the previous file is untouched"
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    with pytest.raises(CheckpointError, match="^Cannot write"):
        check_writable(tmp_path / "plain.txt" / "m.pth")


def test_a_crash_mid_save_leaves_the_old_file_intact(tmp_path, model, tokenizer, monkeypatch):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer, step=1)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, tokenizer, step=2)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_disk_full_gives_one_clear_error_and_keeps_the_old_file(tmp_path, model, tokenizer,
                                                                monkeypatch):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer, step=1)
    before = path.read_bytes()

    def disk_full(obj, f):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*untouched"):
        save_checkpoint(path, model, tokenizer, step=2)
    assert path.read_bytes() == before


def test_unwritable_folder_gives_one_clear_error(tmp_path, model, tokenizer):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a folder should be
    with pytest.raises(CheckpointError, match="Cannot write"):
        save_checkpoint(blocker / "m.pth", model, tokenizer)


def test_read_checkpoint_checks_the_kind(tmp_path, model, tokenizer):
    path = tmp_path / "m.pth"
    save_checkpoint(path, model, tokenizer)
    with pytest.raises(CheckpointError, match="expected 'lora-classifier'"):
        read_checkpoint(path, kind="lora-classifier")


def test_fingerprint_identifies_the_weights(model):
    sd = model.state_dict()
    assert weights_fingerprint(sd) == weights_fingerprint({k: v.clone() for k, v in sd.items()})
    changed = dict(sd)
    changed["ln_f.weight"] = sd["ln_f.weight"] + 1e-3
    assert weights_fingerprint(changed) != weights_fingerprint(sd)


def test_config_and_weights_agree_or_one_sentence_names_the_tensor(monkeypatch):
    config = GPTConfig(vocab_size=10, context_length=4, n_layer=1, n_head=1, n_embd=4)
    state = GPTModel(config).state_dict()
    check_config_fits_weights("m.pth", state, config, 10)
    wrong = {**state, "blocks.0.attn.qkv.weight": torch.zeros(8, 4)}
    with pytest.raises(CheckpointError, match=r"blocks\.0\.attn\.qkv\.weight should be "
                       r"\(12, 4\), the file holds \(8, 4\)"):
        check_config_fits_weights("m.pth", wrong, config, 10)
    with pytest.raises(CheckpointError, match=r"gpt\.tok_emb\.weight should be .* holds nothing"):
        check_config_fits_weights("m.pth", state, config, 10, prefix="gpt.")
    monkeypatch.setattr(checkpoint, "model_shapes", lambda config: pytest.fail("built"))
    with pytest.raises(CheckpointError, match="declares 2 layers"):  # sizes first: nothing built
        check_config_fits_weights("m.pth", {"w": torch.zeros(2, 3)},
                                  GPTConfig(vocab_size=10, context_length=4, n_layer=2,
                                            n_head=1, n_embd=4), 10)


def test_meta_shapes_are_the_real_shapes_without_any_storage():
    def build():
        return torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LayerNorm(8),
                                   torch.nn.Linear(8, 3))
    real = {name: t.shape for name, t in build().state_dict().items()}
    assert meta_shapes(build) == real
    huge = meta_shapes(lambda: torch.nn.Linear(2**20, 2**20))  # 4 TiB if it were allocated
    assert huge["weight"] == (2**20, 2**20)
