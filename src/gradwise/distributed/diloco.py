"""DiLoCo: data-parallel training that synchronises every H steps, with an outer Nesterov step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..core import Beta, Flag, Integer, Interval
from .comm import gather_checkpoint, guarded, own_part, to_cpu, world_of


class DiLoCo:
    """DiLoCo: each replica takes `sync_every` inner steps alone, then the replicas average their progress.

    With global weights theta (identical on every replica) and local weights theta_i:
        H times:  theta_i <- inner_optimizer step on this replica's data
        delta <- (1 / N) sum_i (theta - theta_i)                  pseudo-gradient, one all-reduce (SUM / N)
        theta <- outer SGD step on theta with gradient delta      (lr outer_lr, momentum, Nesterov)
        theta_i <- theta                                          every replica holds theta again
    The outer step is `torch.optim.SGD(lr=outer_lr, momentum=outer_momentum, nesterov=nesterov)`. With
    sync_every=1, outer_lr=1 and outer_momentum=0 this is synchronous data-parallel training for inner
    optimizers whose update is linear in the gradient (SGD, with or without momentum).

    The inner optimizer may be any torch or gradwise optimizer over `model`'s parameters; its state stays
    local to each replica. Only parameters are synchronised (not buffers such as batch-norm statistics).
    At construction the parameters are broadcast from the group's first rank, so all replicas start from
    the same theta. `bytes_sent` counts the bytes this rank hands to its all-reduces (the broadcast at
    construction excluded).

    Defaults: the paper's outer optimizer (Nesterov, lr 0.7, momentum 0.9); the paper uses AdamW inside
    and H = 500. Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models",
    2023, arXiv:2311.08105.

    Checkpoints: the inner optimizer's state and the local weights are each replica's own, so
    `state_dict()` is a collective that gathers them on rank 0 (the other ranks get an empty dict).
    Rank 0 saves one file; every rank of a new run of the same world size loads it and takes its part:

        checkpoint = {"diloco": opt.state_dict()}            # on every rank (collective)
        if dist.get_rank() == 0:
            torch.save(checkpoint, path)
        ...                                                 # fresh processes, every rank:
        opt = DiLoCo(net, inner, ...)                       # same model, inner optimizer and world size
        opt.load_state_dict(torch.load(path, weights_only=True)["diloco"])

    `load_state_dict` also restores this rank's local weights (so saving between synchronisations is
    fine); model buffers (batch-norm statistics) are the caller's. Resumed training is bit-identical to
    uninterrupted training; a checkpoint from a different world size raises a ValueError naming both.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_optimizer: torch.optim.Optimizer,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        nesterov: bool = True,
        sync_every: int = 500,
        process_group: dist.ProcessGroup | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(inner_optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"inner_optimizer must be a torch.optim.Optimizer, got {type(inner_optimizer).__name__}"
            )
        self.outer_lr = Interval(0.0, low_closed=False).check("outer_lr", outer_lr)
        self.outer_momentum = Beta.check("outer_momentum", outer_momentum)
        self.nesterov = Flag().check("nesterov", nesterov)
        self.sync_every = Integer(1).check("sync_every", sync_every)
        self.model = model
        self.inner = inner_optimizer
        self.process_group = process_group
        world_of(process_group)
        self.params = [p for p in model.parameters() if p.requires_grad]
        with torch.no_grad(), guarded("DiLoCo initial broadcast", process_group):
            source = dist.get_global_rank(process_group, 0) if process_group is not None else 0
            for p in self.params:
                dist.broadcast(p.data, src=source, group=process_group)
        self.global_params = [p.detach().clone() for p in self.params]
        self.outer = torch.optim.SGD(
            self.global_params, lr=outer_lr, momentum=outer_momentum,
            nesterov=nesterov and outer_momentum > 0,
        )
        self.inner_steps = 0
        self.bytes_sent = 0

    # -- the optimizer interface ---------------------------------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The inner optimizer's param groups (what a learning-rate scheduler should adjust)."""
        return self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner step; every `sync_every`-th call also synchronises the replicas (collective)."""
        loss = self.inner.step(closure) if closure is not None else self.inner.step()
        self.inner_steps += 1
        if self.inner_steps % self.sync_every == 0:
            self.sync()
        return loss

    @torch.no_grad()
    def sync(self) -> None:
        """Average the pseudo-gradients, take the outer step, and reset every replica to the result."""
        _, world = world_of(self.process_group)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, p in enumerate(self.params):
            by_dtype.setdefault(p.dtype, []).append(i)
        for indices in by_dtype.values():
            flat = torch.cat([(self.global_params[i] - self.params[i]).reshape(-1) for i in indices])
            with guarded(f"DiLoCo sync after inner step {self.inner_steps}", self.process_group):
                dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.process_group)
            self.bytes_sent += flat.numel() * flat.element_size()
            flat.div_(world)
            for i, delta in zip(indices, _split_like(flat, [self.params[i] for i in indices]), strict=True):
                self.global_params[i].grad = delta
        self.outer.step()
        for p, g in zip(self.params, self.global_params, strict=True):
            p.copy_(g)

    # -- saving and loading --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole group's state on rank 0 (an empty dict elsewhere); a collective, call it on every rank.

        Shared (identical on every replica, taken from rank 0): the outer optimizer, the global weights
        and the inner step count. Per rank, under "ranks": the inner optimizer's state, the local weights
        (which differ between synchronisations) and the byte count.
        """
        own = {
            "inner": self.inner.state_dict(),
            "local_params": [p.detach() for p in self.params],
            "bytes_sent": self.bytes_sent,
        }
        ranks = gather_checkpoint("DiLoCo", own, self.process_group)
        if ranks is None:
            return {}
        return {
            "outer": to_cpu(self.outer.state_dict()),
            "global_params": to_cpu(self.global_params),
            "inner_steps": self.inner_steps,
            "ranks": ranks,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this rank's part of a checkpoint that rank 0 saved, local weights included."""
        mine = own_part("DiLoCo", state_dict, self.process_group)
        if len(state_dict["global_params"]) != len(self.params):
            raise ValueError(
                f"DiLoCo.load_state_dict: the checkpoint holds {len(state_dict['global_params'])} parameters, "
                f"the model has {len(self.params)}"
            )
        self.inner.load_state_dict(mine["inner"])
        self.outer.load_state_dict(state_dict["outer"])
        with torch.no_grad():
            for g, saved in zip(self.global_params, state_dict["global_params"], strict=True):
                g.copy_(saved)
            for p, saved in zip(self.params, mine["local_params"], strict=True):
                p.copy_(saved)
        self.inner_steps = int(state_dict["inner_steps"])
        self.bytes_sent = int(mine["bytes_sent"])


def _split_like(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in like]), like, strict=True)]
