"""LAWA: the average of the latest k checkpoints, kept in a bounded ring buffer."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import WeightAverager, check_integer, unwrap


class LAWA(WeightAverager):
    """Latest weight averaging: the averaged model is the mean of the last k checkpoints.

    Every `every`-th call of `update(model)` stores a checkpoint of the model's weights in a ring buffer of
    k slots (allocated at construction: k copies of the model, on `device`), overwriting the oldest, and
    sets the averaged model to the mean of the stored checkpoints (exactly torch.mean over them).
    Kaddour checkpoints at the end of each epoch: pass every=steps_per_epoch, or call
    `checkpoint(model)` yourself. Defaults: k = 5, every step (both ours: the paper studies k).
    Kaddour, "Stop Wasting My Time! Saving Days of ImageNet and BERT Training with Latest Weight
    Averaging", 2022, arXiv:2209.14981.
    """

    def __init__(
        self,
        model: nn.Module,
        k: int = 5,
        *,
        every: int = 1,
        device: torch.device | str | None = None,
        use_buffers: bool = False,
    ) -> None:
        self.k = check_integer("k", k, 1)
        self.every = check_integer("every", every, 1)
        super().__init__(model, device=device, use_buffers=use_buffers)
        self.checkpoints = nn.Module()
        for i, t in enumerate(self._tracked()):
            self.checkpoints.register_buffer(f"ring_{i}", torch.zeros((k, *t.shape), dtype=t.dtype, device=t.device))

    def _tracked(self) -> list[Tensor]:
        own: list[Tensor] = list(self.module.parameters())
        return own + list(self.module.buffers()) if self.use_buffers else own

    def due(self) -> bool:
        return self.calls % self.every == 0

    @property
    def stored(self) -> int:
        """How many checkpoints the average is over (at most k)."""
        return min(self.averaged, self.k)

    def checkpoint(self, model: nn.Module) -> None:
        """Store a checkpoint of `model` now and recompute the average."""
        self.update_parameters(model)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        _, theirs = self._pairs(unwrap(model))
        slot = self.averaged % self.k
        rings = list(self.checkpoints.buffers())
        for ring, t in zip(rings, theirs, strict=True):
            ring[slot].copy_(t)
        n = min(self.averaged + 1, self.k)
        for ring, own in zip(rings, self._tracked(), strict=True):
            torch.mean(ring[:n], dim=0, out=own.detach())
        if not self.use_buffers:
            for a, b in zip(self.module.buffers(), unwrap(model).buffers(), strict=True):
                a.copy_(b.detach().to(a.device))
        self.n_averaged += 1
        self.averaged += 1

    def average(self, ours: list[Tensor], theirs: list[Tensor]) -> None:  # replaced by update_parameters
        raise NotImplementedError

