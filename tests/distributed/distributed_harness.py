"""Run a function on N gloo processes on 127.0.0.1 and collect what each returns.

Processes are forked (torch and gradwise are already imported here, so a group starts in a fraction of
a second instead of re-importing torch per process), use one intra-op thread each, and talk over the
loopback interface only (GLOO_SOCKET_IFNAME=lo, a free port found at run time).
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch._dynamo  # noqa: F401  (DistributedDataParallel imports it; once here, not once per process)
import torch.distributed as dist
from torch import nn


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(worker: Callable, rank: int, world: int, port: int, pg_timeout: float, out: str, args: tuple) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=pg_timeout),
        )
        value = worker(rank, world, *args)
        torch.save(("ok", value), Path(out) / f"{rank}.pt")
    except BaseException:  # reported to the parent, which raises it
        torch.save(("error", traceback.format_exc()), Path(out) / f"{rank}.pt")
        os._exit(1)
    try:  # leave together; a group broken on purpose (failure tests) is simply abandoned
        dist.barrier()
        dist.destroy_process_group()
    finally:
        os._exit(0)


def run(
    worker: Callable[..., Any],
    *args: Any,
    world: int = 2,
    pg_timeout: float = 20.0,
    wait_for: Iterable[int] | None = None,
    limit: float = 60.0,
) -> list[Any]:
    """worker(rank, world, *args) on `world` processes; returns each rank's value (None if it gave none).

    Raises if a rank raised. `wait_for`: the ranks to wait for (default all); the others are killed
    once those have finished.
    """
    port = free_port()
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as out:
        procs = [ctx.Process(target=_entry, args=(worker, r, world, port, pg_timeout, out, args), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + limit
        needed = list(range(world)) if wait_for is None else list(wait_for)
        for r in needed:
            procs[r].join(max(0.0, deadline - time.monotonic()))
        timed_out = [r for r in needed if procs[r].is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        if timed_out:
            raise TimeoutError(f"ranks {timed_out} did not finish within {limit} s")
        results: list[Any] = []
        for r in range(world):
            path = Path(out) / f"{r}.pt"
            if not path.exists():
                results.append(None)
                continue
            status, value = torch.load(path, weights_only=False)
            if status == "error" and r in needed:
                raise AssertionError(f"rank {r} raised:\n{value}")
            results.append(value)
        return results


# -- the small regression every distributed test trains ----------------------------------------------------
D_IN, HIDDEN, BATCH, BATCHES = 32, 64, 16, 8


def data(world: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """X[rank, batch] and y[rank, batch]: a different shard per rank, a different batch per step."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(world, BATCHES, BATCH, D_IN, generator=g, dtype=dtype)
    w = torch.randn(D_IN, 1, generator=g, dtype=dtype) / D_IN**0.5
    y = torch.sin(2 * x @ w) + 0.05 * torch.randn(world, BATCHES, BATCH, 1, generator=g, dtype=dtype)
    return x, y


def model(seed: int = 1, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1)).to(dtype)


def loss_of(net: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int, t: int) -> torch.Tensor:
    """Mean squared error of `net` on rank `rank`'s batch for step t (0-based)."""
    return torch.nn.functional.mse_loss(net(x[rank, t % BATCHES]), y[rank, t % BATCHES])


def flat(net_or_params: nn.Module | Iterable[torch.Tensor]) -> torch.Tensor:
    params = net_or_params.parameters() if isinstance(net_or_params, nn.Module) else net_or_params
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def numel(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def assert_trajectories_close(got: list[torch.Tensor], want: list[torch.Tensor], rtol: float = 1e-4) -> None:
    """Parameters after every step: relative difference below rtol."""
    assert len(got) == len(want), (len(got), len(want))
    for t, (a, b) in enumerate(zip(got, want, strict=True)):
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        assert rel < rtol, f"step {t + 1}: relative difference {rel:.3g} >= {rtol}"


def full_loss(vector: torch.Tensor, world: int = 2) -> float:
    """Mean squared error over every rank's data of the model whose parameters are `vector`."""
    net = model()
    torch.nn.utils.vector_to_parameters(vector, net.parameters())
    x, y = data(world)
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(net(x), y))
