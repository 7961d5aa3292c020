"""Moment estimates: exponential moving averages that a step transform later reads from the state."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Transform, zeros_state


def first_moment(beta: float, key: str = "exp_avg") -> Transform:
    """m <- beta m + (1 - beta) u, kept in state[key]; passes u on unchanged."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        s[key].lerp_(u, 1 - beta)
        return u

    return Transform(update, zeros_state(key))


def second_moment(beta: float, key: str = "exp_avg_sq") -> Transform:
    """v <- beta v + (1 - beta) u^2, kept in state[key]; passes u on unchanged."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        s[key].mul_(beta).addcmul_(u, u, value=1 - beta)
        return u

    return Transform(update, zeros_state(key))


def running_max(source: str = "exp_avg_sq", key: str = "max_exp_avg_sq") -> Transform:
    """AMSGrad's v_max <- max(v_max, v): a second moment that never decreases (Reddi et al., 2018)."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        torch.maximum(s[key], s[source], out=s[key])
        return u

    return Transform(update, zeros_state(key))
