"""SGD: stochastic gradient descent with heavy-ball or Nesterov momentum, equal to torch.optim.SGD."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..core import ChainOptimizer, Flag, NonNegative, Transform, register
from ..transforms.decay import weight_decay
from ..transforms.momentum import heavy_ball
from ..transforms.steps import sgd_step


@register("sgd", paper="Robbins & Monro, A Stochastic Approximation Method", year=1951, oracle="torch.optim.SGD")
class SGD(ChainOptimizer):
    """SGD with optional momentum, dampening, Nesterov look-ahead and coupled (L2) weight decay.

    g <- g + wd p;  b <- g on the first step, afterwards b <- momentum b + (1 - dampening) g;
    d = g + momentum b (nesterov) or b (momentum > 0) or g (momentum = 0);  p <- p - lr d

    Defaults and conventions: torch.optim.SGD (lr=1e-3, momentum=0, dampening=0, weight_decay=0,
    nesterov=False), whose results this class reproduces bit for bit on the CPU: the first step copies the
    gradient into the buffer undamped, and with momentum=0 no buffer is kept. nesterov=True requires
    momentum > 0 and dampening = 0 (checked per param group at construction).
    Robbins & Monro, "A Stochastic Approximation Method", Ann. Math. Statist. 1951; momentum: Polyak,
    1964; Nesterov's variant as formulated by Sutskever, Martens, Dahl & Hinton, ICML 2013.
    """

    defaults = dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)
    ranges = dict(lr=NonNegative, momentum=NonNegative, dampening=NonNegative, weight_decay=NonNegative,
                  nesterov=Flag())

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            self.param_groups.pop()
            where = f" (param group {len(self.param_groups)})" if len(self.param_groups) > 0 else ""
            raise ValueError(
                f"nesterov=True{where} requires momentum > 0 and dampening = 0, got momentum="
                f"{group['momentum']!r} and dampening={group['dampening']!r}"
            )

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        momentum = (heavy_ball(h.momentum, h.dampening, h.nesterov, dampen_first_step=False),) if h.momentum else ()
        return (
            weight_decay(h.lr, h.weight_decay, decoupled=False),
            *momentum,
            sgd_step(h.lr),
        )
