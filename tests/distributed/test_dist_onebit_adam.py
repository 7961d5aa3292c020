"""1-bit Adam on 2 gloo processes against a one-process reference of the paper's algorithm."""

from __future__ import annotations

import math

import distributed_harness as H
import pytest
import torch

from gradwise.distributed import OneBitAdam

STEPS, WORLD, FREEZE = 50, 2, 10
HYPER = dict(lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def train(rank: int, freeze_step: int, world: int = WORLD):
    """Trajectory and bytes sent (resuming from a checkpoint: test_dist_checkpoint.py)."""
    x, y = H.data(world)
    net = H.model()
    opt = OneBitAdam(net.parameters(), freeze_step=freeze_step, **HYPER)
    trajectory, sent = [], []
    for t in range(STEPS):
        opt.zero_grad()
        H.loss_of(net, x, y, rank, t).backward()
        opt.step()
        trajectory.append(H.flat(net))
        sent.append(opt.bytes_sent)
    return torch.stack(trajectory), sent


def onebit_runs(rank: int, world: int) -> dict:
    return {"dense": train(rank, freeze_step=STEPS), "onebit": train(rank, freeze_step=FREEZE)}


@pytest.fixture(scope="module")
def runs():
    return H.run(onebit_runs, world=WORLD)


def compress(x: torch.Tensor) -> torch.Tensor:
    """C(x) = (||x|| / sqrt(len x)) sign(x), zero counted as positive."""
    return x.norm() / math.sqrt(x.numel()) * torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def reference(freeze_step: int, world: int = WORLD) -> list[torch.Tensor]:
    """Tang et al. 2021, Algorithm 1 (no bias correction, as DeepSpeed), the server split in `world` chunks."""
    lr, (b1, b2), eps, wd = HYPER["lr"], HYPER["betas"], HYPER["eps"], HYPER["weight_decay"]
    x, y = H.data(world)
    net = H.model()
    params = list(net.parameters())
    sizes = [p.numel() for p in params]
    n = sum(sizes)
    chunk = 8 * math.ceil(n / (8 * world))
    m, v = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    worker_error = [torch.zeros(n, dtype=torch.float64) for _ in range(world)]
    server_error = [torch.zeros(chunk, dtype=torch.float64) for _ in range(world)]
    trajectory = []
    for t in range(STEPS):
        grads = [torch.cat([g.reshape(-1) for g in torch.autograd.grad(H.loss_of(net, x, y, r, t), params)])
                 for r in range(world)]
        if t + 1 <= freeze_step:
            g = sum(grads) / world
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
        else:
            sent = []
            for r in range(world):
                c = b1 * m + (1 - b1) * grads[r] + worker_error[r]
                q = torch.cat([compress(part) for part in c.split(sizes)])
                worker_error[r] = c - q
                sent.append(torch.cat([q, torch.zeros(chunk * world - n, dtype=q.dtype)]))
            average = sum(sent) / world
            pieces = []
            for s in range(world):
                a = average[s * chunk:(s + 1) * chunk] + server_error[s]
                valid = max(0, min(n - s * chunk, chunk))
                q = compress(a[:valid])
                server_error[s] = torch.cat([a[:valid] - q, torch.zeros(chunk - valid, dtype=a.dtype)])
                pieces.append(q)
            m = torch.cat(pieces)[:n]
        with torch.no_grad():
            flat = H.flat(params)
            flat -= lr * (m / (v.sqrt() + eps) + wd * flat)
            torch.nn.utils.vector_to_parameters(flat, params)
        trajectory.append(H.flat(params))
    return trajectory


def test_without_compression_equals_synchronous_adam(runs):
    """freeze_step beyond the run: Adam (no bias correction) on the averaged gradient, every step."""
    want = reference(freeze_step=STEPS)
    for rank in range(WORLD):
        H.assert_trajectories_close(list(runs[rank]["dense"][0]), want)


def test_compressed_momentum_follows_the_paper(runs):
    want = reference(freeze_step=FREEZE)
    for rank in range(WORLD):
        H.assert_trajectories_close(list(runs[rank]["onebit"][0]), want)
    assert not torch.allclose(runs[0]["onebit"][0][-1], runs[0]["dense"][0][-1])  # compression did act


def test_replicas_identical_bytes_and_loss(runs):
    assert torch.equal(runs[0]["onebit"][0], runs[1]["onebit"][0])
    assert torch.equal(runs[0]["dense"][0], runs[1]["dense"][0])
    n = H.numel(H.model())
    sent = runs[0]["onebit"][1]
    per_step = [b - a for a, b in zip([0, *sent[:-1]], sent, strict=True)]
    assert per_step[:FREEZE] == [8 * n] * FREEZE  # float64 all-reduce of the gradients while warming up
    assert max(per_step[FREEZE:]) * 4 <= 4 * n, (max(per_step[FREEZE:]), 4 * n)
    initial, final = H.full_loss(H.flat(H.model())), H.full_loss(runs[0]["onebit"][0][-1])
    assert final < 0.8 * initial, (initial, final)


def four_ranks(rank: int, world: int) -> torch.Tensor:
    return train(rank, freeze_step=FREEZE, world=world)[0]


def test_four_ranks_follow_the_paper_and_stay_identical():
    """Four servers: chunks of 8 * ceil(n / 32) elements, the last one padded."""
    runs = H.run(four_ranks, world=4)
    want = reference(freeze_step=FREEZE, world=4)
    H.assert_trajectories_close(list(runs[0]), want)
    for rank in range(1, 4):
        assert torch.equal(runs[rank], runs[0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(lr=-1.0), "lr"), (dict(betas=(0.9, 1.0)), "betas"), (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"), (dict(freeze_step=-1), "freeze_step"),
    (dict(freeze_step=1.5), "freeze_step"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        OneBitAdam(H.model().parameters(), **kwargs)


def test_one_dtype_for_all_parameters():
    params = [torch.zeros(2, dtype=torch.float64, requires_grad=True), torch.zeros(2, requires_grad=True)]
    with pytest.raises(TypeError, match="one dtype"):
        OneBitAdam([{"params": params[:1]}, {"params": params[1:]}])
