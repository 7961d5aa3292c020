"""Lookahead: a wrapper around any optimizer that pulls slow weights toward the fast ones every k steps."""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core import Integer, UnitInterval

__all__ = ["Lookahead"]

FORMAT = "gradwise.Lookahead/1"


class Lookahead(torch.optim.Optimizer):
    """Lookahead: k steps of the inner ("fast") optimizer, then one step of the slow weights toward them.

    With phi the slow weights (a copy of each parameter, taken at its first step) and theta the parameters:
      theta <- inner step, k times;   phi <- phi + alpha (theta - phi);   theta <- phi
    alpha=1 gives the inner optimizer unchanged; alpha=0 resets the parameters to where they were every
    k steps. The inner optimizer's own state (moments, step counts) carries on across the sync unchanged.

    The wrapper is a `torch.optim.Optimizer`: `param_groups` is the inner optimizer's list itself, so an lr
    scheduler built on either changes the same learning rates, and `add_param_group` adds to the inner
    optimizer. `state` holds the slow weights only (state[p]["slow_param"]); the inner state stays in
    `optimizer.state`. `state_dict()` saves the inner state dict, the slow weights, k, alpha and the
    count of steps since the last sync, exactly (dtype and bits); `load_state_dict` restores all of them,
    so a resumed run equals the uninterrupted one. A step that the inner optimizer skips (a gradwise
    optimizer's nonfinite="skip" policy, seen as a rise of its `skipped_steps`) is not counted.

    Defaults: k=5, alpha=0.5, values the paper's experiments use. Zhang, Lucas, Hinton & Ba, "Lookahead Optimizer:
    k steps forward, 1 step back", NeurIPS 2019, arXiv:1907.08610, Algorithm 1.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, k: int = 5, alpha: float = 0.5) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Lookahead wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, Lookahead):
            raise TypeError("Lookahead wraps the inner optimizer itself, not another Lookahead")
        self.k = Integer(1).check("k", k)
        self.alpha = float(UnitInterval.check("alpha", alpha))
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self.param_groups = optimizer.param_groups  # shared: schedulers and add_param_group see one list
        self.state: defaultdict[Tensor, Any] = defaultdict(dict)
        self.steps_since_sync = 0
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._patch_step_function()

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, optimizer={self.optimizer!r})"

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        for p in self._params():
            if "slow_param" not in self.state[p]:
                self.state[p]["slow_param"] = p.detach().clone(memory_format=torch.preserve_format)
        skipped = _skipped_steps(self.optimizer)
        loss = self.optimizer.step() if closure is None else self.optimizer.step(closure)
        skipped_after = _skipped_steps(self.optimizer)
        if skipped is not None and skipped_after is not None and skipped_after > skipped:
            return loss
        self.steps_since_sync += 1
        if self.steps_since_sync >= self.k:
            self.steps_since_sync = 0
            for p in self._params():
                slow = self.state[p]["slow_param"]
                slow.lerp_(p.detach(), self.alpha)  # exact at both ends: alpha=1 gives theta, alpha=0 phi
                p.copy_(slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        params = self._params()
        slow = {i: self.state[p]["slow_param"] for i, p in enumerate(params) if "slow_param" in self.state[p]}
        return {
            "optimizer": self.optimizer.state_dict(),
            "lookahead": {"format": FORMAT, "k": self.k, "alpha": self.alpha,
                          "steps_since_sync": self.steps_since_sync, "slow": slow},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "lookahead" not in state_dict or "optimizer" not in state_dict:
            raise ValueError("not a Lookahead state dict: it needs the keys 'optimizer' and 'lookahead' (load an "
                             "inner optimizer's state dict into `lookahead.optimizer` instead)")
        saved = state_dict["lookahead"]
        params = self._params()
        if any(not 0 <= int(i) < len(params) for i in saved["slow"]):
            raise ValueError(f"Lookahead state dict has slow weights for {len(saved['slow'])} parameters that do not "
                             f"match the {len(params)} parameters of this optimizer")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.k = Integer(1).check("k", saved["k"])
        self.alpha = float(UnitInterval.check("alpha", saved["alpha"]))
        self.steps_since_sync = int(saved["steps_since_sync"])
        self.state = defaultdict(dict)
        for i, tensor in saved["slow"].items():
            p = params[int(i)]
            if tensor.shape != p.shape:
                raise ValueError(f"Lookahead state dict: slow weights {i} have shape {tuple(tensor.shape)}, the "
                                 f"parameter {tuple(p.shape)}")
            self.state[p]["slow_param"] = tensor.detach().to(device=p.device, copy=True)


def _skipped_steps(optimizer: Any) -> int | None:
    """The steps `optimizer` skipped so far (a ChainOptimizer counts them), or None if it does not count."""
    return getattr(optimizer, "skipped_steps", None)
