"""DiLoCo on 2 gloo processes: synchronous data parallelism at H=1, the paper's two-level update otherwise."""

from __future__ import annotations

import distributed_harness as H
import pytest
import torch

import gradwise as gw
from gradwise.distributed import DiLoCo

STEPS, WORLD, LR, SYNC = 40, 2, 0.05, 5
ADAMW = dict(lr=1e-2, weight_decay=0.01)


def train(rank: int, make_inner, steps: int = STEPS, **diloco):
    """Trajectory of this rank's local parameters and bytes sent (resuming: test_dist_checkpoint.py)."""
    x, y = H.data(WORLD)
    net = H.model()
    opt = DiLoCo(net, make_inner(net.parameters()), **diloco)
    trajectory, sent = [], []
    for t in range(steps):
        opt.zero_grad()
        H.loss_of(net, x, y, rank, t).backward()
        opt.step()
        trajectory.append(H.flat(net))
        sent.append(opt.bytes_sent)
    return torch.stack(trajectory), sent


def diloco_runs(rank: int, world: int) -> dict:
    sgd = lambda params: torch.optim.SGD(params, lr=LR, momentum=0.9)  # noqa: E731
    adamw = lambda params: gw.AdamW(params, **ADAMW)  # noqa: E731
    out = {}
    out["dense"] = train(rank, sgd, sync_every=1, outer_lr=1.0, outer_momentum=0.0)[0]
    out["diloco"], out["sent"] = train(rank, adamw, sync_every=SYNC)
    return out


@pytest.fixture(scope="module")
def runs():
    return H.run(diloco_runs, world=WORLD)


def test_one_step_syncs_equal_synchronous_data_parallel(runs):
    """H=1, outer lr 1, no outer momentum: momentum SGD on the averaged gradient (torch.optim.SGD)."""
    net = H.model()
    x, y = H.data(WORLD)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
    want = []
    for t in range(STEPS):
        opt.zero_grad()
        (sum(H.loss_of(net, x, y, r, t) for r in range(WORLD)) / WORLD).backward()
        opt.step()
        want.append(H.flat(net))
    for rank in range(WORLD):
        H.assert_trajectories_close(list(runs[rank]["dense"]), want)


def reference_diloco(steps: int = STEPS) -> list[list[torch.Tensor]]:
    """Douillard et al. 2023, Algorithm 1, one process simulating both workers; outer Nesterov by hand."""
    x, y = H.data(WORLD)
    theta = [p.detach().clone() for p in H.model().parameters()]
    workers = [H.model() for _ in range(WORLD)]
    inner = [torch.optim.AdamW(w.parameters(), **ADAMW) for w in workers]
    momentum = [torch.zeros_like(p) for p in theta]
    trajectories: list[list[torch.Tensor]] = [[] for _ in range(WORLD)]
    for t in range(steps):
        for r, (w, opt) in enumerate(zip(workers, inner, strict=True)):
            opt.zero_grad()
            H.loss_of(w, x, y, r, t).backward()
            opt.step()
        if (t + 1) % SYNC == 0:
            with torch.no_grad():
                for j, p in enumerate(theta):
                    delta = sum(p - list(w.parameters())[j] for w in workers) / WORLD
                    momentum[j] = delta.clone() if t + 1 == SYNC else 0.9 * momentum[j] + delta
                    p -= 0.7 * (delta + 0.9 * momentum[j])
                for w in workers:
                    for q, p in zip(w.parameters(), theta, strict=True):
                        q.copy_(p)
        for r, w in enumerate(workers):
            trajectories[r].append(H.flat(w))
    return trajectories


def test_diloco_follows_the_paper_every_step(runs):
    want = reference_diloco()
    for rank in range(WORLD):
        H.assert_trajectories_close(list(runs[rank]["diloco"]), want[rank])


def test_replicas_identical_after_each_sync_and_local_between(runs):
    a, b = runs[0]["diloco"], runs[1]["diloco"]
    for t in range(STEPS):
        if (t + 1) % SYNC == 0:
            assert torch.equal(a[t], b[t]), t + 1
        else:
            assert not torch.equal(a[t], b[t]), t + 1


def test_bytes_and_loss(runs):
    n = H.numel(H.model())
    sent = runs[0]["sent"]
    assert sent[-1] == (STEPS // SYNC) * n * 8  # one float64 all-reduce per sync
    assert sent[SYNC - 2] == 0
    initial, final = H.full_loss(H.flat(H.model())), H.full_loss(runs[0]["diloco"][-1])
    assert final < 0.8 * initial, (initial, final)


@pytest.mark.parametrize("kwargs, name", [
    (dict(outer_lr=0.0), "outer_lr"), (dict(outer_momentum=1.0), "outer_momentum"),
    (dict(sync_every=0), "sync_every"), (dict(nesterov=1), "nesterov"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    net = H.model()
    with pytest.raises((ValueError, TypeError), match=name):
        DiLoCo(net, torch.optim.SGD(net.parameters(), lr=0.1), **kwargs)
