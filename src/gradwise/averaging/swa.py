"""SWA: the equal-weight average of the iterates, with torch's SWALR schedule and BatchNorm helper."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import SWALR, get_swa_multi_avg_fn, update_bn

from .base import WeightAverager, as_device, check_integer

__all__ = ["SWA", "SWALR", "update_bn"]


class SWA(WeightAverager):
    """Stochastic weight averaging: the running mean of the model's weights, in an `AveragedModel`.

    `update(model)` is called after every optimizer step; once `start` calls have passed, every
    `every`-th call folds the model in: a <- a + (w - a) / (n + 1), n models averaged so far (the
    first average copies w), with torch.optim.swa_utils.get_swa_multi_avg_fn. Its result is that of
    `AveragedModel(model).update_parameters` at the same steps, without its host synchronisations.
    Pair it with torch's `SWALR` schedule (re-exported here) for the constant or cyclical SWA learning
    rate, and call `update_bn(loader)` after training to recompute BatchNorm statistics for the averaged
    weights. Defaults: start = 0, every = 1 (the paper averages once per epoch, late in training:
    set start and every in steps).
    Izmailov, Podoprikhin, Garipov, Vetrov & Wilson, "Averaging Weights Leads to Wider Optima and Better
    Generalization", UAI 2018, arXiv:1803.05407.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        start: int = 0,
        every: int = 1,
        device: torch.device | str | None = None,
        use_buffers: bool = False,
    ) -> None:
        self.start = check_integer("start", start, 0)
        self.every = check_integer("every", every, 1)
        super().__init__(model, device=device, use_buffers=use_buffers)

    def due(self) -> bool:
        after = self.calls - self.start
        return after > 0 and after % self.every == 0

    def average(self, ours: list[Tensor], theirs: list[Tensor]) -> None:
        get_swa_multi_avg_fn()(ours, theirs, self.averaged)

    def update_bn(self, loader: Iterable[Any], device: torch.device | str | None = None) -> None:
        """Recompute the averaged model's BatchNorm statistics with one pass over `loader`."""
        update_bn(loader, self, as_device(device))
