"""Bounded step sizes: Adam's per-coordinate step size clipped into a band that closes on an SGD rate."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform


def dynamic_bounds(final_lr: float, gamma: float, t: float) -> tuple[float, float]:
    """AdaBound's band at step t: [final_lr (1 - 1 / (gamma t + 1)), final_lr (1 + 1 / (gamma t))].

    Both ends tend to final_lr as t grows; gamma sets how fast. gamma = 0 leaves the band open,
    [0, inf), and the step is Adam's.
    """
    lower = final_lr * (1 - 1 / (gamma * t + 1))
    upper = final_lr * (1 + 1 / (gamma * t)) if gamma * t > 0 else math.inf
    return lower, upper


def bounded_adam_step(
    lr: float, final_lr: float, gamma: float, beta1: float, beta2: float, eps: float, second: str = "exp_avg_sq"
) -> Transform:
    """p <- p - clip(lr sqrt(1 - beta2^t) / (1 - beta1^t) / (sqrt(v) + eps), lower_t, upper_t) * m.

    m is read from state["exp_avg"], v from state[second] (the running maximum for AMSBound); the
    band [lower_t, upper_t] is `dynamic_bounds(final_lr, gamma, t)`. The bias corrections sit in the step
    size, before the clip, as in the authors' code (Luo et al., 2019): eps is added to the uncorrected sqrt(v).
    """

    def coefficients(t: float) -> tuple[float, float, float, float]:
        lower, upper = dynamic_bounds(final_lr, gamma, t)
        return (eps, lr * math.sqrt(1 - beta2**t) / (1 - beta1**t), lower, upper)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        denom = s[second].sqrt().add_(c[0])
        rates = torch.empty_like(denom).fill_(c[1]).div_(denom).clamp_(c[2], c[3])
        p.sub_(rates.mul_(s["exp_avg"]))
        return u

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True,
                            native=("bounded_step", "exp_avg", second))
