"""AdaBelief: Adam whose second moment measures how far the gradient strays from its prediction."""

from __future__ import annotations

from types import SimpleNamespace

from ..core import Betas, ChainOptimizer, Flag, NonNegative, Transform, register
from ..transforms.belief import belief_second_moment, rectified_step
from ..transforms.decay import weight_decay
from ..transforms.moments import first_moment, running_max
from ..transforms.steps import adam_step


@register("adabelief", paper="Zhuang et al., AdaBelief Optimizer: Adapting Stepsizes by the Belief in Observed "
          "Gradients", year=2020, oracle="adabelief-pytorch 0.2.1 (adabelief_pytorch.AdaBelief)")
class AdaBelief(ChainOptimizer):
    """AdaBelief: Adam whose second moment tracks (g - m)^2, the belief in the observed gradient.

    With g the gradient (plus wd * p when decoupled_weight_decay=False) and t the step count:
      decoupled_weight_decay=True:  p <- p (1 - lr wd)
      m <- b1 m + (1 - b1) g;   s <- b2 s + (1 - b2) (g - m)^2 + eps
      amsgrad=True:  s_max <- max(s_max, s), used in place of s below (non-rectified step only)
      rectify=False: p <- p - lr (m / (1 - b1^t)) / (sqrt(s / (1 - b2^t)) + eps)
      rectify=True (RAdam's rectification, rho_inf = 2 / (1 - b2) - 1, rho_t = rho_inf - 2 t b2^t / (1 - b2^t)):
        rho_t >= 5: p <- p - lr r_t sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(s) + eps),
                    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        rho_t < 5:  p <- p - lr m / (1 - b1^t)   (SGD with momentum; the first 5 steps when b2 = 0.999)

    Defaults: the authors' package adabelief-pytorch 0.2.1 (lr=1e-3, betas=(0.9, 0.999), eps=1e-16,
    weight_decay=0, weight_decouple=True, rectify=True, amsgrad=False, fixed_decay=False,
    degenerated_to_sgd=True), whose trajectories this class reproduces in every combination of
    decoupled_weight_decay (the package's weight_decouple), rectify and amsgrad. Its behaviours, kept:
      - eps is added into the stored s at every step (as in the paper's Algorithm 1), and again to the
        square root in the denominator; with the default eps=1e-16 the first hardly matters.
      - With rectify=True the rectified step divides by the running s, never by the AMSGrad maximum:
        amsgrad=True then only keeps s_max up to date (in state "max_exp_avg_var") and changes nothing.
      - With rectify=True, the first steps, while rho_t < 5, are bias-corrected momentum steps whose size
        is lr times the gradient: no adaptive denominator at all (degenerated_to_sgd=True).
      - decoupled_weight_decay=False adds wd * p to the gradient, which then enters m and s (L2, as in Adam).
    One departure: with decoupled_weight_decay=False the package adds wd * p into p.grad itself; gradwise
    leaves p.grad untouched. The package's fixed_decay and degenerated_to_sgd=False options, its float16
    casting and its console messages are not reproduced.

    Zhuang, Tang, Ding, Tatikonda, Dvornek, Papademetris & Duncan, "AdaBelief Optimizer: Adapting
    Stepsizes by the Belief in Observed Gradients", NeurIPS 2020, arXiv:2010.07468.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-16, weight_decay=0.0, decoupled_weight_decay=True,
                    rectify=True, amsgrad=False)
    ranges = dict(lr=NonNegative, betas=Betas(2), eps=NonNegative, weight_decay=NonNegative,
                  decoupled_weight_decay=Flag(), rectify=Flag(), amsgrad=Flag())

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        beta1, beta2 = h.betas
        if h.rectify:
            step = rectified_step(h.lr, beta1, beta2, h.eps, second="exp_avg_var")
        else:
            second = "max_exp_avg_var" if h.amsgrad else "exp_avg_var"
            step = adam_step(h.lr, beta1, beta2, h.eps, second=second)
        return (
            weight_decay(h.lr, h.weight_decay, decoupled=h.decoupled_weight_decay),
            first_moment(beta1),
            belief_second_moment(beta2, h.eps),
            *((running_max("exp_avg_var", "max_exp_avg_var"),) if h.amsgrad else ()),
            step,
        )
