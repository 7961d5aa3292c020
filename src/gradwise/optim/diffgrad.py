"""diffGrad: Adam whose momentum is damped by a friction that falls as the gradient stops changing."""

from __future__ import annotations

from types import SimpleNamespace

from ..core import Betas, ChainOptimizer, NonNegative, Transform, register
from ..transforms.decay import weight_decay
from ..transforms.friction import friction_adam_step
from ..transforms.moments import first_moment, second_moment


@register("diffgrad", paper="Dubey et al., diffGrad: An Optimization Method for Convolutional Neural Networks",
          year=2019, oracle="reference from the paper's update rule (tests/optim/test_diffgrad.py)")
class DiffGrad(ChainOptimizer):
    """diffGrad: Adam whose momentum is scaled by a friction xi in [0.5, 1) from the change of the gradient.

    With g the gradient plus wd * p (coupled weight decay, as in the authors' code) and t the step count:
      m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
      xi = sigmoid(|g_prev - g|)  (g_prev = 0 on the first step);   g_prev <- g
      p <- p - lr sqrt(1 - b2^t) / (1 - b1^t) xi m / (sqrt(v) + eps)
    computed with one division per element, m / ((1 + exp(-|g_prev - g|)) (sqrt(v) + eps)) (see
    `gradwise.transforms.friction.friction_adam_step`).

    Defaults: the authors' code, github.com/shivram1987/diffGrad, diffGrad_v2.py (lr=1e-3,
    betas=(0.9, 0.999), eps=1e-8, weight_decay=0), whose update this class follows, the remembered g_prev
    being the gradient after weight decay, as there. The authors' first script (diffGrad.py, the one used
    for the paper's experiments) kept g_prev as a reference to the gradient tensor, which the next
    backward pass overwrites in place when gradients are zeroed rather than freed: g_prev - g is then 0
    and xi a constant 0.5, i.e. Adam at half the learning rate. gradwise implements the method as the
    paper states it, with a copy of the previous gradient (the fix of diffGrad_v2.py).

    Dubey, Chakraborty, Roy, Mukherjee, Singh & Chaudhuri, "diffGrad: An Optimization Method for
    Convolutional Neural Networks", IEEE Transactions on Neural Networks and Learning Systems, 2019,
    arXiv:1909.11015.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    ranges = dict(lr=NonNegative, betas=Betas(2), eps=NonNegative, weight_decay=NonNegative)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        beta1, beta2 = h.betas
        return (
            weight_decay(h.lr, h.weight_decay, decoupled=False),
            first_moment(beta1),
            second_moment(beta2),
            friction_adam_step(h.lr, beta1, beta2, h.eps),
        )
