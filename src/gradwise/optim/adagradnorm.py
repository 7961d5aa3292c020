"""AdaGrad-Norm: SGD with one scalar step size, lr / b, where b^2 accumulates squared gradient norms."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..core import ChainOptimizer, NonNegative, Positive, Transform, kernel_transform, register
from ..core.segments import segment_value

_KEY = "sum_sq_norm"


def accumulate_squared_norm(sq_norm: Tensor, b0: float, key: str = _KEY) -> Transform:
    """b^2 <- b^2 + sq_norm, kept in state[key] (a scalar, b0^2 at the start, at least float32)."""

    def init(p: Tensor) -> dict[str, Tensor]:
        dtype = torch.promote_types(p.dtype, torch.float32)
        return {key: torch.full((), b0 * b0, dtype=dtype, device=p.device)}

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        s[key].add_(c[0].to(device=s[key].device, dtype=s[key].dtype))
        return u

    # the norm, a 0-dim tensor of this step, is the coefficient; on the flat path s[key] is a column of one
    # b^2 per parameter (gradwise.core.segments), to which the same add_ adds the norm
    return kernel_transform(kernel, lambda t: (sq_norm,), init, segmented=True)


def norm_scaled_step(lr: float, key: str = _KEY) -> Transform:
    """p <- p - lr u / sqrt(b^2), b^2 read from state[key]."""

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        b = segment_value(s[key].sqrt(), u, s).to(device=u.device, dtype=u.dtype)  # one square root per parameter
        p.sub_(u.div(b).mul_(c[0]))
        return u

    return kernel_transform(kernel, lambda t: (lr,), writes=True, segmented=True)


@register(
    "adagradnorm",
    paper="Ward, Wu & Bottou, AdaGrad stepsizes: sharp convergence over nonconvex landscapes",
    year=2019,
    oracle="reference from the paper's update rule (tests/optim/test_adagradnorm.py)",
)
class AdaGradNorm(ChainOptimizer):
    """AdaGrad-Norm: gradient descent with a single step size that adapts to the gradients seen so far.

    With G the gradient of all parameters together (every param group, every parameter that has a
    gradient this step) and b^2 starting at b0^2:
      b^2 <- b^2 + ||G||^2
      p <- p - lr G / b
    b is updated before it is used, as in the paper (x_{j+1} = x_j - eta / b_{j+1} G(x_j)), so the first
    step is lr G / sqrt(b0^2 + ||G||^2): at most lr in norm, whatever the scale of the gradient.

    ||G|| is the norm of the full gradient vector, as in the paper, computed once per step in `prepare`.
    b^2 is kept in each parameter's state (key "sum_sq_norm", a scalar tensor, float32 or wider) so that
    state_dict, load_state_dict and the engine's per-parameter state work unchanged: every parameter
    adds the same ||G||^2, so the copies are equal while all parameters receive gradients together (with
    compile=True they are 0-dim views of one buffer, and the step runs as one call per bucket). A
    parameter that has no gradient on a step does not add that step's norm (it is not updated either),
    and one first seen later starts from its own b0^2; the paper does not consider either case. lr and b0
    are read per param group.

    Defaults (gradwise's choice; the paper proves convergence for any eta > 0 and b0 > 0 and shows in its
    experiments that the method is robust to b0 over many orders of magnitude): lr=1.0 (the paper's
    eta, the largest distance the first step can travel) and b0=0.01 (small, so that the first steps are
    set by the gradients rather than by b0).

    Ward, Wu & Bottou, "AdaGrad stepsizes: sharp convergence over nonconvex landscapes", ICML 2019 /
    JMLR 2020, arXiv:1806.01811.
    """

    defaults = dict(lr=1.0, b0=1e-2)
    ranges = dict(lr=NonNegative, b0=Positive)

    _sq_norm: Tensor | None = None

    def prepare(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        compiled = getattr(self, "_compiled", None)  # compile=: the flat buffers, when they hold every gradient
        flat = compiled.flat_gradients(work) if compiled is not None else None
        grads = flat or [p.grad for _, params in work for p in params if p.grad is not None]  # all: work has them
        if not grads:
            self._sq_norm = None
            return
        dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) else torch.float32
        device = grads[0].device
        if all(g.device == device and g.dtype == grads[0].dtype for g in grads):
            # one call over every gradient (1000 tensors: a quarter of the per-tensor loop's time)
            norms = list(torch._foreach_norm(grads, 2, dtype=dtype))
        else:
            norms = [torch.linalg.vector_norm(g, dtype=dtype).to(device) for g in grads]
        self._sq_norm = torch.stack(norms).square().sum()

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        assert self._sq_norm is not None  # prepare ran: chain is only built for groups with gradients
        return (accumulate_squared_norm(self._sq_norm, h.b0), norm_scaled_step(h.lr))
