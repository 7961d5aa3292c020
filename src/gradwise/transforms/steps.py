"""Step transforms: the last link of a chain, which writes the parameter."""

from __future__ import annotations

from torch import Tensor

from ..core import Transform


def adam_step(lr: float, beta1: float, beta2: float, eps: float, second: str = "exp_avg_sq") -> Transform:
    """p <- p - lr m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t).

    Reads m from state["exp_avg"] and v from state[second] (for AMSGrad, the running maximum).
    """

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        step_size = lr / (1 - beta1**t)
        denom = (s[second].sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
        p.addcdiv_(s["exp_avg"], denom, value=-step_size)
        return u

    return Transform(update, writes=True)


def sgd_step(lr: float) -> Transform:
    """p <- p - lr u."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        p.add_(u, alpha=-lr)
        return u

    return Transform(update, writes=True)
