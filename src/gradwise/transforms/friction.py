"""diffGrad's friction: damp the momentum where the gradient has stopped changing (Dubey et al., 2019).

The friction coefficient is the sigmoid of the absolute change of the gradient since the previous step,
xi = sigmoid(|g_prev - g|), in [0.5, 1): close to 0.5 where the gradient is locally constant (near a
flat optimum, the step halves) and close to 1 where it changes fast. On a parameter's first step the
previous gradient is zero, as in the paper, so xi = sigmoid(|g|).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state
from .steps import folded_coefficients

LOG2_E = 1 / math.log(2)
# 2^f on [0, 1]: a degree-6 polynomial fit for relative error (at most 1.9e-9; in float32 within one unit in the
# last place), lowest degree first
EXP2_FRACTION = (1.0000000018629913, 0.6931469832666615, 0.24022984349140653, 0.055483309391873306,
                 0.009678906701186301, 0.0012439082689481157, 0.00021704331961960359)


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


def friction_adam_step(lr: float, beta1: float, beta2: float, eps: float, first: str = "exp_avg",
                       second: str = "exp_avg_sq", previous: str = "previous_grad") -> Transform:
    """diffGrad's step, friction included, with one division per element:
        p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) m / ((1 + exp(-|g_prev - g|)) (sqrt(v) + eps));   g_prev <- g
    i.e. xi m / (sqrt(v) + eps) with xi = sigmoid(|g_prev - g|) = 1 / (1 + exp(-|g_prev - g|)), its
    reciprocal folded into the denominator (`diff_friction` then `folded_adam_step`, the same numbers within
    rounding). exp(-x) is computed as 2^(-x log2(e)) (`exp2_nonpositive`), cheaper than exp on the CPU (the
    compiled diffGrad step is compute-bound); the two differ by the rounding of x log2(e), which changes xi by
    less than float32's resolution. Run it after `first_moment` and `second_moment`; g is the incoming update.
    """

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        prev = s[previous]
        inverse_friction = exp2_nonpositive((prev - u).abs_().mul_(-LOG2_E)).add_(1)  # 1 / xi
        prev.copy_(u)
        p.addcdiv_(s[first], s[second].sqrt().add_(c[0]).mul_(inverse_friction), value=c[1])
        return u

    def direction(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        return s[first]  # the step subtracts a positive multiple of m (see `Transform.direction`)

    return kernel_transform(kernel, folded_coefficients(lr, beta1, beta2, eps), zeros_state(previous), writes=True,
                            elementwise=True, direction=direction, native=("friction_step", first, second, previous))


def exp2_nonpositive(x: Tensor) -> Tensor:
    """2^x for x <= 0 (NaN stays NaN). Eagerly and in float64, torch.exp2. Compiled in float32: 2^n p(x - n),
    n = floor(x) (x clamped at -126: 2^-126 is below float32's resolution next to the 1 it is added to), p the
    polynomial EXP2_FRACTION and 2^n written into the exponent bits: a few multiply-adds that inductor fuses into
    the step's loop, where a call to exp2 per vector of 8 took a sixth of the compiled diffGrad step."""
    if x.dtype != torch.float32 or not torch.compiler.is_compiling():
        return torch.exp2(x)
    x = x.clamp(min=-126.0)
    whole = torch.floor(x)
    fraction = x - whole
    power = torch.full_like(x, EXP2_FRACTION[-1])
    for coefficient in reversed(EXP2_FRACTION[:-1]):
        power = power * fraction + coefficient
    scale = ((whole.to(torch.int32) + 127) << 23).view(torch.float32)  # 2^n, n in [-126, 0]
    return power * scale
