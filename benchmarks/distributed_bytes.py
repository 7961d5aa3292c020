"""Loss against bytes communicated for every gradwise.distributed method, with N gloo processes on one host.

    .venv/bin/python benchmarks/distributed_bytes.py                 # 2 processes, 300 steps (under a minute)
    .venv/bin/python benchmarks/distributed_bytes.py --world 4 --steps 600

Problem: regression onto a fixed random teacher MLP (64 -> 32 -> 1, tanh) with a student MLP
64 -> 256 -> 256 -> 1 (about 83k float32 parameters); every rank draws its own mini-batches of 32 from its own
shard. Methods (each starts from the same weights):
    ddp-sgd   DistributedDataParallel's float32 all-reduce, SGD lr 0.01 momentum 0.9   (baseline for topk, sign)
    topk      compression_hook("topk"): DGC, density 1 %, momentum correction 0.9, warm-up 1/10 of the steps,
              local clipping at 1.0; plain SGD lr 0.01
    sign      compression_hook("sign"): 1-bit sign with error feedback; SGD lr 0.01 momentum 0.9
              (at lr 0.05 ddp-sgd still trains but sign diverges on this problem)
    ddp-adam  DDP's all-reduce with torch.optim.Adam                                    (baseline for onebit)
    onebit    OneBitAdam, warm-up (frozen variance after) for 1/5 of the steps
    diloco    DiLoCo with gradwise AdamW inside, sync_every=20, outer Nesterov lr 0.7, momentum 0.9
"Bytes" are what rank 0 handed to its collectives (for DDP: 4 bytes per parameter per step, the all-reduce
buffer); wire traffic depends on the backend's algorithm (see gradwise.distributed.comm). Loss is the mean
squared error over every rank's shard, evaluated on rank 0 without communication.
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gradwise as gw
from gradwise.distributed import DiLoCo, OneBitAdam, compression_hook

METHODS = ("ddp-sgd", "topk", "sign", "ddp-adam", "onebit", "diloco")
D_IN, BATCH, SHARD = 64, 32, 2048


def make_data(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    teacher = nn.Sequential(nn.Linear(D_IN, 32), nn.Tanh(), nn.Linear(32, 1))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 1.5 / p.shape[-1] ** 0.5)
        x = torch.randn(world, SHARD, D_IN, generator=g)
        y = teacher(x) + 0.01 * torch.randn(world, SHARD, 1, generator=g)
    return x, y


def make_model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D_IN, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 1))


def train(rank: int, world: int, method: str, steps: int, every: int) -> list[tuple[int, int, float]]:
    x, y = make_data(world)
    net = make_model()
    n = sum(p.numel() for p in net.parameters())
    forward, state, opt = net, None, None
    if method.startswith("ddp") or method in ("topk", "sign"):
        forward = DistributedDataParallel(net)
        if method in ("topk", "sign"):
            dgc = dict(ratio=0.01, momentum=0.9, clip_norm=1.0, warmup_steps=steps // 10)
            state, hook = compression_hook(method, **(dgc if method == "topk" else {}))
            forward.register_comm_hook(state, hook)
        if method == "ddp-adam":
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        else:
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.0 if method == "topk" else 0.9)
    elif method == "onebit":
        opt = OneBitAdam(net.parameters(), lr=1e-3, freeze_step=steps // 5)
    else:
        opt = DiLoCo(net, gw.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0), sync_every=20)
    g = torch.Generator().manual_seed(100 + rank)
    rows = []
    for t in range(1, steps + 1):
        batch = torch.randint(0, SHARD, (BATCH,), generator=g)
        opt.zero_grad()
        nn.functional.mse_loss(forward(x[rank, batch]), y[rank, batch]).backward()
        opt.step()
        if rank == 0 and (t % every == 0 or t == steps):
            if state is not None:
                sent = state.bytes_sent
            elif isinstance(opt, OneBitAdam | DiLoCo):
                sent = opt.bytes_sent
            else:
                sent = 4 * n * t
            with torch.no_grad():
                loss = float(nn.functional.mse_loss(net(x), y))
            rows.append((t, sent, loss))
    return rows


def _entry(rank: int, world: int, port: int, method: str, steps: int, every: int, out: str) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    rows = train(rank, world, method, steps, every)
    if rank == 0:
        torch.save(rows, Path(out) / "rows.pt")
    dist.barrier()
    dist.destroy_process_group()


def run(method: str, world: int, steps: int, every: int) -> tuple[list[tuple[int, int, float]], float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        procs = [ctx.Process(target=_entry, args=(r, world, port, method, steps, every, out)) for r in range(world)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        seconds = time.perf_counter() - start
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"{method}: a process failed (exit codes {[p.exitcode for p in procs]})")
        return torch.load(Path(out) / "rows.pt"), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50, help="evaluate the loss every this many steps")
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    import torch._dynamo  # noqa: F401  (DDP imports it; once here rather than in every forked process)

    n = sum(p.numel() for p in make_model().parameters())
    print(f"{args.world} gloo processes on 127.0.0.1, {n} parameters, {args.steps} steps; "
          f"float32 all-reduce = {4 * n} bytes per step")
    print(f"{'method':<9} {'step':>5} {'MB sent':>9} {'x less':>7} {'loss':>9}")
    summary = []
    for method in args.methods.split(","):
        rows, seconds = run(method, args.world, args.steps, args.every)
        for t, sent, loss in rows:
            print(f"{method:<9} {t:>5} {sent / 1e6:>9.3f} {4 * n * t / max(sent, 1):>7.1f} {loss:>9.5f}")
        summary.append((method, rows, seconds))
    print("\nsummary: bytes over the whole run, and per step over the last interval (after any warm-up)")
    print(f"{'method':<9} {'MB sent':>9} {'x less':>7} {'x less, last':>13} {'final loss':>11} {'wall s':>7}")
    for method, rows, seconds in summary:
        (t0, sent0, _), (t, sent, loss) = rows[-2], rows[-1]
        last = 4 * n * (t - t0) / max(sent - sent0, 1)
        print(f"{method:<9} {sent / 1e6:>9.3f} {4 * n * t / max(sent, 1):>7.1f} {last:>13.1f} {loss:>11.5f} "
              f"{seconds:>7.1f}")


if __name__ == "__main__":
    main()
