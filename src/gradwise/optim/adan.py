"""Adan: adaptive Nesterov momentum estimated from gradient differences."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from torch import Tensor

from ..core import Betas, ChainOptimizer, Flag, NonNegative, Transform, register
from ..transforms.clipping import global_grad_norm
from ..transforms.decay import proximal_weight_decay, scale_by, weight_decay
from ..transforms.moments import first_moment, second_moment
from ..transforms.nesterov import nesterov_adaptive_step, nesterov_gradient


@register(
    "adan",
    paper="Xie et al., Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep Models",
    year=2022,
    oracle="reference transcribed from sail-sg/Adan adan.py (tests/optim/test_adan.py)",
)
class Adan(ChainOptimizer):
    """Adan: Adam-like steps along a Nesterov momentum estimated from the change of the gradient.

    With d_t = g_t - g_{t-1} (g_0 := g_1, so d_1 = 0) and betas = (b1, b2, b3):
      m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) d;   n <- b3 n + (1 - b3) (g + b2 d)^2
      update = (m / (1 - b1^t) + b2 v / (1 - b2^t)) / (sqrt(n / (1 - b3^t)) + eps)
      no_prox=False (proximal, default):  p <- (p - lr update) / (1 + lr wd)
      no_prox=True (decoupled):           p <- p (1 - lr wd) - lr update
    The betas weigh the old average, as in Adam: the paper's (1 - beta_i) are these b_i.

    Defaults: the authors' code, github.com/sail-sg/Adan, adan.py (lr=1e-3, betas=(0.98, 0.92, 0.99),
    eps=1e-8, weight_decay=0, no_prox=False), whose single-tensor update this class reproduces.
    max_grad_norm (default 0: off), from the same code: before the update every gradient is multiplied by
    min(1, max_grad_norm / (||g|| + eps)), ||g|| the norm of all gradients of all param groups together;
    the clipped gradient is the one remembered for the next difference. Two departures from that code:
    max_grad_norm and eps are read per param group (the authors read max_grad_norm from the constructor
    and eps from the last group), and p.grad is left unchanged (their code scales it in place). Step
    counts are per parameter, as everywhere in gradwise, where theirs are per group; they agree whenever
    the parameters of a group receive gradients together.

    Xie, Zhou, Li, Lin & Yan, "Adan: Adaptive Nesterov Momentum Algorithm for Faster Optimizing Deep
    Models", 2022, arXiv:2208.06677.
    """

    defaults = dict(lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0, no_prox=False,
                    max_grad_norm=0.0)
    ranges = dict(lr=NonNegative, betas=Betas(3), eps=NonNegative, weight_decay=NonNegative, no_prox=Flag(),
                  max_grad_norm=NonNegative)

    _grad_norm: Tensor | None = None

    def prepare(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        self._grad_norm = None
        if not any(group["max_grad_norm"] > 0 for group in self.param_groups):
            return  # no clipping: no need to read every gradient
        grads = [p.grad for _, params in work for p in params if p.grad is not None]  # all have one
        self._grad_norm = global_grad_norm(grads) if grads else None

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        clip: tuple[Transform, ...] = ()
        if h.max_grad_norm > 0 and self._grad_norm is not None:
            clip = (scale_by((h.max_grad_norm / (self._grad_norm + h.eps)).clamp(max=1.0)),)
        return (
            *clip,
            *((weight_decay(h.lr, h.weight_decay),) if h.no_prox else ()),
            first_moment(h.betas[0]),
            nesterov_gradient(h.betas[1]),
            second_moment(h.betas[2]),
            nesterov_adaptive_step(h.lr, h.betas, h.eps),
            *(() if h.no_prox else (proximal_weight_decay(h.lr, h.weight_decay),)),
        )
