"""Adafactor: adaptive steps with a second moment of sublinear memory, equal to torch.optim.Adafactor."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from ..core import Beta, ChainOptimizer, Interval, NonNegative, Optional, Transform, kernel_transform, register
from ..transforms.decay import weight_decay
from ..transforms.factored import clip_by_rms, descend, factored_second_moment, relative_step_size
from ..transforms.moments import first_moment


@dataclass(frozen=True)
class _Epsilons(Optional):
    """Adafactor's eps = (eps1, eps2): eps1 None or >= 0, eps2 >= 0. (An Optional, so that tools that break
    ranges to test them send single numbers and strings, which this refuses.)"""

    inner: Any = NonNegative

    def describe(self) -> str:
        return "a pair (eps1, eps2): eps1 None or in [0, inf), eps2 in [0, inf)"

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, str | bytes) or not isinstance(value, tuple | list) or len(value) != 2:
            raise ValueError(f"{name}={value!r} is out of range: {name} must be {self.describe()}")
        Optional(NonNegative).check(f"{name}[0]", value[0])
        NonNegative.check(f"{name}[1]", value[1])
        return tuple(value)


def _first_moment_step(beta1: float) -> Transform:
    """m <- beta1 m + (1 - beta1) u, kept in state["exp_avg"];  u <- m."""
    moment = first_moment(beta1, key="exp_avg")
    inner, coefficients = moment.kernel, moment.coefficients
    assert inner is not None and coefficients is not None  # first_moment is built by kernel_transform

    def kernel(u, p, s, c):
        inner(u, p, s, c)
        return s["exp_avg"]

    return kernel_transform(kernel, coefficients, moment.init, elementwise=True)


@register("adafactor", paper="Shazeer & Stern, Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
          year=2018, oracle="torch.optim.Adafactor")
class Adafactor(ChainOptimizer):
    """Adafactor: Adam-like steps whose second moment of a matrix is kept as its row and column means.

    With beta2_t = 1 - t^beta2_decay, rho_t = min(lr, 1 / sqrt(t)), RMS(x) = ||x|| / sqrt(numel(x)):
      alpha_t = max(eps2, RMS(p)) rho_t                        (read before the weight decay)
      p <- p (1 - lr wd)
      matrices (and the last two dimensions of higher tensors):
        R <- beta2_t R + (1 - beta2_t) mean_cols(g^2);  C <- beta2_t C + (1 - beta2_t) mean_rows(g^2)
        V_hat = R C / max(mean(R), eps1)
      vectors:  V_hat <- beta2_t V_hat + (1 - beta2_t) g^2
      U = g / sqrt(max(V_hat, eps1^2));  U <- U / max(1, RMS(U) / d)
      with beta1 (off by default): m <- beta1 m + (1 - beta1) U;  U <- m
      p <- p - alpha_t U
    eps1=None is the machine epsilon of the parameter's dtype.

    Defaults: torch.optim.Adafactor (lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0),
    which this class reproduces (update clipping with threshold d is part of it, as in torch and the paper).
    beta1 (default None: no first moment, as in torch) adds the paper's optional momentum on the clipped
    update (Section 7 of the paper, no bias correction).
    Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018,
    arXiv:1804.04235.
    """

    defaults = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0, beta1=None)
    ranges = dict(lr=NonNegative, beta2_decay=Interval(high=0.0), eps=_Epsilons(), d=Interval(1.0),
                  weight_decay=NonNegative, beta1=Optional(Beta))

    def chain(self, h: SimpleNamespace):
        eps1, eps2 = h.eps
        return (
            factored_second_moment(h.beta2_decay, eps1),
            clip_by_rms(h.d),
            *((_first_moment_step(h.beta1),) if h.beta1 is not None else ()),
            relative_step_size(h.lr, eps2),
            weight_decay(h.lr, h.weight_decay),
            descend(),
        )
