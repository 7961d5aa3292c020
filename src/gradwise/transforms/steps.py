"""Step transforms: the last link of a chain, which writes the parameter."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from ..core import Transform, kernel_transform


def adam_step(lr: float, beta1: float, beta2: float, eps: float, second: str = "exp_avg_sq") -> Transform:
    """p <- p - lr m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t).

    Reads m from state["exp_avg"] and v from state[second] (for AMSGrad, the running maximum).
    """

    def coefficients(t: float) -> tuple[float, float, float]:
        return (-lr / (1 - beta1**t), (1 - beta2**t) ** 0.5, eps)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        denom = (s[second].sqrt() / c[1]).add_(c[2])
        p.addcdiv_(s["exp_avg"], denom, value=c[0])
        return u

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True, direction=_first_moment,
                            native=("adam_step", "exp_avg", second))


def _first_moment(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    """The sign of Adam's step: the denominator is positive, so the step subtracts a positive multiple of m."""
    return s["exp_avg"]


def _incoming(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    """The sign of a step that subtracts a positive multiple of the incoming update."""
    return u


def sgd_step(lr: float) -> Transform:
    """p <- p - lr u."""

    def coefficients(t: float) -> tuple[float]:
        return (-lr,)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.add_(u, alpha=c[0])
        return u

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True, direction=_incoming,
                            native=("sgd_step",))


def folded_adam_step(lr: float, beta1: float, beta2: float, eps: float, second: str = "exp_avg_sq") -> Transform:
    """p <- p - lr sqrt(1 - beta2^t) / (1 - beta1^t) u / (sqrt(v) + eps), v = state[second].

    Adam's step in the "more efficient" order of Kingma & Ba (2015), Section 2: both bias corrections
    are folded into the step size, so eps is added to the uncorrected sqrt(v). The direction is the
    incoming update u (for diffGrad, the friction-damped momentum), not state["exp_avg"].
    """

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.addcdiv_(u, s[second].sqrt().add_(c[0]), value=c[1])
        return u

    return kernel_transform(kernel, folded_coefficients(lr, beta1, beta2, eps), writes=True, elementwise=True)


def folded_coefficients(lr: float, beta1: float, beta2: float, eps: float) -> Callable[[float], tuple[float, float]]:
    """(eps, -lr sqrt(1 - beta2^t) / (1 - beta1^t)) at step t: the coefficients of a step whose bias corrections
    are folded into its size (`folded_adam_step`, diffGrad's `friction_adam_step`)."""

    def coefficients(t: float) -> tuple[float, float]:
        return (eps, -(lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)))

    return coefficients


def bias_corrected_step(lr: float, beta1: float) -> Transform:
    """p <- p - lr / (1 - b1^t) u: Adam's step size applied to a direction built from the raw first moment."""

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.add_(u, alpha=c[0])
        return u

    return kernel_transform(kernel, lambda t: (-lr / (1 - beta1**t),), writes=True, elementwise=True)
