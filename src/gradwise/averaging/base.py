"""The common base of the averagers: a `torch.optim.swa_utils.AveragedModel` whose update never syncs."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def unwrap(model: nn.Module) -> nn.Module:
    """The module behind a `torch.compile`d one (its `_orig_mod`), or the module itself."""
    return getattr(model, "_orig_mod", model)


def check_integer(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= {low}, got {value!r} ({type(value).__name__})")
    if value < low:
        raise ValueError(f"{name}={value!r} is out of range: {name} must be an integer >= {low}")
    return value


def as_device(device: torch.device | str | None) -> torch.device | None:
    """`device` as a torch.device (torch.optim.swa_utils is typed for those, and takes a str the same way)."""
    return torch.device(device) if isinstance(device, str) else device


def grouped(ours: list[Tensor], theirs: list[Tensor]) -> list[tuple[list[Tensor], list[Tensor]]]:
    """Pairs of tensor lists with one device and dtype each, as the torch._foreach kernels want them."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], list[Tensor]]] = defaultdict(
        lambda: ([], [])
    )
    for a, b in zip(ours, theirs, strict=True):
        group = groups[(a.device, a.dtype)]
        group[0].append(a)
        group[1].append(b)
    return list(groups.values())


class WeightAverager(AveragedModel):
    """An `AveragedModel` kept up to date by `update(model)`, called after every optimizer step.

    The averaged copy is `self.module` (call `self(x)` to evaluate it, `copy_to(model)` to load it into
    the model). `update` counts calls on the host and averages when the subclass says it is due; unlike
    `AveragedModel.update_parameters`, which reads its `n_averaged` tensor on the host (a device
    synchronisation per call on a GPU), nothing here reads a tensor value: the counts are Python
    integers, mirrored in `n_averaged` for `state_dict`. Keeping the copy on the model's device
    (device=None, the default) makes an update a few asynchronous kernels; device="cpu" saves device
    memory at the price of a device-to-host copy (which waits for the device) at every average.

    A `torch.compile`d model may be passed (to the constructor and to `update`): the copy is made of the
    module it wraps, so the averaged model's state_dict loads into the uncompiled module.
    use_buffers=True averages the buffers too (e.g. BatchNorm statistics); with False they are copied
    from the model at every average, as AveragedModel does.
    """

    def __init__(self, model: nn.Module, *, device: torch.device | str | None = None, use_buffers: bool = False):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(use_buffers, bool):
            raise TypeError(f"use_buffers must be True or False, got {use_buffers!r}")
        super().__init__(unwrap(model), device=as_device(device), use_buffers=use_buffers)
        self.calls = 0  # update() calls so far
        self.averaged = 0  # models averaged so far (the host's copy of n_averaged)

    # -- what a subclass provides ------------------------------------------------------------------
    def due(self) -> bool:
        """Whether the current call of `update` (the `self.calls`-th) takes an average."""
        return True

    def average(self, ours: list[Tensor], theirs: list[Tensor]) -> None:
        """Fold `theirs` (the model's tensors) into `ours`, given `self.averaged` earlier models."""
        raise NotImplementedError

    # -- updating ----------------------------------------------------------------------------------
    def update(self, model: nn.Module) -> bool:
        """Count one optimizer step and average the model in if due. Returns whether it was averaged."""
        self.calls += 1
        if not self.due():
            return False
        self.update_parameters(model)
        return True

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        """Average `model` in now: the first call copies it, later ones call `average`."""
        ours, theirs = self._pairs(unwrap(model))
        if self.averaged == 0:
            for a, b in zip(ours, theirs, strict=True):
                a.copy_(b)
        else:
            for our_group, their_group in grouped(ours, theirs):
                self.average(our_group, their_group)
        if not self.use_buffers:
            for a, b in zip(self.module.buffers(), unwrap(model).buffers(), strict=True):
                a.copy_(b.detach().to(a.device))
        self.n_averaged += 1
        self.averaged += 1

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
        ours_all: Iterable[Tensor]
        theirs_all: Iterable[Tensor]
        if self.use_buffers:
            ours_all = itertools.chain(self.module.parameters(), self.module.buffers())
            theirs_all = itertools.chain(model.parameters(), model.buffers())
        else:
            ours_all, theirs_all = self.module.parameters(), model.parameters()
        ours, theirs = [], []
        for a, b in zip(ours_all, theirs_all, strict=True):
            ours.append(a.detach())
            theirs.append(b.detach().to(a.device))
        return ours, theirs

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights (and buffers) into `model`, in place."""
        model = unwrap(model)
        for a, b in zip(model.parameters(), self.module.parameters(), strict=True):
            a.copy_(b.to(a.device))
        for buffer, averaged in zip(model.buffers(), self.module.buffers(), strict=True):
            buffer.copy_(averaged.to(buffer.device))

    # -- saving ------------------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"calls": self.calls, "averaged": self.averaged}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.calls = int(state["calls"])
        self.averaged = int(state["averaged"])
