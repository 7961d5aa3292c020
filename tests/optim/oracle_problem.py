"""The small non-convex problem the oracle tests run optimizers on, and how they compare trajectories.

A one-hidden-layer tanh regression (weights, bias, output weights): gradients of every sign and scale,
shared by the per-optimizer tests so that each compares its optimizer with its oracle on the same ground.
"""

from __future__ import annotations

import torch

DT = torch.float64


def make_problem(seed: int = 0, dtype: torch.dtype = DT, rows: int = 48, features: int = 5, hidden: int = 12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, features, generator=g, dtype=dtype)
    y = torch.sin(2 * x[:, :1]) * torch.cos(x[:, 1:2]) + 0.1 * x[:, 2:3]
    init = [
        0.6 * torch.randn(features, hidden, generator=g, dtype=dtype),
        0.1 * torch.randn(hidden, generator=g, dtype=dtype),
        0.6 * torch.randn(hidden, 1, generator=g, dtype=dtype),
    ]

    def loss_fn(params, step=0):  # the same loss at every step
        w1, b1, w2 = params
        return ((torch.tanh(x @ w1 + b1) @ w2 - y) ** 2).mean()

    return init, loss_fn


def trajectory(make_opt, steps: int = 50, seed: int = 0, schedule=None, problem=make_problem, **shape):
    """Every parameter after each of `steps` steps, and the starting point; `schedule(opt)` makes an lr
    scheduler stepped after each step. `problem(seed, **shape)` gives the starting point and the loss
    `loss_fn(params, step)` (which may change with the step); the default is `make_problem`."""
    init, loss_fn = problem(seed, **shape)
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = make_opt(params)
    scheduler = schedule(opt) if schedule else None
    out = []
    for step in range(steps):
        for p in params:
            p.grad = None
        loss_fn(params, step).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        out.append([p.detach().clone() for p in params])
    return out, init


def worst_relative_difference(ours, theirs) -> float:
    """The largest elementwise |ours - theirs| / |theirs| over every step and tensor (floor 1e-12)."""
    worst = 0.0
    for step_ours, step_theirs in zip(ours, theirs, strict=True):
        for a, b in zip(step_ours, step_theirs, strict=True):
            worst = max(worst, float(((a - b).abs() / b.abs().clamp_min(1e-12)).max()))
    return worst


def worst_difference(ours, theirs) -> float:
    """The largest elementwise |ours - theirs| over every step and tensor."""
    return max(
        float((a - b).abs().max())
        for step_ours, step_theirs in zip(ours, theirs, strict=True)
        for a, b in zip(step_ours, step_theirs, strict=True)
    )
