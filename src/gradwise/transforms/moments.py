"""Moment estimates: exponential moving averages that a step transform later reads from the state."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state


def first_moment(beta: float, key: str = "exp_avg") -> Transform:
    """m <- beta m + (1 - beta) u, kept in state[key]; passes u on unchanged."""

    def coefficients(t: float) -> tuple[float]:
        return (1 - beta,)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        s[key].lerp_(u, c[0])
        return u

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True, native=("lerp", key))


def second_moment(beta: float, key: str = "exp_avg_sq") -> Transform:
    """v <- beta v + (1 - beta) u^2, kept in state[key]; passes u on unchanged."""

    def coefficients(t: float) -> tuple[float, float]:
        return (beta, 1 - beta)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        s[key].mul_(c[0]).addcmul_(u, u, value=c[1])
        return u

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True, native=("second", key))


def running_max(source: str = "exp_avg_sq", key: str = "max_exp_avg_sq") -> Transform:
    """AMSGrad's v_max <- max(v_max, v): a second moment that never decreases (Reddi et al., 2018)."""

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        torch.maximum(s[key], s[source], out=s[key])
        return u

    return kernel_transform(kernel, init=zeros_state(key), elementwise=True, native=("max", key, source))


def adam_direction(beta1: float, beta2: float, eps: float, nesterov: bool) -> Transform:
    """AdamP's direction u <- m / (sqrt(v / (1 - b2^t)) + eps), or (b1 m + (1 - b1) u) / (...) with Nesterov's
    look-ahead.

    Reads m = state["exp_avg"] and v = state["exp_avg_sq"]; the 1 / (1 - b1^t) correction of m is left to
    `bias_corrected_step`, as in the authors' code, so that the projection sees the same vector as theirs.
    """

    def coefficients(t: float) -> tuple[float, float, float, float]:
        return (math.sqrt(1 - beta2**t), eps, beta1, 1 - beta1)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        denom = (s["exp_avg_sq"].sqrt() / c[0]).add_(c[1])
        ahead = s["exp_avg"].mul(c[2]).add_(u, alpha=c[3]) if nesterov else s["exp_avg"]
        return ahead / denom

    return kernel_transform(kernel, coefficients, elementwise=True)
