"""What an adapter file says about itself must match the tensors it holds."""

import pytest
import torch

from support.checkpoint_checks import (
    adapter_metadata,
    check_config_fits_weights,
    check_weights,
    meta_shapes,
)
from support.errors import CheckpointError


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


def test_config_and_weights_agree_or_one_sentence_names_the_tensor():
    state = {"w": torch.zeros(2, 3)}
    check_config_fits_weights("m.pth", state, 1, 10, 10, lambda: {"w": torch.Size([2, 3])})
    with pytest.raises(CheckpointError, match=r"w should be \(4, 3\), the file holds \(2, 3\)"):
        check_config_fits_weights("m.pth", state, 1, 10, 10, lambda: {"w": torch.Size([4, 3])})
    with pytest.raises(CheckpointError, match="gpt.w should be .* holds nothing"):
        check_config_fits_weights("m.pth", state, 1, 10, 10, lambda: {"w": torch.Size([2, 3])},
                                  prefix="gpt.")


def test_meta_shapes_are_the_real_shapes_without_any_storage():
    def build():
        return torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LayerNorm(8),
                                   torch.nn.Linear(8, 3))
    real = {name: t.shape for name, t in build().state_dict().items()}
    assert meta_shapes(build) == real
    huge = meta_shapes(lambda: torch.nn.Linear(2**20, 2**20))  # 4 TiB if it were allocated
    assert huge["weight"] == (2**20, 2**20)


@pytest.mark.parametrize("name", [5, None, ("blocks", 0)], ids=["int", "none", "tuple"])
def test_a_weight_whose_name_is_not_text_is_one_sentence(name):
    # weights_only loading keeps any key: the loaders' name.rsplit / startswith would fail
    state = {"tok_emb.weight": torch.zeros(4, 2), name: torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"^x.pth: a weight is named .+, not with text; "):
        check_weights(state, "x.pth", 10_000)
