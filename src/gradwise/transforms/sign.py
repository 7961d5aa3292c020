"""Sign-based directions: the update keeps only the sign of an interpolated momentum (Lion)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state


def sign_keeping_nan(x: Tensor) -> Tensor:
    """sign(x) with NaN kept: -1, 0 or 1 (sign(-0.0) = 0.0, torch.sign's), NaN where x is NaN.

    The NaN test is x == x rather than isnan(): inductor's CPU code vectorises the comparison but runs
    isnan one element at a time, which made Lion's compiled step compute-bound.
    """
    return torch.where(x == x, x.sign(), x)


def sign_momentum(beta1: float, beta2: float, key: str = "exp_avg") -> Transform:
    """u <- sign(b1 m + (1 - b1) u);  then m <- b2 m + (1 - b2) u (with the incoming u).

    The direction interpolates the momentum m (state[key], zero at the start) and the current update with
    beta1; the momentum itself is tracked with beta2. The direction is computed from m before m is
    updated, so the order inside this transform is the one of Lion (Chen et al., 2023, Algorithm 2).
    sign(0) = 0 and sign(+-inf) = +-1; a NaN stays NaN (torch.sign maps it to 0, which would hide a
    non-finite gradient when the engine's check is off; the paper's JAX code, jnp.sign, keeps it).
    """

    def coefficients(t: float) -> tuple[float, float, float, float]:
        return (beta1, 1 - beta1, beta2, 1 - beta2)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        m = s[key]
        mixed = m.mul(c[0]).add_(u, alpha=c[1])
        direction = sign_keeping_nan(mixed)
        m.mul_(c[2]).add_(u, alpha=c[3])
        return direction

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True,
                            native=("sign_momentum", key))
