"""ADOPT: Adam with the gradient normalized by the second moment of the previous steps."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from ..core import (
    Betas,
    ChainOptimizer,
    Flag,
    NonNegative,
    Optional,
    Transform,
    kernel_transform,
    register,
    zeros_state,
)
from ..transforms.decay import weight_decay
from ..transforms.steps import sgd_step


def _decoupled_decay_after_first_step(lr: float, rate: float) -> Transform:
    """p <- p (1 - lr rate), from the second step on: the first step (which moves nothing) does not decay.

    The first step multiplies by 1 (exact), so the kernel has no branch.
    """
    if rate == 0:
        return weight_decay(lr, rate)

    def coefficients(t: float) -> tuple[float]:
        return (1.0 if t == 1 else 1 - lr * rate,)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.mul_(c[0])
        return u

    return kernel_transform(kernel, coefficients, elementwise=True, native=("decay_p",))


def adopt_momentum(beta1: float, beta2: float, eps: float, clip_exp: float | None) -> Transform:
    """ADOPT's direction: the momentum of the gradient normalized by the previous steps' second moment.

    t = 1: v <- u^2; m stays zero (and so, returned, moves nothing).
    t > 1: n = u / max(sqrt(v), eps), clipped to [-c, c] with c = (t - 1)^clip_exp unless clip_exp is
    None;  m <- b1 m + (1 - b1) n;  v <- b2 v + (1 - b2) u^2 (after n: v never sees the current u).
    Returns m. State: m in "exp_avg", v in "exp_avg_sq".
    """

    clipped = clip_exp is not None

    def coefficients(t: float) -> tuple[bool, float, float, float, float, float]:
        first = t == 1
        limit = (t - 1) ** clip_exp if clip_exp is not None else 0.0
        return (first, eps, limit, 1 - beta1, beta2, 1.0 if first else 1 - beta2)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        first, floor, limit, weight, beta, fresh = c
        m, v = s["exp_avg"], s["exp_avg_sq"]
        if first is True:  # eager (a Python bool): the first step only records v
            v.addcmul_(u, u)
            return m
        normed = u / torch.clamp(v.sqrt(), min=floor)
        if clipped:
            normed.clamp_(-limit, limit)
        # with a tensor flag the first step is one expression: m moves towards itself (stays zero) and
        # v <- b2 * 0 + 1 * u^2 = u^2
        m.lerp_(normed if isinstance(first, bool) else torch.where(first, m, normed), weight)
        v.mul_(beta).addcmul_(u, u, value=fresh)
        return m

    return kernel_transform(kernel, coefficients, zeros_state("exp_avg", "exp_avg_sq"), elementwise=True,
                            native=("adopt_clipped" if clipped else "adopt", "exp_avg", "exp_avg_sq"))


@register(
    "adopt",
    paper="Taniguchi et al., ADOPT: Modified Adam Can Converge with Any beta2 with the Optimal Rate",
    year=2024,
    oracle="reference written from the authors' adopt.py, iShohei220/adopt (tests/optim/test_adopt.py)",
)
class ADOPT(ChainOptimizer):
    """ADOPT: Adam whose second moment excludes the current gradient, with momentum after normalization.

    Step 1 only initializes v <- g^2 (the parameter does not move). Each later step t:
      g <- g + wd p (decouple=False);  p <- p (1 - lr wd) (decouple=True)
      n = g / max(sqrt(v), eps);  n <- clamp(n, -(t - 1)^clip_exp, (t - 1)^clip_exp) unless clip_exp is None
      m <- b1 m + (1 - b1) n;  p <- p - lr m;  v <- b2 v + (1 - b2) g^2
    There is no bias correction. With coupled decay, v is also built from g + wd p.

    Defaults: the authors' current code, github.com/iShohei220/adopt, adopt.py (lr=1e-3,
    betas=(0.9, 0.9999), eps=1e-6, weight_decay=0, decouple=False, clip_lambda = step ** 0.25 with
    step counted from 0, here clip_exp=0.25 with t - 1). The clipping was added by the authors after
    publication (their update of Nov 22, 2024) for stability early in training, with the convergence
    guarantee kept; clip_exp=None turns it off and gives the algorithm as first published.
    Taniguchi, Harada, Minegishi, Oshima, Jeong, Nagahara, Iiyama, Suzuki, Iwasawa & Matsuo, "ADOPT:
    Modified Adam Can Converge with Any beta2 with the Optimal Rate", NeurIPS 2024, arXiv:2411.02853.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0, decouple=False, clip_exp=0.25)
    ranges = dict(lr=NonNegative, betas=Betas(2), eps=NonNegative, weight_decay=NonNegative, decouple=Flag(),
                  clip_exp=Optional(NonNegative))

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        beta1, beta2 = h.betas
        if h.decouple:
            decay = _decoupled_decay_after_first_step(h.lr, h.weight_decay)
        else:
            decay = weight_decay(h.lr, h.weight_decay, decoupled=False)
        return (
            decay,
            adopt_momentum(beta1, beta2, h.eps, h.clip_exp),
            sgd_step(h.lr),
        )
