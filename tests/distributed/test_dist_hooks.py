"""DDP communication hooks: exact all-reduce when compression is off, the papers' updates when it is on."""

from __future__ import annotations

import math

import distributed_harness as H
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from gradwise.distributed import compression_hook
from gradwise.distributed.comm import pack_signs, signs, unpack_signs

STEPS, LR, WORLD = 40, 0.05, 2
TOPK = dict(kind="topk", ratio=0.01, momentum=0.9, clip_norm=0.5, warmup_steps=10)
SCENARIOS = {
    "ddp": None,  # DDP's own all-reduce: the baseline every hook is compared with
    "topk_dense": dict(kind="topk", ratio=1.0),
    "topk_dense_momentum": dict(kind="topk", ratio=1.0, momentum=0.9, factor_masking=False),
    "topk": TOPK,
    "sign": dict(kind="sign"),
}


def train_with_hooks(rank: int, world: int) -> dict:
    x, y = H.data(world)
    results = {}
    for name, config in SCENARIOS.items():
        net = H.model()
        # small buckets: several per model, rebuilt by DDP after the first iteration
        ddp = DistributedDataParallel(net, bucket_cap_mb=0.01)
        state = None
        if config is not None:
            state, hook = compression_hook(**config)
            ddp.register_comm_hook(state, hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        trajectory, losses, sent = [], [], []
        for t in range(STEPS):
            opt.zero_grad()
            loss = H.loss_of(ddp, x, y, rank, t)
            loss.backward()
            opt.step()
            trajectory.append(H.flat(net))
            losses.append(float(loss.detach()))
            sent.append(state.bytes_sent if state else 0)
        results[name] = dict(trajectory=torch.stack(trajectory), losses=losses, sent=sent,
                             steps=state.step if state else STEPS)
    return results


# -- plain references, one process simulating both ranks ---------------------------------------------------
def reference(update, steps: int = STEPS) -> list[torch.Tensor]:
    net = H.model()
    x, y = H.data(WORLD)
    params = list(net.parameters())
    state: dict = {}
    trajectory = []
    for t in range(steps):
        grads = [torch.autograd.grad(H.loss_of(net, x, y, r, t), params) for r in range(WORLD)]
        with torch.no_grad():
            update(params, grads, state, t)
        trajectory.append(H.flat(params))
    return trajectory


def sgd(momentum: float = 0.0):
    def update(params, grads, state, t):
        for j, p in enumerate(params):
            g = (grads[0][j] + grads[1][j]) / WORLD
            if momentum:
                state[j] = g.clone() if t == 0 else momentum * state[j] + g
                g = state[j]
            p -= LR * g
    return update


def dgc(ratio, momentum, clip_norm, warmup_steps, warmup_ratio=0.25, factor_masking=True, kind=None):
    """Lin et al. 2018, Algorithm 1, written out per worker."""
    def update(params, grads, state, t):
        if t < warmup_steps:
            density = warmup_ratio * (ratio / warmup_ratio) ** (t / warmup_steps)
        else:
            density = ratio
        for j, p in enumerate(params):
            total = torch.zeros(p.numel(), dtype=p.dtype)
            for r in range(WORLD):
                g = grads[r][j].reshape(-1)
                u, v = state.setdefault((r, j), (torch.zeros_like(g), torch.zeros_like(g)))
                threshold = clip_norm / math.sqrt(WORLD)
                norm = g.norm()
                if norm > threshold:
                    g = g * threshold / (norm + 1e-6)
                u.mul_(momentum).add_(g)
                v.add_(u)
                k = max(1, math.ceil(density * g.numel()))
                largest = torch.argsort(v.abs(), descending=True)[:k]
                sent = torch.zeros_like(v)
                sent[largest] = v[largest]
                total += sent
                v[largest] = 0
                if factor_masking:
                    u[largest] = 0
            p -= LR * (total / WORLD).view_as(p)
    return update


def ef_sign(params, grads, state, t):
    """Error-feedback sign compression, scale = mean |c| per tensor, written out per worker."""
    for j, p in enumerate(params):
        total = torch.zeros_like(p)
        for r in range(WORLD):
            e = state.setdefault((r, j), torch.zeros_like(p))
            c = grads[r][j] + e
            q = c.abs().mean() * torch.where(c >= 0, 1.0, -1.0).to(c.dtype)
            state[(r, j)] = c - q
            total += q
        p -= LR * total / WORLD


@pytest.fixture(scope="module")
def runs():
    return H.run(train_with_hooks, world=WORLD)


def test_every_hook_keeps_replicas_identical(runs):
    for name in SCENARIOS:
        assert torch.equal(runs[0][name]["trajectory"], runs[1][name]["trajectory"]), name


def test_compression_off_equals_synchronous_data_parallel(runs):
    want = reference(sgd())
    H.assert_trajectories_close(list(runs[0]["ddp"]["trajectory"]), want)
    H.assert_trajectories_close(list(runs[0]["topk_dense"]["trajectory"]), want, rtol=1e-12)
    # momentum correction without factor masking at density 1 is momentum SGD on the averaged gradient
    H.assert_trajectories_close(list(runs[0]["topk_dense_momentum"]["trajectory"]), reference(sgd(0.9)))


def test_topk_follows_deep_gradient_compression(runs):
    H.assert_trajectories_close(list(runs[0]["topk"]["trajectory"]), reference(dgc(**TOPK)))
    assert runs[0]["topk"]["steps"] == STEPS


def test_sign_follows_error_feedback_sign_compression(runs):
    H.assert_trajectories_close(list(runs[0]["sign"]["trajectory"]), reference(ef_sign))


@pytest.mark.parametrize("name, factor", [("topk", 10), ("sign", 4)])
def test_compressed_bytes_and_loss(runs, name, factor):
    dense = 4 * H.numel(H.model())  # a float32 all-reduce of the gradients, per step
    sent = runs[0][name]["sent"]
    per_step = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    after_warmup = per_step[TOPK["warmup_steps"]:]
    assert max(after_warmup) * factor <= dense, (name, max(after_warmup), dense)
    initial, final = H.full_loss(H.flat(H.model())), H.full_loss(runs[0][name]["trajectory"][-1])
    assert final < 0.8 * initial, (name, initial, final)


def test_sign_bits_round_trip():
    x = torch.tensor([0.0, -1.0, 2.0, -0.0, 3.0, -4.0, 5.0, 6.0, -7.0, 0.5, -0.5])
    packed = pack_signs(x)
    assert packed.dtype == torch.uint8 and packed.numel() == 2
    assert torch.equal(unpack_signs(packed, x.numel(), torch.float32), signs(x))
    assert signs(x)[0] == 1 and signs(x)[3] == 1  # zero (either sign) is sent as +1


@pytest.mark.parametrize("kwargs, name", [
    (dict(kind="qsgd"), "kind"), (dict(kind="topk", ratio=0.0), "ratio"), (dict(kind="topk", ratio=1.5), "ratio"),
    (dict(kind="topk", momentum=1.0), "momentum"), (dict(kind="topk", clip_norm=-1.0), "clip_norm"),
    (dict(kind="topk", warmup_steps=-1), "warmup_steps"), (dict(kind="topk", warmup_ratio=0.0), "warmup_ratio"),
])
def test_bad_hook_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        compression_hook(**kwargs)
