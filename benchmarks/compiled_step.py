"""AdamW with compile=True next to torch.optim.AdamW(fused=True): step time, and first-step compile time.

Step time, one thread by default (--threads), shapes 100 x 100k and 1000 x 1k float32 elements, fixed
gradients, the median of --repeats steps after the warm-up steps (which compile). The contenders of a shape
are timed round-robin, one step each in turn, so that load from other processes hits them alike; compare
ratios, not milliseconds, on a shared machine:
  fused             torch.optim.AdamW(fused=True)
  eager             gradwise.AdamW, eager (nonfinite="skip", the default: one aminmax per tensor)
  compiled          gradwise.AdamW(compile=True): flat buffers, one inductor call per bucket; the
                    non-finite check reads the flat gradient buffer once
  compiled-ignore   the same with nonfinite="ignore" (no check)
  compiled-newgrad  compiled, but every step finds new gradient tensors (as after zero_grad(set_to_none=True)
                    and backward): they are copied into the flat buffer; setting them is not timed
  floor             7 passes (read p, g, m, v; write p, m, v) x 4 bytes x elements / bandwidth of the in-place
                    triad a += s b, timed in the same round-robin

--clock cpu times each step by the CPU time of this thread (time.thread_time) instead of the wall clock: with
one thread and a loaded machine it leaves out the time spent waiting for a core (it still counts cache misses
caused by neighbours), so its ratios move less from run to run.

Compile time: a model of 100 tensors (50 Linear(64, 64) layers: two param groups, decayed weights and
biases without decay, so two graphs) trained for one step with compile=True in a child process whose
TORCHINDUCTOR_CACHE_DIR is a fresh directory (cold), then in a second child on the same directory (warm:
the FX graph cache hits, dynamo still traces). Reported: the first step (backward + step) in wall-clock
seconds and in CPU seconds of the process and its compiler children (the load-independent figure on a
shared machine), the process start-up (import of torch and gradwise) and the inductor cache counters.

Run:  .venv/bin/python benchmarks/compiled_step.py [--threads 1] [--repeats 30] [--shapes 100x100k,1000x1k]
                                                   [--skip-compile-time] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

import gradwise

SHAPES = {"100x100k": (100, 100_000), "1000x1k": (1000, 1_000)}
TRIAD_ELEMENTS = 16_000_000


def make_params(count: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(size, generator=g).requires_grad_() for _ in range(count)]
    for p in params:
        p.grad = torch.randn(size, generator=g) * 1e-2
    return params


def fresh_gradients(params: list[torch.Tensor]) -> Callable[[], None]:
    """A function that gives each parameter with a gradient a new gradient tensor with the same values, as backward
    does after `zero_grad(set_to_none=True)` (torch's default): an optimizer that keeps gradients in buffers of its
    own (gradwise's compiled flat path) must then copy them in, each step. Two pools of copies made up front take
    turns, so that a call allocates nothing and leaves nothing freshly written in the cache."""
    with_grad = [p for p in params if p.grad is not None]
    pool = [[p.grad.detach().clone() for p in with_grad] for _ in range(2)]  # type: ignore[union-attr]
    turn = [0]

    def give() -> None:
        turn[0] ^= 1
        for p, g in zip(with_grad, pool[turn[0]], strict=True):
            p.grad = g

    return give


def contenders(count: int, size: int) -> dict:
    steps = {}
    fused = torch.optim.AdamW(make_params(count, size), lr=1e-3, fused=True)
    steps["fused"] = fused.step
    steps["eager"] = gradwise.AdamW(make_params(count, size), lr=1e-3).step
    steps["compiled"] = gradwise.AdamW(make_params(count, size), lr=1e-3, compile=True).step
    steps["compiled-ignore"] = gradwise.AdamW(make_params(count, size), lr=1e-3, compile=True,
                                              nonfinite="ignore").step
    params = make_params(count, size)
    steps["compiled-newgrad"] = gradwise.AdamW(params, lr=1e-3, compile=True).step
    new_grads = fresh_gradients(params)
    a, b = torch.randn(TRIAD_ELEMENTS), torch.randn(TRIAD_ELEMENTS)
    steps["triad"] = lambda: a.add_(b, alpha=1e-9)
    return steps, {"compiled-newgrad": new_grads}


def time_shape(count: int, size: int, repeats: int, warmup: int, clock=time.perf_counter) -> dict[str, float]:
    steps, setups = contenders(count, size)
    first = {}
    for name, step in steps.items():
        setup = setups.get(name, lambda: None)
        setup()
        start = time.perf_counter()
        step()
        first[name] = time.perf_counter() - start
        for _ in range(warmup):
            setup()
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            if name in setups:
                setups[name]()
            start = clock()
            step()
            times[name].append(clock() - start)
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    medians["floor"] = 7 * 4 * count * size / (3 * 4 * TRIAD_ELEMENTS / medians["triad"])
    return {"median_s": medians, "first_s": first}


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the C++ compiler): what the compile costs
    whatever the load from other processes."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def first_step_child() -> None:
    from torch import nn

    model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(50)])
    opt = gradwise.create("adamw", model, lr=1e-3, compile=True)
    x = torch.randn(16, 64)
    startup = time.time() - float(os.environ["GRADWISE_BENCH_WALL0"])
    ready, cpu = time.perf_counter(), _cpu_seconds()
    model(x).square().mean().backward()
    opt.step()
    done, cpu = time.perf_counter(), _cpu_seconds() - cpu
    counters = torch._dynamo.utils.counters
    print(json.dumps({
        "tensors": sum(1 for _ in model.parameters()),
        "first_step_s": done - ready,
        "first_step_cpu_s": cpu,
        "startup_s": startup,
        "graphs": counters["stats"]["unique_graphs"],
        "inductor": dict(counters["inductor"]),
    }))


def compile_time(threads: int) -> dict[str, dict]:
    results = {}
    with tempfile.TemporaryDirectory(prefix="gradwise-inductor-") as cache:
        for run in ("cold", "warm"):
            start = time.time()
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "GRADWISE_BENCH_WALL0": repr(start)}
            out = subprocess.run([sys.executable, __file__, "--first-step-child", "--threads", str(threads)],
                                 env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"the {run} child failed:\n{out.stderr[-3000:]}")
            results[run] = json.loads(out.stdout.strip().splitlines()[-1])
            results[run]["process_s"] = time.time() - start
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--skip-compile-time", action="store_true")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--first-step-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.first_step_child:
        first_step_child()
        return 0
    began = time.time()
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, threads {args.threads}, {os.cpu_count()} cores, load average {load:.1f}")
    if not args.skip_compile_time:
        runs = compile_time(args.threads)
        print("\nfirst step with compile=True, 100-tensor model (50 x Linear(64, 64), 2 param groups):")
        print(f"{'run':>5} {'first step s':>12} {'its CPU s':>9} {'start-up s':>10} {'process s':>9} {'graphs':>6}"
              "  inductor cache")
        for run, r in runs.items():
            print(f"{run:>5} {r['first_step_s']:12.1f} {r['first_step_cpu_s']:9.1f} {r['startup_s']:10.1f} "
                  f"{r['process_s']:9.1f} {r['graphs']:6d}  {r['inductor']}")
    print(f"\nAdamW step, ms of {args.clock} time (median of the round-robin); x fused and x floor from the same run:")
    print(f"{'shape':>9} {'contender':>16} {'ms':>9} {'x fused':>8} {'x floor':>8} {'first call s':>12}")
    for shape in args.shapes.split(","):
        count, size = SHAPES[shape]
        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        result = time_shape(count, size, args.repeats, args.warmup, clock)
        ms = result["median_s"]
        for name in ("floor", "fused", "eager", "compiled", "compiled-ignore", "compiled-newgrad"):
            first = result["first_s"].get(name)
            first_text = f"{first:12.1f}" if first is not None else f"{'-':>12}"
            print(f"{shape:>9} {name:>16} {ms[name] * 1e3:9.2f} {ms[name] / ms['fused']:8.2f} "
                  f"{ms[name] / ms['floor']:8.2f} {first_text}")
        bandwidth = 3 * 4 * TRIAD_ELEMENTS / ms["triad"] / 1e9
        print(f"{shape:>9} {'(triad)':>16} {ms['triad'] * 1e3:9.2f}   {bandwidth:.1f} GB/s")
    print(f"\ntook {time.time() - began:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
