"""Tests for lora.py: exact no-op at init, merge/unmerge, freezing, counts, idempotence, and
adapter files going back onto the base they were trained on (load_adapters)."""

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from checkpoint import make_checkpoint, read_checkpoint, save_checkpoint, weights_fingerprint
from lora import (
    DEFAULT_TARGETS,
    LoRALayer,
    apply_lora,
    count_parameters,
    freeze_all_but_lora,
    load_adapters,
    lora_layers,
    lora_state_dict,
    merge_lora,
    unmerge_lora,
)
from model import GPTConfig, GPTModel
from support.errors import CheckpointError
from support.files import atomic_save
from tokenizer import BPETokenizer


class TinyBlock(nn.Module):
    """The four GPT linears (same names, odd sizes) plus a classification head."""

    def __init__(self, d: int = 12, hidden: int = 20, classes: int = 3):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(3 * d, d)
        self.fc_in = nn.Linear(d, hidden)
        self.fc_out = nn.Linear(hidden, d, bias=False)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.out_proj(torch.tanh(self.qkv(x)))
        x = x + self.fc_out(torch.relu(self.fc_in(x)))
        return self.head(x)


def tiny_gpt() -> GPTModel:
    torch.manual_seed(0)
    return GPTModel(GPTConfig(vocab_size=64, context_length=16, n_layer=2, n_head=2, n_embd=32))


def randomize_adapters(model: nn.Module) -> None:
    """Stand-in for training: give every B a nonzero value so the adapters matter."""
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_B.normal_(std=0.1)


@settings(max_examples=25, deadline=None)
@given(
    in_features=st.integers(1, 40), out_features=st.integers(1, 40), r=st.integers(1, 16),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2), bias=st.booleans(),
)
def test_fresh_adapter_leaves_output_exactly_unchanged(in_features, out_features, r, batch, bias):
    assume(r <= min(in_features, out_features))  # a higher rank is refused (no more directions)
    torch.manual_seed(0)
    linear = nn.Linear(in_features, out_features, bias=bias)
    x = torch.randn(*batch, in_features)
    expected = linear(x)
    layer = LoRALayer(linear, r=r, alpha=2 * r)
    assert torch.equal(layer(x), expected)
    # Shapes, scaling and initialisation as in PEFT: A kaiming-uniform(a=sqrt(5)), B zero.
    assert layer.lora_A.shape == (r, in_features) and layer.lora_B.shape == (out_features, r)
    assert layer.scaling == 2.0
    assert torch.count_nonzero(layer.lora_B) == 0
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(in_features)  # the kaiming bound
    assert not any(p.requires_grad for p in linear.parameters())


def test_forward_is_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(8, 5), r=2, alpha=6)
    randomize_adapters(layer)
    x = torch.randn(4, 8)
    expected = layer.linear(x) + x @ layer.lora_A.T @ layer.lora_B.T * 3.0
    torch.testing.assert_close(layer(x), expected)


def test_dropout_only_touches_the_adapter_input():
    torch.manual_seed(0)
    layer = LoRALayer(nn.Linear(8, 5), r=2, dropout=0.5)
    x = torch.randn(64, 8)
    assert torch.equal(layer(x), layer.linear(x))  # B = 0: dropout cannot matter yet
    randomize_adapters(layer)
    torch.manual_seed(1)
    trained = layer(x)
    torch.manual_seed(1)  # the same draw, as a mask: zeros or 1 / (1 - p)
    mask = torch.nn.functional.dropout(torch.ones_like(x), 0.5, training=True)
    dropped = layer.linear(x) + (x * mask) @ layer.lora_A.T @ layer.lora_B.T * layer.scaling
    torch.testing.assert_close(trained, dropped)  # the base path saw x itself
    layer.eval()  # dropout off: deterministic, the plain update
    assert torch.equal(layer(x), layer(x)) and not torch.allclose(layer(x), trained)


