"""diffGrad's friction: damp the momentum where the gradient has stopped changing (Dubey et al., 2019).

The friction coefficient is the sigmoid of the absolute change of the gradient since the previous step,
xi = sigmoid(|g_prev - g|), in [0.5, 1): close to 0.5 where the gradient is locally constant (near a
flat optimum, the step halves) and close to 1 where it changes fast. On a parameter's first step the
previous gradient is zero, as in the paper, so xi = sigmoid(|g|).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state


def diff_friction(first: str = "exp_avg", previous: str = "previous_grad") -> Transform:
    """xi = sigmoid(|state[previous] - u|);  state[previous] <- u (a copy);  returns xi * m, m = state[first].

    Run it after `first_moment`: the returned update is the damped momentum that the step then scales.
    """

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        prev = s[previous]
        friction = torch.sigmoid((prev - u).abs_())
        prev.copy_(u)
        return friction.mul_(s[first])

    return kernel_transform(kernel, init=zeros_state(previous), elementwise=True)
