"""EMA of the weights, and Switch EMA, which copies the EMA back into the model at each epoch's end."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .base import WeightAverager, check_integer


class EMA(WeightAverager):
    """Exponential moving average of a model's weights, in an `AveragedModel`.

    Every `every`-th call of `update(model)` (`every` counts optimizer steps):
      e <- model's weights (the first time);  e <- d e + (1 - d) w (later),
      d = decay, or with warmup=True d_n = min(decay, (1 + n) / (10 + n)), n the number of averages
      taken before this one (the warm-up of tf.train.ExponentialMovingAverage's num_updates), so that
      early averages are not dominated by the random initialisation.
    The average is taken with torch.optim.swa_utils.get_ema_multi_avg_fn (one fused lerp per device and
    dtype); see `WeightAverager` for device placement, compiled models and the absence of syncs.
    Defaults: decay = 0.999 (AveragedModel's EMA default), no warm-up, every step.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        *,
        warmup: bool = False,
        every: int = 1,
        device: torch.device | str | None = None,
        use_buffers: bool = False,
    ) -> None:
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay={decay!r} is out of range: decay must be a number in [0, 1]")
        if not isinstance(warmup, bool):
            raise TypeError(f"warmup must be True or False, got {warmup!r}")
        self.every = check_integer("every", every, 1)
        super().__init__(model, device=device, use_buffers=use_buffers)
        self.decay, self.warmup = float(decay), warmup

    def current_decay(self) -> float:
        """The decay the next average will use."""
        if not self.warmup:
            return self.decay
        n = self.averaged
        return min(self.decay, (1.0 + n) / (10.0 + n))

    def due(self) -> bool:
        return self.calls % self.every == 0

    def average(self, ours: list[Tensor], theirs: list[Tensor]) -> None:
        get_ema_multi_avg_fn(self.current_decay())(ours, theirs, None)


class SwitchEMA(EMA):
    """Switch EMA: an EMA whose weights are copied into the model at the end of every epoch.

    Training then continues from the averaged weights (the optimizer's state is kept), while the EMA
    keeps averaging; Li et al. report flatter, better-generalising solutions at no extra cost. Call
    `switch(model)` at each epoch's end, or give `steps_per_epoch` and `update` switches by itself right
    after the average of every steps_per_epoch-th step. Other arguments as for `EMA`.
    Li et al., "Switch EMA: A Free Lunch for Better Flatness and Sharpness",
    2024, arXiv:2402.09240.
    """

    def __init__(
        self,
        model: nn.Module,
        decay: float = 0.999,
        *,
        steps_per_epoch: int | None = None,
        warmup: bool = False,
        every: int = 1,
        device: torch.device | str | None = None,
        use_buffers: bool = False,
    ) -> None:
        if steps_per_epoch is not None:
            check_integer("steps_per_epoch", steps_per_epoch, 1)
        super().__init__(model, decay, warmup=warmup, every=every, device=device, use_buffers=use_buffers)
        self.steps_per_epoch = steps_per_epoch
        self.switches = 0

    def update(self, model: nn.Module) -> bool:
        averaged = super().update(model)
        if self.steps_per_epoch is not None and self.calls % self.steps_per_epoch == 0:
            self.switch(model)
        return averaged

    def switch(self, model: nn.Module) -> None:
        """Copy the EMA weights into `model` (the end of an epoch)."""
        self.copy_to(model)
        self.switches += 1

    def get_extra_state(self) -> dict:
        return {**super().get_extra_state(), "switches": self.switches}

    def set_extra_state(self, state: dict) -> None:
        super().set_extra_state(state)
        self.switches = int(state["switches"])
