"""Muon: orthogonalize's answer is close to the exact U V^T; without Muon groups it is AdamW."""

from itertools import islice

import pytest
import torch
import torch.nn.functional as F
from test_training import CFG, loaders

from model import GPTConfig, GPTModel
from muon import Muon, orthogonalize
from training import lm_loss


@pytest.mark.parametrize("shape", [(32, 64), (64, 32)])
def test_orthogonalize_keeps_the_directions_and_evens_out_the_singular_values(shape):
    g = 100 * torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    o = orthogonalize(g)
    singular_values = torch.linalg.svdvals(o)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25
    u, _, vh = torch.linalg.svd(g, full_matrices=False)  # the exact answer: U V^T
    assert F.cosine_similarity(o.flatten(), (u @ vh).flatten(), dim=0) > 0.98


def test_muon_without_muon_groups_is_exactly_adamw():
    def groups(model):
        return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                {"params": [p for p in model.parameters() if p.dim() < 2]}]

    def no_bias_model():  # a key bias has zero gradient (softmax ignores it): pure noise
        torch.manual_seed(0)
        return GPTModel(GPTConfig(**{**CFG.to_dict(), "bias": False}))

    a, b = no_bias_model(), no_bias_model()
    adamw = torch.optim.AdamW(groups(a), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0)
    muon = Muon(groups(b), lr=1e-2, betas=(0.9, 0.99))
    train, _ = loaders()
    for batch in islice(train, 5):
        for model, opt in ((a, adamw), (b, muon)):
            lm_loss(model, batch).backward()
            opt.step()
            opt.zero_grad()
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5)
