"""Weight decay (decoupled, coupled, or proximal) and per-step scaling of the update."""

from __future__ import annotations

from torch import Tensor

from ..core import Transform, kernel_transform


def weight_decay(lr: float, rate: float, decoupled: bool = True) -> Transform:
    """Decoupled: p <- p (1 - lr * rate) (Loshchilov & Hutter, 2019). Coupled: u <- u + rate * p."""
    if rate == 0:  # decided when the chain is built: the kernel never sees the number
        return kernel_transform(_identity, elementwise=True, native=("identity",))
    if decoupled:
        return kernel_transform(_decay_parameter, lambda t: (1 - lr * rate,), elementwise=True, native=("decay_p",))
    return kernel_transform(_decay_gradient, lambda t: (rate,), elementwise=True, native=("decay_g",))


def _identity(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    return u


def _decay_parameter(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    p.mul_(c[0])
    return u


def _decay_gradient(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    return u.add(p, alpha=c[0])


def proximal_weight_decay(lr: float, rate: float) -> Transform:
    """p <- p / (1 + lr * rate): the proximal step of the L2 penalty, applied after the update."""
    if rate == 0:
        return kernel_transform(_identity, elementwise=True, native=("identity",))
    return kernel_transform(_divide_parameter, lambda t: (1 + lr * rate,), elementwise=True, native=("div_p",))


def _divide_parameter(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    p.div_(c[0])
    return u


def scale_by(factor: Tensor) -> Transform:
    """u <- factor * u, for a scalar tensor computed once per step (here: global-norm clipping).

    The factor is the transform's coefficient (a 0-dim tensor already), so the kernel captures nothing.
    """
    return kernel_transform(_scale, lambda t: (factor,), elementwise=True, native=("scale_u",))


def _scale(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    return u * c[0].to(u.device)
