"""support/file_checks.py: what a file says about itself must match the tensors it holds."""

import pytest
import torch

from support.errors import CheckpointError
from support.file_checks import (
    adapter_metadata,
    check_config_sizes,
    check_weights,
    load_weights,
)


def adapter_file(r_meta: int, r_saved: int) -> dict:
    state = {"blocks.0.attn.qkv.lora_A": torch.zeros(r_saved, 8),
             "blocks.0.attn.qkv.lora_B": torch.zeros(24, r_saved)}
    lora = {"r": r_meta, "alpha": 16, "dropout": 0.0, "targets": ["qkv"]}
    return {"state_dict": state, "metadata": {"lora": lora, "base_fingerprint": "ab",
                                              "base_path": "model.pth"}}


def test_an_adapter_file_whose_rank_matches_its_tensors_is_accepted():
    lora, fingerprint, base = adapter_metadata(adapter_file(4, 4), "a.pth", None)
    assert (lora["r"], fingerprint, base) == (4, "ab", "model.pth")


def test_a_rank_larger_than_the_saved_adapters_is_refused():
    # apply_lora would allocate r x in_features per layer before load_state_dict could object.
    with pytest.raises(CheckpointError, match="'lora.r' is invalid"):
        adapter_metadata(adapter_file(2**40, 4), "a.pth", None)


def test_config_sizes_that_the_file_cannot_back_are_refused_before_any_shape_is_built():
    state = {"w": torch.zeros(2, 3)}
    check_config_sizes("m.pth", state, 1, 10, 10)
    with pytest.raises(CheckpointError, match="its tokenizer has 11 tokens but the model only 10"):
        check_config_sizes("m.pth", state, 1, 10, 11)
    with pytest.raises(CheckpointError, match="declares 2 layers but the file holds only 1"):
        check_config_sizes("m.pth", state, 2, 10, 10)


@pytest.mark.parametrize("name", [5, None, ("blocks", 0)], ids=["int", "none", "tuple"])
def test_a_weight_whose_name_is_not_text_is_one_sentence(name):
    # weights_only loading keeps any key: the loaders' name.rsplit / startswith would fail
    state = {"tok_emb.weight": torch.zeros(4, 2), name: torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"^x.pth: a weight is named .+, not with text; "):
        check_weights(state, "x.pth", 10_000)


def test_weights_that_do_not_fit_the_module_are_one_sentence_naming_the_file():
    layer = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"^m.pth does not match this model: size mismatch "
                       r"for weight: copying a param with shape torch.Size\(\[2, 4\]\)") as err:
        load_weights(layer, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "m.pth")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"^m.pth does not match this model: Missing key"):
        load_weights(layer, {"weight": torch.zeros(2, 3)}, "m.pth")
    load_weights(layer, {"weight": torch.ones(2, 3)}, "m.pth", strict=False)
    assert layer.weight.sum() == 6