def test_apply_lora_to_model_is_exact_noop_and_idempotent():
    torch.manual_seed(0)
    model = TinyBlock()
    x = torch.randn(2, 5, 12)
    expected = model(x)
    apply_lora(model, r=4)
    first = {name: id(m) for name, m in model.named_modules()}
    assert torch.equal(model(x), expected)
    assert apply_lora(model, r=4) is model  # second application changes nothing
    assert {name: id(m) for name, m in model.named_modules()} == first
    layers = lora_layers(model)
    assert len(layers) == 4
    assert not any(isinstance(layer.linear, LoRALayer) for layer in layers)
    assert isinstance(model.head, nn.Linear)


def test_merge_matches_unmerged_and_unmerge_restores_the_weight():
    torch.manual_seed(0)
    model = TinyBlock()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, r=4, alpha=8)
    randomize_adapters(model)
    x = torch.randn(3, 7, 12)
    unmerged = model(x)
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model))
    merged = model(x)
    merge_lora(model)  # merging twice must not add the update twice
    torch.testing.assert_close(model(x), merged)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(model.qkv.linear.weight, original["qkv.weight"])
    unmerge_lora(model)
    assert not any(layer.merged for layer in lora_layers(model))
    torch.testing.assert_close(model.qkv.linear.weight, original["qkv.weight"])
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)


def test_only_adapters_and_head_receive_gradients():
    torch.manual_seed(0)
    model = apply_lora(TinyBlock(), r=4)
    freeze_all_but_lora(model, trainable_extra=("head",))
    randomize_adapters(model)
    model(torch.randn(2, 5, 12)).square().sum().backward()
    for name, param in model.named_parameters():
        is_trainable = "lora_" in name or name.startswith("head.")
        assert param.requires_grad == is_trainable, name
        assert (param.grad is not None) == is_trainable, name
        if is_trainable:
            assert param.grad.abs().sum() > 0, name


@settings(max_examples=10, deadline=None)
@given(r=st.integers(1, 12))
def test_parameter_counts_follow_the_formula(r):
    torch.manual_seed(0)
    model = TinyBlock()
    base_total = sum(p.numel() for p in model.parameters())
    apply_lora(model, r=r)
    freeze_all_but_lora(model)
    expected = sum(r * (m.in_features + m.out_features) for m in lora_layers(model))
    assert expected == r * ((12 + 36) + (36 + 12) + (12 + 20) + (20 + 12))
    assert count_parameters(model) == (expected, base_total + expected)


def test_lora_state_dict_holds_only_the_adapters():
    torch.manual_seed(0)
    model = apply_lora(TinyBlock(), r=3)
    randomize_adapters(model)
    state = lora_state_dict(model)
    assert sorted(state) == sorted(
        f"{name}.lora_{ab}" for name in DEFAULT_TARGETS for ab in "AB"
    )
    assert state["fc_in.lora_A"].shape == (3, 12) and state["fc_in.lora_B"].shape == (20, 3)
    # Same base weights + the saved adapters = the same model.
    torch.manual_seed(0)
    fresh = apply_lora(TinyBlock(), r=3)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and not any("lora_" in key for key in missing)
    x = torch.randn(2, 12)
    torch.testing.assert_close(fresh(x), model(x))


def test_targets_choose_which_layers_get_adapters():
    model = apply_lora(TinyBlock(), r=2, targets=("qkv", "fc_out"))
    assert isinstance(model.qkv, LoRALayer) and isinstance(model.fc_out, LoRALayer)
    assert isinstance(model.out_proj, nn.Linear) and isinstance(model.fc_in, nn.Linear)
    apply_lora(model, r=2, targets=("out_proj",))  # adding more targets later works too
    assert isinstance(model.out_proj, LoRALayer)


