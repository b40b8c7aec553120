"""Muon: an optimizer that moves every direction of a weight matrix by the same amount.

``training.py`` teaches the loop with AdamW; this chapter is the optimizer main.py's CPU preset
pretrains with (``--optimizer muon``), after Keller Jordan (2024) and nanochat's ``muon.py``.
AdamW scales each coordinate of a gradient by that coordinate's own history. Muon looks at a
weight matrix's gradient (its momentum) as a whole: written as U S V^T, its few large singular
values drown the rest, so a step mostly moves the directions that already dominate. Muon
replaces S by ones, stepping along U V^T, so rare directions learn as fast as common ones.

Computing U V^T exactly (an SVD) is slow; ``orthogonalize`` gets close enough with five
Newton-Schulz iterations, matrix products only. ``Muon`` applies that to the matrices inside
the blocks and keeps the plain AdamW update for everything else (embeddings, the tied output
head, biases, LayerNorm gains); ``training.configure_optimizer`` decides which is which.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of U V^T for g = U S V^T: the same directions, every singular value ~1.

    Five Newton-Schulz iterations of a quintic tuned to push singular values towards 1 fast:
    those that are not tiny end in about [0.7, 1.2], which trains as well as the exact U V^T.
    """
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)  # the Frobenius norm bounds every singular value: now all <= 1
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # iterate on the smaller Gram matrix x @ x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    """Muon for the weight matrices inside the blocks, AdamW for everything else.

    Adam scales every coordinate by its own history; Muon instead takes the momentum of a
    matrix's gradient and orthogonalizes it, so the update moves all of its directions by the
    same amount and rare directions learn as fast as dominant ones (Keller Jordan, 2024).
    Embeddings, the tied output head, biases and LayerNorm gains are not "matrices acting on
    hidden states", so their groups carry ``muon=False`` and get the plain AdamW update.
    (torch.optim.Muon orthogonalizes in bfloat16, which CPUs without bf16 run ~3x slower.)
    """

    def __init__(self, groups: list[dict], lr: float, betas: tuple[float, float],
                 momentum: float = 0.95, eps: float = 1e-8) -> None:
        super().__init__(groups, dict(lr=lr, betas=betas, momentum=momentum, eps=eps,
                                      weight_decay=0.0, muon=False))

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if wd:  # decoupled weight decay, as in AdamW (Muon and vector groups have none)
                    p.mul_(1 - lr * wd)
                if group["muon"]:
                    buf = state.setdefault("momentum", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    update = p.grad.lerp(buf, group["momentum"])  # Nesterov look-ahead
                    # Entries of RMS 1/sqrt(fan_in) whatever the shape (tall ones would be smaller).
                    scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                    p.add_(orthogonalize(update), alpha=-lr * scale)
                else:
                    if not state:
                        state.update(step=0, m=torch.zeros_like(p), v=torch.zeros_like(p))
                    beta1, beta2 = group["betas"]
                    state["step"] += 1
                    state["m"].lerp_(p.grad, 1 - beta1)
                    state["v"].lerp_(p.grad.square(), 1 - beta2)
                    m_hat = state["m"] / (1 - beta1 ** state["step"])
                    v_hat = state["v"] / (1 - beta2 ** state["step"])
                    p.addcdiv_(m_hat, v_hat.sqrt().add_(group["eps"]), value=-lr)
        return loss
