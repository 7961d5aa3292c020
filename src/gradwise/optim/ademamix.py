"""AdEMAMix: Adam with a second, much slower momentum mixed into the numerator."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

from torch import Tensor

from ..core import (
    Betas,
    ChainOptimizer,
    Integer,
    NonNegative,
    Optional,
    Transform,
    kernel_transform,
    register,
    zeros_state,
)
from ..transforms.moments import first_moment, second_moment


def alpha_schedule(alpha: float, warmup: int | None) -> Callable[[float], float]:
    """alpha_t = min(t alpha / warmup, alpha): the linear warm-up of the authors' code (alpha without one)."""

    def at(t: float) -> float:
        return alpha * (t / float(warmup)) if warmup is not None and t < warmup else alpha

    return at


def _half_life(beta: float) -> float:
    # the number of steps after which an EMA with this beta has halved a weight, less one (as in the paper)
    return math.log(0.5) / math.log(beta + 1e-8) - 1


def beta3_schedule(beta3: float, beta_start: float, warmup: int | None) -> Callable[[float], float]:
    """beta3_t: the half-life interpolated linearly in t from that of beta_start (t=0) to that of beta3
    (t=warmup), then mapped back to a beta; beta3 from the warm-up's end on, or always without one."""

    def at(t: float) -> float:
        if warmup is None or t >= warmup:
            return beta3
        a = t / float(warmup)
        life = (1.0 - a) * _half_life(beta_start) + a * _half_life(beta3)
        return math.pow(0.5, 1 / (life + 1))

    return at


def scheduled_moment(beta: Callable[[float], float], key: str) -> Transform:
    """m <- beta_t m + (1 - beta_t) u, with beta_t = beta(t), kept in state[key]; passes u on unchanged."""

    def coefficients(t: float) -> tuple[float, float]:
        b = beta(t)
        return (b, 1 - b)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        s[key].mul_(c[0]).add_(u, alpha=c[1])
        return u

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True, native=("ema", key))


def ademamix_step(lr: float, beta1: float, beta2: float, alpha: Callable[[float], float], eps: float,
                  wd: float) -> Transform:
    """p <- p - lr ((m1 / (1 - b1^t) + alpha_t m2) / (sqrt(v / (1 - b2^t)) + eps) + wd p).

    One division per element: both bias corrections are applied as products by their reciprocals (the same
    numbers up to rounding; the compiled step, bound by the CPU's divider at one thread, had three).
    Its `direction` (the sign of what the step subtracts, read by the cautious mask) is that update itself
    with weight decay, and without it the numerator m1 / (1 - b1^t) + alpha_t m2 (the denominator is
    positive), which the compiled mask sum reads without v and p.
    """
    decays = wd != 0  # decided when the chain is built

    def coefficients(t: float) -> tuple[float, ...]:
        return (1 / math.sqrt(1 - beta2**t), eps, 1 / (1 - beta1**t), alpha(t), wd, -lr)

    def numerator(s: dict, c: tuple) -> Tensor:
        return (s["exp_avg_fast"] * c[2]).add_(s["exp_avg_slow"], alpha=c[3])

    def update(p: Tensor, s: dict, c: tuple) -> Tensor:
        denom = s["exp_avg_sq"].sqrt().mul_(c[0]).add_(c[1])
        step = numerator(s, c).div_(denom)
        if decays:
            step.add_(p, alpha=c[4])
        return step

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.add_(update(p, s, c), alpha=c[5])
        return u

    def direction(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        return update(p, s, c) if decays else numerator(s, c)

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True, direction=direction,
                            native=("ademamix_step_decay" if decays else "ademamix_step", "exp_avg_fast",
                                    "exp_avg_slow", "exp_avg_sq"))


@register("ademamix", paper="Pagliardini, Ablin & Grangier, The AdEMAMix Optimizer: Better, Faster, Older",
          year=2024, oracle="reference transcribed from the paper's Algorithm 1 (tests/optim/test_ademamix.py)")
class AdEMAMix(ChainOptimizer):
    """AdEMAMix: Adam whose numerator adds alpha times a slow EMA of the gradient to the usual fast one.

    With betas = (b1, b2, b3):
      m1 <- b1 m1 + (1 - b1) g;   m2 <- b3_t m2 + (1 - b3_t) g   (m2 is not bias-corrected)
      v <- b2 v + (1 - b2) g^2
      p <- p - lr ((m1 / (1 - b1^t) + alpha_t m2) / (sqrt(v / (1 - b2^t)) + eps) + wd p)
    Warm-ups (the authors' schedulers, off with None): alpha_t = min(t alpha / alpha_warmup, alpha);
    b3_t moves from b1 to b3 over beta3_warmup steps linearly in half-life, with
    h(b) = ln(0.5) / ln(b + 1e-8) - 1 and b3_t = 0.5^(1 / ((1 - t/T) h(b1) + (t/T) h(b3) + 1)).
    Weight decay is added to the normalised update, as in the authors' code (the same as decoupled decay
    by lr wd).

    Defaults: lr=1e-3, betas=(0.9, 0.999, 0.9999), eps=1e-8, weight_decay=0 and no warm-ups from the
    authors' code (github.com/apple/ml-ademamix, pytorch/ademamix.py); alpha=5.0 from the range the paper
    recommends (its code's constructor says 2.0). The paper advises warm-ups of the length of training for
    large b3.
    Pagliardini, Ablin & Grangier, "The AdEMAMix Optimizer: Better, Faster, Older", 2024, arXiv:2409.03137.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, beta3_warmup=None, alpha_warmup=None,
                    eps=1e-8, weight_decay=0.0)
    ranges = dict(lr=NonNegative, betas=Betas(3), alpha=NonNegative, beta3_warmup=Optional(Integer(1)),
                  alpha_warmup=Optional(Integer(1)), eps=NonNegative, weight_decay=NonNegative)

    def chain(self, h: SimpleNamespace):
        beta1, beta2, beta3 = h.betas
        alpha = alpha_schedule(h.alpha, h.alpha_warmup)
        return (
            first_moment(beta1, key="exp_avg_fast"),
            scheduled_moment(beta3_schedule(beta3, beta1, h.beta3_warmup), key="exp_avg_slow"),
            second_moment(beta2),
            ademamix_step(h.lr, beta1, beta2, alpha, h.eps, h.weight_decay),
        )
