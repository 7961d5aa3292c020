"""Stochastic Polyak step sizes: SGD (SPS) and SGD with momentum (ALR-SMAG) whose step size comes from the loss.

Both need the loss of the batch the gradient was computed on. Pass it as torch.optim does, with a closure
that computes the loss and its gradient and returns the loss:

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss
    opt.step(closure)

or, after your own backward pass, as `opt.step(loss=loss)` (the authors' form). A step with neither raises
a ValueError. The step size is computed on the device; no step reads it back to the host. The last one is
kept in `opt.last_step_size` (a 0-dim tensor per param group, for logging).
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..core import Beta, ChainOptimizer, Interval, NonNegative, Positive, Transform, register
from ..transforms.momentum import heavy_ball
from ..transforms.polyak import polyak_step_size, scaled_step, scaled_weight_decay

Real = Interval()


class PolyakOptimizer(ChainOptimizer):
    """The shared part: `step(closure)` or `step(loss=...)`, and the per-group Polyak step sizes."""

    needs_loss = True  # read by the generic test suite: step() takes the loss

    def __init__(self, params: Any, *args: Any, **hyper: Any) -> None:
        self._loss: Tensor | None = None
        self._pending: list[Tensor] = []
        self.last_step_size: list[Tensor | None] = []
        super().__init__(params, *args, **hyper)

    def step(self, closure: Callable[[], Any] | None = None, loss: Any = None) -> Any:
        """One step; the loss comes from `closure()` or from `loss` (exactly one of them)."""
        if (closure is None) == (loss is None):
            raise ValueError(
                f"{type(self).__name__}.step needs the loss, from exactly one of closure= (a function that "
                f"computes the loss and its gradient and returns the loss) or loss= (the loss of the batch whose "
                f"gradient is in .grad); got {'neither' if closure is None else 'both'}"
            )
        if closure is None:
            self._loss = _as_tensor(loss)
            try:
                return super().step()
            finally:
                self._loss = None

        def evaluate() -> Any:
            value = closure()
            self._loss = _as_tensor(value)
            return value

        try:
            return super().step(evaluate)
        finally:
            self._loss = None

    def squared_norm(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> Tensor:
        """||direction||^2 over every parameter with a gradient (all groups together)."""
        raise NotImplementedError

    def prepare(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        if self._loss is None:
            raise ValueError(f"{type(self).__name__}: the closure returned None instead of the loss")
        self._pending = []
        self.last_step_size = [None] * len(self.param_groups)
        if not any(params for _, params in work):
            return
        squared = self.squared_norm(work)
        loss = self._loss.to(squared.device)
        for index, (group, params) in enumerate(work):
            if params:  # the engine builds one chain per group with gradients, in this order
                size = polyak_step_size(loss, group["f_star"], squared, group["c"], group["eps"], group["lr"],
                                        sign=-1.0 if group["maximize"] else 1.0)
                self._pending.append(size)
                self.last_step_size[index] = size

    def next_step_size(self) -> Tensor:
        """The step size of the group whose chain is being built (prepare computed them in group order)."""
        return self._pending.pop(0)


def _as_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"the loss must be a single number, got a tensor of shape {tuple(value.shape)}")
        return value.detach().reshape(())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return torch.tensor(float(value), dtype=torch.float64)
    raise TypeError(f"the loss must be a number or a one-element tensor, got {type(value).__name__}")


def _squared_norm(tensors: list[Tensor]) -> Tensor:
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32
    device = tensors[0].device
    return torch.stack([torch.linalg.vector_norm(x, dtype=dtype).to(device).square() for x in tensors]).sum()


_SPS_PAPER = "Loizou, Vaswani, Laradji & Lacoste-Julien, Stochastic Polyak Step-size for SGD: An Adaptive Learning " \
    "Rate for Fast Convergence"


@register("sps", paper=_SPS_PAPER, year=2021,
          oracle="reference written from the paper's SPS_max rule (tests/optim/test_polyak.py)")
class SPS(PolyakOptimizer):
    """SPS_max: SGD whose step size is the stochastic Polyak step size, capped at lr.

    With f_i the loss of this step's batch, g its gradient (all parameters together) and f_i* a lower
    bound of that loss (f_star, 0 for non-negative losses):
      gamma = min((f_i - f_i*) / (c ||g||^2 + eps), lr);   p <- p - gamma g
    gamma is 0 when f_i < f_i* (and when c ||g||^2 + eps = 0). lr is the paper's gamma_b, the largest
    step size; a scheduler that changes lr changes the cap. Each param group may have its own c, f_star,
    eps and lr; ||g|| is always the norm of the whole gradient, as in the paper. With maximize=True the
    loss is an objective to maximise: the step minimises -f_i, so gamma uses -f_i - f_star (f_star a lower
    bound of -f_i).
    Give the loss with `step(closure)` or `step(loss=loss)` (see the module docstring).

    The paper's theory assumes interpolation (every f_i reaching f_i* at a common minimiser), where SPS
    converges fast without tuning a step size; c = 1/2 is its theoretical choice.
    Defaults: c=0.5 and eps=1e-8 from the authors' package (github.com/IssamLaradji/sps, sps.Sps); lr=1.0
    (gradwise's choice: the authors' constant mode has no cap by default, and their default mode grows a
    cap smoothly from an initial step size of 1) and f_star=0.
    Loizou, Vaswani, Laradji & Lacoste-Julien, "Stochastic Polyak Step-size for SGD: An Adaptive Learning
    Rate for Fast Convergence", AISTATS 2021, arXiv:2002.10542.
    """

    defaults = dict(lr=1.0, c=0.5, f_star=0.0, eps=1e-8)
    ranges = dict(lr=NonNegative, c=Positive, f_star=Real, eps=NonNegative)

    def squared_norm(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> Tensor:
        return _squared_norm([p.grad for _, params in work for p in params if p.grad is not None])  # all have one

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        return (scaled_step(self.next_step_size()),)


@register("alrsmag", paper="Wang, Johansson & Zhang, Generalized Polyak Step Size for First Order Optimization "
          "with Momentum", year=2023,
          oracle="reference written from the paper's ALR-SMAG rule (tests/optim/test_polyak.py)")
class ALRSMAG(PolyakOptimizer):
    """ALR-SMAG: SGD with momentum whose step size is a Polyak step size measured along the momentum.

    With f_i the loss of this step's batch, g its gradient and f_i* a lower bound of that loss (f_star):
      d <- momentum d + g                    (d starts at 0: the heavy ball's moving sum of gradients)
      eta = min((f_i - f_i*) / (c ||d||^2 + eps), lr)
      p <- p (1 - eta wd);   p <- p - eta d
    ||d|| is the norm over all parameters together. eta is 0 when f_i < f_i*. The step size adapts to the
    momentum direction, which makes the method far less sensitive to the momentum coefficient than the
    heavy ball with a fixed step; weight decay is scaled by eta, not lr. maximize and param groups work as
    in `SPS`. Give the loss with `step(closure)` or `step(loss=loss)` (see the module docstring).
    8-bit state (state_bits=8) is refused: the step size needs ||momentum d + g||^2 before the chain runs,
    read from the stored momentum.

    Defaults: lr=0.1 (eta_max), momentum=0.9, c=1, weight_decay=0 and f_star=0 as in the implementation by
    Schaipp for the MoMo experiments (github.com/fabian-sp/step-back, stepback/optim/alr_smag.py), which
    this class follows; eps=1e-8 guards a zero
    momentum (0 there gives the same trajectories whenever ||d|| > 0).
    Wang, Johansson & Zhang, "Generalized Polyak Step Size for First Order Optimization with Momentum",
    ICML 2023, arXiv:2305.12939.
    """

    defaults = dict(lr=0.1, momentum=0.9, c=1.0, f_star=0.0, eps=1e-8, weight_decay=0.0)
    ranges = dict(lr=NonNegative, momentum=Beta, c=Positive, f_star=Real, eps=NonNegative, weight_decay=NonNegative)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group.get("state_bits", 32) != 32:
            self.param_groups.pop()
            raise ValueError(f"ALRSMAG keeps its momentum in full precision: state_bits={group['state_bits']!r} is "
                             f"not accepted here (state_bits must be 32)")

    def squared_norm(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> Tensor:
        directions = []
        for group, params in work:
            for p in params:
                grad = p.grad
                assert grad is not None  # `work` lists the parameters that have a gradient
                g = -grad if group["maximize"] else grad
                d = self.state[p].get(_BUFFER) if self.state.get(p) else None
                directions.append(g if d is None else g.add(d.to(g.dtype), alpha=group["momentum"]))
        return _squared_norm(directions)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        size = self.next_step_size()
        return (
            scaled_weight_decay(size, h.weight_decay),
            heavy_ball(h.momentum, 0.0, key=_BUFFER),
            scaled_step(size),
        )


_BUFFER = "momentum_buffer"
