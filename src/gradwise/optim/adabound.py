"""AdaBound and AMSBound: Adam whose per-coordinate step sizes are clipped into a band closing on SGD's."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..core import Beta, Betas, ChainOptimizer, Flag, NonNegative, Transform, register
from ..transforms.bounds import bounded_adam_step
from ..transforms.decay import weight_decay
from ..transforms.moments import first_moment, running_max, second_moment

_PAPER = "Luo et al., Adaptive Gradient Methods with Dynamic Bound of Learning Rate"
_ORACLE = "the authors' PyPI package adabound 0.0.5 (tests/optim/test_adabound.py)"


@register("adabound", paper=_PAPER, year=2019, oracle=_ORACLE)
class AdaBound(ChainOptimizer):
    """AdaBound: Adam's step sizes clipped into a band [lower_t, upper_t] that closes on a final SGD rate.

    With coupled L2 weight decay g <- g + wd p, and the step count t of the parameter:
      m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2   (amsbound=True: v <- max(v_prev_max, v))
      final = final_lr * lr / initial_lr
      lower_t = final (1 - 1 / (gamma t + 1));   upper_t = final (1 + 1 / (gamma t))
      eta = clip(lr sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v) + eps), lower_t, upper_t)
      p <- p - eta * m
    Early on the band is wide and the method is Adam; as t grows it narrows onto `final`, and the
    method becomes SGD with momentum at that rate.

    initial_lr: the authors scale final_lr by lr / base_lr, base_lr being the group's lr when the
    optimizer was built, so that a learning-rate scheduler that decays lr decays the final rate too.
    gradwise keeps base_lr in each param group under "initial_lr" (set to the group's lr when the group
    is added, unless the group already carries one): torch's schedulers use the same key with the same
    meaning and leave it as it is, and, unlike the authors' attribute, it is saved in state_dict, so a
    resumed run scales as the uninterrupted one. A group whose lr is 0 does not move (the band is
    [0, 0]); a group built with lr 0 and given a positive lr later uses final_lr unscaled (the authors'
    code divides by zero there).

    Defaults: the authors' package adabound 0.0.5 (lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3,
    eps=1e-8, weight_decay=0, amsbound=False), whose trajectories this class reproduces. gamma may be 0
    (gradwise's extension: the band stays [0, inf) and the method is Adam with eps outside the bias
    correction; the authors' code divides by zero).

    Luo, Xiong, Liu & Sun, "Adaptive Gradient Methods with Dynamic Bound of Learning Rate", ICLR 2019,
    arXiv:1902.09843.
    """

    defaults = dict(lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8, weight_decay=0.0,
                    amsbound=False)
    ranges = dict(lr=NonNegative, betas=Betas(2), final_lr=NonNegative, gamma=Beta, eps=NonNegative,
                  weight_decay=NonNegative, amsbound=Flag())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault("initial_lr", group["lr"])
        try:
            group["initial_lr"] = NonNegative.check("initial_lr", group["initial_lr"])
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    @staticmethod
    def scaled_final_lr(h: SimpleNamespace) -> float:
        """final_lr * lr / initial_lr: the final rate follows the schedule of lr (see the class docstring)."""
        initial = getattr(h, "initial_lr", h.lr)
        if h.lr == 0:
            return 0.0
        if initial == 0:
            return h.final_lr
        return h.final_lr * h.lr / initial

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        beta1, beta2 = h.betas
        second = "max_exp_avg_sq" if h.amsbound else "exp_avg_sq"
        return (
            weight_decay(h.lr, h.weight_decay, decoupled=False),
            first_moment(beta1),
            second_moment(beta2),
            *((running_max(),) if h.amsbound else ()),
            bounded_adam_step(h.lr, self.scaled_final_lr(h), h.gamma, beta1, beta2, h.eps, second=second),
        )


@register("amsbound", paper=_PAPER, year=2019, oracle=_ORACLE + " with amsbound=True")
class AMSBound(AdaBound):
    """AMSBound: AdaBound with AMSGrad's second moment, the running maximum of v (amsbound=True).

    Everything else, defaults included, is AdaBound's (see `AdaBound`); the update divides by
    sqrt(max(v_1, ..., v_t)) + eps. Luo, Xiong, Liu & Sun, ICLR 2019, arXiv:1902.09843.
    """

    defaults = {**AdaBound.defaults, "amsbound": True}
