"""Weight decay (decoupled, coupled, or proximal) and per-step scaling of the update."""

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


def proximal_weight_decay(lr: float, rate: float) -> Transform:
    """p <- p / (1 + lr * rate): the proximal step of the L2 penalty, applied after the update."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        if rate != 0:
            p.div_(1 + lr * rate)
        return u

    return Transform(update)


def scale_by(factor: Tensor) -> Transform:
    """u <- factor * u, for a scalar tensor computed once per step (here: global-norm clipping)."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        return u * factor.to(u.device)

    return Transform(update)
