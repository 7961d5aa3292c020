"""AdamP and SGDP: Adam and SGD whose updates lose their radial part on scale-invariant weights."""

from __future__ import annotations

from types import SimpleNamespace

from torch.optim.optimizer import required

from ..core import (
    Beta,
    Betas,
    ChainOptimizer,
    Flag,
    NonNegative,
    Transform,
    UnitInterval,
    register,
)
from ..transforms.moments import adam_direction, first_moment, second_moment
from ..transforms.momentum import dampened, heavy_ball, replace_buffer
from ..transforms.projection import radial_projection
from ..transforms.steps import bias_corrected_step, sgd_step

PAPER = "Heo et al., AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights"


@register("adamp", paper=PAPER, year=2021, oracle="adamp.AdamP (PyPI adamp 0.3.0)")
class AdamP(ChainOptimizer):
    """AdamP: Adam that removes the radial part of its update on scale-invariant weights.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  d = m / (sqrt(v / (1 - b2^t)) + eps)
      (nesterov=True: d = (b1 m + (1 - b1) g) / (sqrt(v / (1 - b2^t)) + eps));
    for p of 2 or more dimensions, if max_i |cos(g_i, p_i)| < delta / sqrt(n) over the channel-wise view
      (rows p_i = p[i] of length n), else over the layer-wise view (p as one row, n = p.numel()):
      d <- d - p_n <p_n, d> in that view (p_n = p / (||p|| + eps) per row) and r = wd_ratio; else r = 1;
    p <- p (1 - lr weight_decay r);  p <- p - lr / (1 - b1^t) d.

    Defaults: the authors' package adamp 0.3.0 (lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    delta=0.1, wd_ratio=0.1, nesterov=False).
    This class reproduces that package's trajectory (tests/optim/test_adamp.py).
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021, arXiv:2006.08217.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, delta=0.1, wd_ratio=0.1,
                    nesterov=False)
    ranges = dict(lr=NonNegative, betas=Betas(2), eps=NonNegative, weight_decay=NonNegative,
                  delta=NonNegative, wd_ratio=UnitInterval, nesterov=Flag())

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        beta1, beta2 = h.betas
        return (
            first_moment(beta1),
            second_moment(beta2),
            adam_direction(beta1, beta2, h.eps, h.nesterov),
            # projection and decay are one transform: the decay rate depends on the projection's verdict
            radial_projection(h.delta, h.wd_ratio, h.eps, decay=h.lr * h.weight_decay),
            bias_corrected_step(h.lr, beta1),
        )


@register("sgdp", paper=PAPER, year=2021, oracle="adamp.SGDP (PyPI adamp 0.3.0)")
class SGDP(ChainOptimizer):
    """SGDP: SGD with momentum that removes the radial part of its update on scale-invariant weights.

    b <- momentum b + (1 - dampening) g  (b starts at zero, so b_1 = (1 - dampening) g);
    d = g + momentum b if nesterov else b;
    for p of 2 or more dimensions, the projection test and d <- d - p_n <p_n, d> of AdamP, giving
      r = wd_ratio where it fires and r = 1 otherwise; without Nesterov, b <- d (the package projects its
      buffer in place, so the projected direction is what the next step's momentum builds on);
    p <- p (1 - lr weight_decay r / (1 - momentum));  p <- p - lr d.
    With momentum=0, b is (1 - dampening) g and never read again: it is not kept (state has no
    "momentum_buffer", as in torch.optim.SGD), which saves a parameter-sized read and write per step; a
    group whose momentum is raised from 0 later starts its buffers at zero (the package's would hold the
    last (1 - dampening) d).

    Defaults: the authors' package adamp 0.3.0 (lr required, momentum=0, dampening=0, weight_decay=0,
    nesterov=False, eps=1e-8, delta=0.1, wd_ratio=0.1); its conventions are kept, including the decay
    rate divided by (1 - momentum) and the dampening of the first step, which torch.optim.SGD skips.
    This class reproduces that package's trajectory (tests/optim/test_adamp.py).
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021, arXiv:2006.08217.
    """

    defaults = dict(lr=required, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, eps=1e-8,
                    delta=0.1, wd_ratio=0.1)
    # momentum < 1: the decay rate divides by 1 - momentum.
    ranges = dict(lr=NonNegative, momentum=Beta, dampening=UnitInterval, weight_decay=NonNegative,
                  nesterov=Flag(), eps=NonNegative, delta=NonNegative, wd_ratio=UnitInterval)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        if h.momentum:
            first: tuple[Transform, ...] = (heavy_ball(h.momentum, h.dampening, h.nesterov),)
        else:
            # The buffer would hold (1 - dampening) g, read by no later step: kept nowhere (d = g with Nesterov,
            # g + 0 b), which spares the step a parameter-sized read and write. Same trajectory.
            first = () if h.nesterov or h.dampening == 0 else (dampened(h.dampening),)
        return (
            *first,
            radial_projection(h.delta, h.wd_ratio, h.eps, decay=h.lr * h.weight_decay / (1 - h.momentum)),
            # Without Nesterov, the authors' update is their momentum buffer itself, projected in place.
            *(() if h.nesterov or not h.momentum else (replace_buffer(),)),
            sgd_step(h.lr),
        )
