"""The belief in the gradient (Zhuang et al., 2020) and the rectified step of RAdam (Liu et al., 2020).

AdaBelief's second moment averages (g - m)^2, the squared distance of the gradient from its own
prediction m, instead of Adam's g^2: a gradient close to what the momentum expected earns a large step,
a surprising one a small step. The rectified step is RAdam's: while the second moment has seen too few
samples for its variance to be trusted, take a bias-corrected momentum step without it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state


def belief_second_moment(beta: float, eps: float, key: str = "exp_avg_var", first: str = "exp_avg") -> Transform:
    """s <- beta s + (1 - beta) (u - m)^2 + eps, kept in state[key]; m is state[first]; passes u on unchanged.

    Run it after `first_moment`: m is the average that already includes u. The eps added to s at every
    step is part of the paper's Algorithm 1 and of the authors' code.
    """

    def coefficients(t: float) -> tuple[float, float, float]:
        return (beta, 1 - beta, eps)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        residual = u - s[first]
        s[key].mul_(c[0]).addcmul_(residual, residual, value=c[1]).add_(c[2])
        return u

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True,
                            native=("belief", key, first))


def rectification(beta2: float, t: float) -> float | None:
    """RAdam's variance rectification r_t, or None while the SMA length rho_t is below 5.

    rho_inf = 2 / (1 - beta2) - 1;  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t);
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)).
    """
    beta2_t = beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2_t / (1 - beta2_t)
    if rho_t < 5:
        return None
    return math.sqrt((rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2))


def rectified_step(
    lr: float, beta1: float, beta2: float, eps: float, first: str = "exp_avg", second: str = "exp_avg_var"
) -> Transform:
    """RAdam's step: p <- p - lr r_t sqrt(1 - beta2^t) / (1 - beta1^t) m / (sqrt(v) + eps) when rho_t >= 5,
    else the SGD-with-momentum step p <- p - lr m / (1 - beta1^t).

    m is state[first], v is state[second]; r_t and rho_t are those of `rectification`. The bias
    correction of v is folded into the step size, so eps is added to the uncorrected sqrt(v), as in the
    code of RAdam and of AdaBelief (their `degenerated_to_sgd=True`).

    Coefficients (rectified, step, eps): the branch is the flag `rectified`. With 0-dim tensors (the
    compiled engine) both branches are one expression, m divided by sqrt(v) + eps or by 1; with a Python
    bool (eager) the kernel takes the branch, so that the SGD steps keep their single fused add.
    """

    def coefficients(t: float) -> tuple[bool, float, float]:
        r = rectification(beta2, t)
        if r is None:
            return (False, -lr / (1 - beta1**t), eps)
        return (True, -(lr * r * math.sqrt(1 - beta2**t) / (1 - beta1**t)), eps)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        rectified, step, eps_ = c
        if isinstance(rectified, bool):  # eager: the branch itself (bit-identical to the unsplit form)
            if rectified:
                p.addcdiv_(s[first], s[second].sqrt().add_(eps_), value=step)
            else:
                p.add_(s[first], alpha=step)
            return u
        denom = torch.where(rectified, s[second].sqrt().add_(eps_), 1.0)
        p.addcdiv_(s[first], denom, value=step)
        return u

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True,
                            native=("rect_step", first, second))
