"""SGD-SaI: SGD with momentum whose learning rate is scaled per tensor, once, by the gradient's SNR."""

from __future__ import annotations

from types import SimpleNamespace

from ..core import Beta, ChainOptimizer, NonNegative, Transform, register
from ..transforms.decay import weight_decay
from ..transforms.momentum import heavy_ball
from ..transforms.snr import snr_scaled_step


@register("sgdsai", paper="Xu et al., No More Adam: Learning Rate Scaling at Initialization is All You Need",
          year=2024, oracle="the authors' PyPI package sgd-sai 1.0.3 (tests/optim/test_sgdsai.py)")
class SGDSaI(ChainOptimizer):
    """SGD-SaI: SGD with momentum, each tensor's learning rate scaled by its gradient signal-to-noise ratio
    measured at the first step and then frozen.

    At the first step of each parameter tensor: gsnr = ||g_1|| / (std(g_1) + eps) (unbiased std; a
    one-element tensor has std 0, so gsnr = |g_1| / eps). Every step:
      b <- g on the first step, afterwards b <- momentum b + (1 - momentum) g;
      p <- p (1 - lr wd) - lr gsnr b
    The decay is decoupled and not scaled by gsnr. With momentum=0 the step is lr gsnr g (the authors'
    code requires momentum > 0). No second moment is kept: the state is one buffer and one number per
    tensor.

    Scale: gsnr grows with the square root of a tensor's size (||g|| / std(g) ~ sqrt(numel) for a
    zero-mean gradient), so the effective step is far larger than lr; the authors' default lr is 1e-2.
    Each tensor is its own block (the paper's "parameter block"), whatever the param groups are; a tensor
    that first receives a gradient later takes its gsnr at that step.

    Defaults and conventions: the authors' package sgd-sai 1.0.3 (lr=1e-2, momentum=0.9, eps=1e-8,
    weight_decay=1e-2), whose trajectories this class reproduces. The authors' repository later changed
    the rule (1.0.4 divides every gsnr by the largest; 1.1.0 replaces gsnr by sqrt(numel)); neither is
    released on PyPI, and this class follows the released package.
    Xu, Xiang, Cai & Wen, "No More Adam: Learning Rate Scaling at Initialization is All You Need", 2024,
    arXiv:2412.11768.
    """

    defaults = dict(lr=1e-2, momentum=0.9, eps=1e-8, weight_decay=1e-2)
    ranges = dict(lr=NonNegative, momentum=Beta, eps=NonNegative, weight_decay=NonNegative)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        momentum = (heavy_ball(h.momentum, h.momentum, dampen_first_step=False),) if h.momentum else ()
        return (
            weight_decay(h.lr, h.weight_decay),
            *momentum,
            snr_scaled_step(h.lr, h.eps),
        )
