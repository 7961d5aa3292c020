"""Nesterov momentum from gradient differences, as Adan estimates it (Xie et al., 2022).

Adan avoids the extra gradient evaluation of Nesterov's method at an extrapolated point: the look-ahead
gradient is approximated by the current gradient plus a multiple of the gradient's change since the last
step, d_t = g_t - g_{t-1}. On a parameter's first step there is no previous gradient; g_0 is taken to be
g_1, so d_1 = 0 (the convention of the authors' code).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state


def nesterov_gradient(beta: float, key: str = "exp_avg_diff", previous: str = "prev_grad") -> Transform:
    """d = u - u_prev (0 on the first step);  state[key] <- beta state[key] + (1 - beta) d;  u <- u + beta d.

    The returned u + beta d is the Nesterov-corrected gradient whose square Adan's second moment
    averages. state[previous] keeps the last u for the next step's difference.
    """

    def coefficients(t: float) -> tuple[bool, float, float]:
        return (t == 1, beta, 1 - beta)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        first, b, one_minus_b = c
        prev = s[previous]
        # no earlier gradient on the first step: g_0 := g_1, so the first difference is zero
        if isinstance(first, bool):  # eager: the branch itself
            if first:
                prev.copy_(u)
        else:
            prev.copy_(torch.where(first, u, prev))
        diff = u - prev
        s[key].mul_(b).add_(diff, alpha=one_minus_b)
        prev.copy_(u)
        return diff.mul_(b).add_(u)

    return kernel_transform(kernel, coefficients, zeros_state(key, previous), elementwise=True,
                            native=("nesterov", key, previous))


def nesterov_adaptive_step(
    lr: float,
    betas: tuple[float, float, float],
    eps: float,
    first: str = "exp_avg",
    diff: str = "exp_avg_diff",
    second: str = "exp_avg_sq",
) -> Transform:
    """p <- p - lr (m_hat + beta2 d_hat) / (sqrt(n_hat) + eps), each moment divided by 1 - beta_i^t.

    Reads m, d and n from state[first], state[diff] and state[second]; betas = (beta1, beta2, beta3) are
    the coefficients of those three moving averages.
    """
    beta1, beta2, beta3 = betas

    def coefficients(t: float) -> tuple[float, float, float, float]:
        return (math.sqrt(1 - beta3**t), eps, -lr / (1 - beta1**t), -lr * beta2 / (1 - beta2**t))

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        denom = (s[second].sqrt() / c[0]).add_(c[1])
        p.addcdiv_(s[first], denom, value=c[2])
        p.addcdiv_(s[diff], denom, value=c[3])
        return u

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True,
                            native=("adan_step", first, diff, second))
