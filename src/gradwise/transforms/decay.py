"""Weight decay, decoupled (AdamW) or coupled (L2 added to the gradient)."""

from __future__ import annotations

from torch import Tensor

from ..core import Transform


def weight_decay(lr: float, rate: float, decoupled: bool = True) -> Transform:
    """Decoupled: p <- p (1 - lr * rate) (Loshchilov & Hutter, 2019). Coupled: u <- u + rate * p."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        if rate == 0:
            return u
        if decoupled:
            p.mul_(1 - lr * rate)
            return u
        return u.add(p, alpha=rate)

    return Transform(update)
