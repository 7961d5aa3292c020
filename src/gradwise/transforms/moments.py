"""Moment estimates: exponential moving averages that a step transform later reads from the state."""

from __future__ import annotations

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

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True)


def second_moment(beta: float, key: str = "exp_avg_sq") -> Transform:
    """v <- beta v + (1 - beta) u^2, kept in state[key]; passes u on unchanged."""

    def coefficients(t: float) -> tuple[float, float]:
        return (beta, 1 - beta)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        s[key].mul_(c[0]).addcmul_(u, u, value=c[1])
        return u

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True)


def running_max(source: str = "exp_avg_sq", key: str = "max_exp_avg_sq") -> Transform:
    """AMSGrad's v_max <- max(v_max, v): a second moment that never decreases (Reddi et al., 2018)."""

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        torch.maximum(s[key], s[source], out=s[key])
        return u

    return kernel_transform(kernel, init=zeros_state(key), elementwise=True)