def test_adapters_follow_the_base_dtype():
    layer = LoRALayer(nn.Linear(8, 4).to(torch.bfloat16), r=2)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.bfloat16
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    assert layer(x).dtype == torch.bfloat16


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="rank"):
        LoRALayer(nn.Linear(4, 4), r=0)
    with pytest.raises(ValueError, match=r"rank r \(--rank\) must be at most 4, the smaller "
                       r"side of the 4 x 6 Linear it adapts, got 100,000,000\."):
        LoRALayer(nn.Linear(4, 6), r=100_000_000)  # refused before anything is allocated
    with pytest.raises(ValueError, match="dropout"):
        LoRALayer(nn.Linear(8, 8), dropout=1.0)
    for alpha in (0, -4.0):
        with pytest.raises(ValueError, match="alpha must be positive"):
            LoRALayer(nn.Linear(8, 8), alpha=alpha)
    with pytest.raises(ValueError, match="in_features"):
        LoRALayer(nn.ReLU())
    with pytest.raises(ValueError, match="twice"):
        LoRALayer(LoRALayer(nn.Linear(8, 8)))
    with pytest.raises(ValueError, match="no module named"):
        apply_lora(TinyBlock(), targets=("q_proj",))
    with pytest.raises(ValueError, match="apply_lora first"):
        freeze_all_but_lora(TinyBlock())
    with pytest.raises(ValueError, match="match no parameters"):
        freeze_all_but_lora(apply_lora(TinyBlock()), trainable_extra=("classifier",))


def test_gpt_model_with_lora():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 64, (2, 10))
    expected = model(idx)
    base_params = sum(p.numel() for p in model.parameters())
    apply_lora(model, r=4)
    apply_lora(model, r=4)
    assert torch.equal(model(idx), expected)
    assert len(lora_layers(model)) == 4 * 2
    freeze_all_but_lora(model)
    trainable, total = count_parameters(model)
    per_block = 4 * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    assert trainable == 2 * per_block and total == base_params + trainable
    assert not model.tok_emb.weight.requires_grad  # tied to lm_head: stays frozen
    assert "blocks.0.attn.qkv.lora_A" in lora_state_dict(model)

    randomize_adapters(model)
    unmerged, _ = model(idx, use_cache=True)
    merge_lora(model)
    torch.testing.assert_close(model(idx), unmerged, rtol=1e-4, atol=1e-5)


def test_head_extra_does_not_unfreeze_the_tied_lm_head():
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.gpt = tiny_gpt()
            self.head = nn.Linear(32, 2)

    model = Classifier()
    apply_lora(model, r=2)
    freeze_all_but_lora(model, trainable_extra=("head",))
    assert model.head.weight.requires_grad and model.head.bias.requires_grad
    assert not model.gpt.lm_head.weight.requires_grad


# ---------------------------------------------------------------------------- adapter files

ADAPTERS = {"r": 2, "alpha": 4.0, "dropout": 0.0, "targets": ["qkv", "fc_out"]}
BASE_CONFIG = GPTConfig(vocab_size=320, context_length=16, n_layer=2, n_head=2, n_embd=32)


def adapt(gpt: GPTModel, lora: dict) -> GPTModel:
    """What training did to the base: wrap the targets, train only the adapters."""
    apply_lora(gpt, r=lora["r"], alpha=lora["alpha"], dropout=lora["dropout"],
               targets=lora["targets"])
    return freeze_all_but_lora(gpt)


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    tok = BPETokenizer()
    tok.train("the adapters sit on top of a frozen base model " * 20, 270)
    return tok


def save_adapters(path, model: nn.Module, tokenizer: BPETokenizer, base_path, fingerprint: str,
                  lora: dict = ADAPTERS) -> None:
    """An adapter file as the finetuning scripts write one: the adapters, their settings and
    the base's identity."""
    atomic_save(make_checkpoint("lora-classifier", lora_state_dict(model), BASE_CONFIG, tokenizer,
                                base_path=str(base_path), base_fingerprint=fingerprint,
                                lora=lora), path)


@pytest.fixture
def adapter_file(tmp_path, tokenizer):
    """(a model adapted on a saved base and trained, its adapter file, the base's path)."""
    torch.manual_seed(0)
    base = GPTModel(BASE_CONFIG)
    base_path = tmp_path / "base.pth"
    save_checkpoint(base_path, base, tokenizer)
    fingerprint = weights_fingerprint(base.state_dict())
    model = adapt(base, ADAPTERS)
    randomize_adapters(model)
    path = tmp_path / "adapters.pth"
    save_adapters(path, model, tokenizer, base_path, fingerprint)
    return model.eval(), path, base_path


