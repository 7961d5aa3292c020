"""Sign-based directions: the update keeps only the sign of an interpolated momentum (Lion)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Transform, zeros_state


def sign_momentum(beta1: float, beta2: float, key: str = "exp_avg") -> Transform:
    """u <- sign(b1 m + (1 - b1) u);  then m <- b2 m + (1 - b2) u (with the incoming u).

    The direction interpolates the momentum m (state[key], zero at the start) and the current update with
    beta1; the momentum itself is tracked with beta2. The direction is computed from m before m is
    updated, so the order inside this transform is the one of Lion (Chen et al., 2023, Algorithm 2).
    sign(0) = 0 and sign(+-inf) = +-1; a NaN stays NaN (torch.sign maps it to 0, which would hide a
    non-finite gradient when the engine's check is off; the paper's JAX code, jnp.sign, keeps it).
    """

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        m = s[key]
        c = m.mul(beta1).add_(u, alpha=1 - beta1)
        direction = torch.where(c.isnan(), c, c.sign())
        m.mul_(beta2).add_(u, alpha=1 - beta2)
        return direction

    return Transform(update, zeros_state(key))
