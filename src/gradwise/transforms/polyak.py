"""Polyak step sizes: a step size computed from the loss, its lower bound and a squared norm, once per step.

The step size is a 0-dim tensor computed on the device before the chains run (the optimizer's `prepare`,
which has the loss): the transforms here receive it as a coefficient, so no step reads a number back to
the host.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Transform, kernel_transform


def polyak_step_size(
    loss: Tensor, lower_bound: float, squared_norm: Tensor, c: float, eps: float, cap: float, sign: float = 1.0
) -> Tensor:
    """min(cap, max(0, sign loss - lower_bound) / (c squared_norm + eps)), 0 where the denominator is 0.

    Polyak's step size with the stochastic loss (Loizou et al., 2021): the distance to the lower bound of
    the loss, over c times the squared norm of the direction, capped at `cap` (SPS_max's gamma_b). A loss
    below its bound gives 0 (no step); a zero direction with eps=0 gives 0 (nothing to move along).
    sign=-1 is for maximisation: the step then minimises -loss, and lower_bound bounds -loss from below.
    """
    gap = (loss.to(squared_norm.dtype) * sign - lower_bound).clamp(min=0.0)
    denominator = squared_norm * c + eps
    step = torch.where(denominator > 0, gap / denominator, torch.zeros_like(gap))
    return step.clamp(max=cap)


def scaled_step(step_size: Tensor) -> Transform:
    """p <- p - step_size u, with step_size a 0-dim tensor of this step (a Polyak step size)."""

    def coefficients(t: float) -> tuple[Tensor]:
        return (step_size,)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.addcmul_(u, c[0].to(u.dtype), value=-1)
        return u

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True)


def scaled_weight_decay(step_size: Tensor, rate: float) -> Transform:
    """p <- p (1 - rate step_size): decoupled decay by the adaptive step size instead of lr (ALR-SMAG)."""
    if rate == 0:
        return kernel_transform(_identity, elementwise=True)

    def coefficients(t: float) -> tuple[Tensor]:
        return (1 - rate * step_size,)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.mul_(c[0].to(p.dtype))
        return u

    return kernel_transform(kernel, coefficients, elementwise=True)


def _identity(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    return u