def test_adapters_go_back_onto_their_base_with_identical_outputs(tokenizer, adapter_file):
    model, path, _ = adapter_file
    loaded, loaded_tokenizer = load_adapters(read_checkpoint(path), path, None, adapt)
    ids = torch.randint(0, BASE_CONFIG.vocab_size, (3, 10))
    torch.testing.assert_close(loaded.eval()(ids), model(ids), rtol=0, atol=0)
    assert loaded_tokenizer.to_dict() == tokenizer.to_dict()
    stored = read_checkpoint(path)["state_dict"]
    assert set(stored) == {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert all(k.endswith(("lora_A", "lora_B")) for k in stored)


def test_adapters_take_the_base_from_an_explicit_path(tmp_path, adapter_file):
    model, path, base_path = adapter_file
    moved = tmp_path / "elsewhere" / "base.pth"
    moved.parent.mkdir()
    base_path.rename(moved)
    loaded, _ = load_adapters(read_checkpoint(path), path, moved, adapt)
    ids = torch.randint(0, BASE_CONFIG.vocab_size, (2, 6))
    torch.testing.assert_close(loaded.eval()(ids), model(ids), rtol=0, atol=0)


def test_adapters_on_a_different_base_are_refused(tmp_path, tokenizer, adapter_file):
    _, path, _ = adapter_file
    torch.manual_seed(99)
    other = tmp_path / "other.pth"
    save_checkpoint(other, GPTModel(BASE_CONFIG), tokenizer)
    with pytest.raises(CheckpointError, match="was trained on a different base model"):
        load_adapters(read_checkpoint(path), path, other, adapt)


def test_adapters_without_their_base_say_pass_base(adapter_file):
    _, path, base_path = adapter_file
    base_path.unlink()
    with pytest.raises(FileNotFoundError, match=f"^{path} holds adapters for the base model "
                       f"{base_path}, which is not here: pass --base with that file's path.$"):
        load_adapters(read_checkpoint(path), path, None, adapt)
    with pytest.raises(FileNotFoundError, match="run python main.py first"):  # --base given
        load_adapters(read_checkpoint(path), path, base_path, adapt)


@pytest.mark.parametrize("alpha", [-3, float("nan")], ids=["negative", "nan"])
def test_an_adapter_file_with_an_unusable_alpha_is_refused_before_its_base_loads(
        tmp_path, tokenizer, adapter_file, alpha):
    """The file's own sentence, naming its metadata entry (not --alpha, which the user never
    typed), and before the base is read: the base file is gone, yet that is not the error."""
    model, _, base_path = adapter_file
    path = tmp_path / "bad_alpha.pth"
    save_adapters(path, model, tokenizer, base_path,
                  read_checkpoint(adapter_file[1])["metadata"]["base_fingerprint"],
                  lora={**ADAPTERS, "alpha": alpha})
    base_path.unlink()
    with pytest.raises(CheckpointError, match=rf"^{path}: its metadata entry 'lora.alpha' is "
                       rf"invalid \({alpha!r}\); "):
        load_adapters(read_checkpoint(path), path, None, adapt)


def test_adapters_for_other_layers_are_refused_before_anything_is_allocated(tmp_path, tokenizer,
                                                                            adapter_file):
    """A file whose settings name other layers than its tensors (same rank) is one sentence,
    and ``adapt`` never runs on it."""
    model, _, base_path = adapter_file
    path = tmp_path / "other_layers.pth"
    save_adapters(path, model, tokenizer, base_path,
                  read_checkpoint(adapter_file[1])["metadata"]["base_fingerprint"],
                  lora={**ADAPTERS, "targets": ["qkv"]})

    def must_not_run(gpt: GPTModel, lora: dict) -> GPTModel:
        raise AssertionError("adapt ran on a file that does not fit its base")
    with pytest.raises(CheckpointError, match=rf"^{path} does not match its base model: .* "
                       r"r=2 on \['qkv'\] makes\.$"):
        load_adapters(read_checkpoint(path), path, base_path, must_not_run)
