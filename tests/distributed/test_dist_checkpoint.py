"""One checkpoint written by rank 0 resumes every rank: N steps, save, fresh processes, load, M more steps
equals N + M steps never interrupted, bit for bit, for each method with per-rank state."""

from __future__ import annotations

from pathlib import Path

import distributed_harness as H
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

import gradwise as gw
from gradwise.distributed import DiLoCo, OneBitAdam, compression_hook

WORLD, LR = 2, 0.05
# (steps before the checkpoint, steps in all): saved mid warm-up, between syncs, past the freeze
PLAN = {"topk": (7, 20), "sign": (6, 16), "diloco": (7, 20), "onebit": (12, 24)}
TOPK = dict(kind="topk", ratio=0.05, momentum=0.9, clip_norm=0.5, warmup_steps=10)


class Hooked:
    """DDP with a compression hook; plain SGD outside (the hook holds DGC's momentum)."""

    def __init__(self, kind: str, checkpoint: dict | None) -> None:
        self.net = H.model()
        self.state, hook = compression_hook(**(TOPK if kind == "topk" else dict(kind=kind)))
        if checkpoint is not None:
            self.net.load_state_dict(checkpoint["model"])
            self.state.load_state_dict(checkpoint["hook"], self.net)
        self.ddp = DistributedDataParallel(self.net, bucket_cap_mb=0.01)
        self.ddp.register_comm_hook(self.state, hook)
        self.opt = torch.optim.SGD(self.ddp.parameters(), lr=LR)

    def step(self, x, y, rank, t) -> int:
        self.opt.zero_grad()
        H.loss_of(self.ddp, x, y, rank, t).backward()
        self.opt.step()
        return self.state.bytes_sent

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "hook": self.state.state_dict(self.net)}


class Optimized:
    """DiLoCo (AdamW inside) or OneBitAdam, which do their own communication."""

    def __init__(self, kind: str, checkpoint: dict | None) -> None:
        self.net = H.model()
        if kind == "diloco":
            inner = gw.AdamW(self.net.parameters(), lr=1e-2, weight_decay=0.01)
            self.opt = DiLoCo(self.net, inner, sync_every=5)
        else:
            self.opt = OneBitAdam(self.net.parameters(), lr=5e-3, weight_decay=0.01, freeze_step=5)
        if checkpoint is not None:
            self.net.load_state_dict(checkpoint["model"])
            self.opt.load_state_dict(checkpoint["optimizer"])

    def step(self, x, y, rank, t) -> int:
        self.opt.zero_grad()
        H.loss_of(self.net, x, y, rank, t).backward()
        self.opt.step()
        return self.opt.bytes_sent

    def state_dict(self) -> dict:
        return {"model": self.net.state_dict(), "optimizer": self.opt.state_dict()}


def make(kind: str, checkpoint: dict | None) -> Hooked | Optimized:
    return Hooked(kind, checkpoint) if kind in ("topk", "sign") else Optimized(kind, checkpoint)


def session(rank: int, world: int, kind: str, first: int, last: int, load: str | None, save: str | None):
    """Steps first..last-1 of `kind`, resumed from the file `load`, saved to `save` by rank 0 only."""
    x, y = H.data(world)
    trainer = make(kind, None if load is None else torch.load(load, weights_only=True))
    trajectory, sent = [], []
    for t in range(first, last):
        sent.append(trainer.step(x, y, rank, t))
        trajectory.append(H.flat(trainer.net))
    returned = None
    if save is not None:
        checkpoint = trainer.state_dict()  # a collective: every rank calls it
        part = checkpoint.get("hook", checkpoint.get("optimizer"))
        returned = len(part)
        if rank == 0:
            torch.save(checkpoint, save)
    return torch.stack(trajectory), sent, returned


def per_rank_parts(checkpoint: dict) -> list[dict]:
    part = checkpoint.get("hook") or checkpoint["optimizer"]
    return part["onebit"]["ranks"] if "onebit" in part else part["ranks"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, list]]:
    folder = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for kind, (n, _) in PLAN.items():
        path = folder / f"{kind}.pt"
        out[kind] = (path, H.run(session, kind, 0, n, None, str(path), world=WORLD))
    return out


@pytest.mark.parametrize("kind", PLAN)
def test_rank0_checkpoint_resumes_every_rank_bit_exactly(saved, kind):
    n, total = PLAN[kind]
    path, first_part = saved[kind]
    assert first_part[0][2] > 0 and first_part[1][2] == 0  # rank 0 holds the checkpoint, rank 1 an empty dict
    resumed = H.run(session, kind, n, total, str(path), None, world=WORLD)
    uninterrupted = H.run(session, kind, 0, total, None, None, world=WORLD)
    for rank in range(WORLD):
        joined = torch.cat([first_part[rank][0], resumed[rank][0]])
        assert torch.equal(joined, uninterrupted[rank][0]), (kind, rank)
        assert first_part[rank][1] + resumed[rank][1] == uninterrupted[rank][1], (kind, rank)


@pytest.mark.parametrize("kind", PLAN)
def test_checkpoint_holds_each_ranks_own_state(saved, kind):
    """The per-rank parts differ: rank 1 resuming from rank 0's residuals would not be exact."""
    checkpoint = torch.load(saved[kind][0], weights_only=True)
    parts = per_rank_parts(checkpoint)
    assert len(parts) == WORLD
    key = {"topk": "buffers", "sign": "buffers", "diloco": "local_params", "onebit": "worker_error"}[kind]
    first, second = H.flat(_tensors(parts[0][key])), H.flat(_tensors(parts[1][key]))
    assert first.abs().sum() > 0 and not torch.equal(first, second), kind


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=str) for t in _tensors(tree[key])]
    return [t for value in tree for t in _tensors(value)]


def load_elsewhere(rank: int, world: int, paths: dict[str, str]) -> dict[str, str]:
    messages = {}
    for kind, path in paths.items():
        try:
            make(kind, torch.load(path, weights_only=True))
        except ValueError as error:
            messages[kind] = str(error)
    return messages


def test_a_different_world_size_is_refused_naming_both_sizes(saved):
    messages = H.run(load_elsewhere, {kind: str(path) for kind, (path, _) in saved.items()}, world=1)[0]
    assert set(messages) == set(PLAN)
    for kind, message in messages.items():
        assert "world size 2" in message and "world size 1" in message, (kind, message)


def test_an_empty_state_dict_from_another_rank_is_refused():
    def load_empty(rank: int, world: int) -> str:
        net = H.model()
        with pytest.raises(ValueError, match="rank 0 returns") as caught:
            OneBitAdam(net.parameters()).load_state_dict({})
        return str(caught.value)

    H.run(load_empty, world=1)
