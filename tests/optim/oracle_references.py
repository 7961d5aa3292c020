"""Plain references written from the papers, shared by tests in several files (each step one formula).

C-AdamW (Liang et al., "Cautious Optimizers: Improving Training with One Line of Code", 2024,
arXiv:2411.16085, Algorithm 1 with AdamW's update) is the oracle of `gradwise.CAdamW`
(tests/optim/test_variants.py) and of the cautious engine option (tests/transforms/test_cautious.py):
AdamW's step d = m_hat / (sqrt(v_hat) + eps) is multiplied by the mask phi = 1[d g > 0], rescaled to
phi numel / (sum(phi) + 1) (mode True, the authors' code) or phi / max(mean(phi), 1e-3) (mode "mean");
the weight decay p <- p (1 - lr wd) is not masked. Decay and eps placement follow torch.optim.AdamW.

Lion (Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023, arXiv:2302.06675, Algorithm 2)
is the oracle of `gradwise.Lion` (test_lion.py) and, with the same mask on its sign step, of
`gradwise.CLion` (test_variants.py).
"""

from __future__ import annotations

import math

import torch


def cautious_scale(direction: torch.Tensor, g: torch.Tensor, mode: bool | str = True) -> torch.Tensor:
    """The rescaled mask that multiplies a step `direction` given the gradient `g`."""
    mask = (direction * g > 0).to(g.dtype)
    if mode == "mean":
        return mask / mask.mean().clamp(min=1e-3)
    return mask * (mask.numel() / (mask.sum() + 1))


class ReferenceCAdamW:
    """decay, moments, then the masked step; `masked_out` counts the coordinates the mask has zeroed."""

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, mode: bool | str = True):
        self.params, self.lr, self.betas, self.eps, self.wd = list(params), lr, betas, eps, weight_decay
        self.mode = mode
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0
        self.masked_out = 0

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            g = p.grad
            p.mul_(1 - self.lr * self.wd)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            direction = (m / (1 - b1**self.t)) / (v.sqrt() / math.sqrt(1 - b2**self.t) + self.eps)
            self.masked_out += int((direction * g <= 0).sum())
            p.sub_(self.lr * direction * cautious_scale(direction, g, self.mode))


class ReferenceLion:
    """Algorithm 2 of the paper, one line per formula: decay, interpolate, sign step, then the momentum.
    cautious=True masks the sign step as C-Lion does; update_momentum_first=True is a wrong order, to show
    that the oracle test notices."""

    def __init__(self, params, lr, betas, weight_decay, update_momentum_first=False, cautious=False):
        self.params, self.lr, self.betas, self.wd = list(params), lr, betas, weight_decay
        self.update_momentum_first, self.cautious = update_momentum_first, cautious
        self.m = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        for i, p in enumerate(self.params):
            g = p.grad
            if self.update_momentum_first:
                self.m[i] = b2 * self.m[i] + (1 - b2) * g
            c = b1 * self.m[i] + (1 - b1) * g
            p.copy_(p * (1 - self.lr * self.wd))
            direction = torch.sign(c)
            if self.cautious:
                direction = direction * cautious_scale(direction, g)
            p.copy_(p - self.lr * direction)
            if not self.update_momentum_first:
                self.m[i] = b2 * self.m[i] + (1 - b2) * g
