"""Lion: the sign of an interpolated momentum, found by program search."""

from __future__ import annotations

from types import SimpleNamespace

from ..core import Betas, ChainOptimizer, NonNegative, Transform, register
from ..transforms.decay import weight_decay
from ..transforms.sign import sign_momentum
from ..transforms.steps import sgd_step


@register("lion", paper="Chen et al., Symbolic Discovery of Optimization Algorithms", year=2023,
          oracle="reference written from the paper's Algorithm 2 (tests/optim/test_lion.py)")
class Lion(ChainOptimizer):
    """Lion (EvoLved Sign Momentum): every coordinate moves by exactly lr, in the sign of a momentum.

    p <- p (1 - lr wd);  c = b1 m + (1 - b1) g;  p <- p - lr sign(c);  m <- b2 m + (1 - b2) g
    The momentum m starts at zero; sign(0) = 0, so a coordinate with c = 0 does not move.

    Defaults: the paper's Algorithm 2 and its recommendations (lr=1e-4, betas=(0.9, 0.99), weight_decay=0).
    Because the update has unit size per coordinate, the paper advises a learning rate 3-10x smaller than
    AdamW's and a weight decay 3-10x larger, keeping lr * wd similar.
    Chen, Liang, Huang, Real, Wang, Pham, Dong, Luong, Hsieh, Lu & Le, "Symbolic Discovery of Optimization
    Algorithms", NeurIPS 2023, arXiv:2302.06675.
    """

    defaults = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    ranges = dict(lr=NonNegative, betas=Betas(2), weight_decay=NonNegative)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        beta1, beta2 = h.betas
        return (
            weight_decay(h.lr, h.weight_decay),
            sign_momentum(beta1, beta2),
            sgd_step(h.lr),
        )
