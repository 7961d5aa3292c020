"""Step time with 8-bit state (state_bits=8) against 32-bit state, compiled and eager, for AdamW, AdaBelief, Adan.

Per optimizer and shape (count tensors x size float32 elements, fixed gradients), one step each in turn
(round-robin, so that load from other processes hits all alike), the median of --repeats steps after the
warm-up steps (the first of which compiles):
  compiled-32   compile=True, 32-bit state: the flat path (one inductor call per bucket)
  compiled-8    compile=True, state_bits=8: the flat 8-bit path (gradwise.core.compiled_state) on the native
                fused kernel (gradwise.state.native: decode, chain, re-quantize per block in cache), one call
                over the whole bucket; inductor's code where the kernel does not build (the header says which)
  inductor-8    the same with the native kernel switched off (`native.disabled()`): the inductor-compiled
                function that dequantizes, runs the chain and quantizes again
  eager-32      compile=False, 32-bit state
  eager-8       compile=False, state_bits=8 (per tensor: dequantize, chain, quantize)
  fused         torch.optim.AdamW(fused=True), the same reference for every row
  bnb-8         bitsandbytes' AdamW8bit (its CPU path; the same lr, betas, decay and 4096-value minimum, its own
                fixed blocks of 256), on the adamw rows only and where bitsandbytes imports: the peer 8-bit
                optimizer, "-" otherwise
ratio = compiled-8 / compiled-32, from the same run (the issue's target: <= 1.5); "ind/32" = inductor-8 /
compiled-32. --clock cpu times each step by this thread's CPU time (with --threads 1 it leaves out the waits for
a core on a loaded machine); it is refused with more threads, whose work it would not count.
Defaults of each optimizer (state_block=2048, state_min_size=4096), lr=1e-3, weight_decay=0.01,
nonfinite="skip" (the default).

Run:  .venv/bin/python benchmarks/state_speed.py [--threads 1] [--repeats 10] [--warmup 2] [--clock wall|cpu]
                                                 [--shapes 100x100k,10x1M] [--optimizers adamw,adabelief,adan]
                                                 [--backend inductor]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import gradwise
import gradwise.state  # noqa: F401  (registers state_bits)
from gradwise.state import native

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling script, also when loaded by path
from compiled_step import make_params  # noqa: E402  (the same parameters and gradients as compiled_step.py)

SHAPES = {"100x100k": (100, 100_000), "10x1M": (10, 1_000_000), "20x100k": (20, 100_000), "tiny": (3, 5_000)}
OPTIMIZERS = ("adamw", "adabelief", "adan")
CONTENDERS = ("compiled-32", "compiled-8", "inductor-8", "eager-32", "eager-8", "fused", "bnb-8")


def bnb_adamw8bit(params: list[torch.Tensor]) -> torch.optim.Optimizer | None:
    """bitsandbytes' 8-bit AdamW configured as the gradwise rows (32-bit state under 4096 values), or
    None when bitsandbytes is not installed or does not import here."""
    try:
        import bitsandbytes as bnb
    except Exception:  # not installed, or its import fails on this machine
        return None
    return bnb.optim.AdamW8bit(params, lr=1e-3, weight_decay=1e-2, min_8bit_size=4096)


def without_native(step: Callable[[], object]) -> Callable[[], object]:
    """`step` with the native 8-bit kernel switched off while it runs: inductor's generated code."""

    def run() -> object:
        with native.disabled():
            return step()

    return run


def contenders(name: str, count: int, size: int, backend: str = "inductor") -> dict[str, Callable[[], object]]:
    def make(**extra: Any) -> Callable[[], object]:
        return gradwise.create(name, make_params(count, size), lr=1e-3, weight_decay=1e-2, **extra).step

    steps = {
        "compiled-32": make(compile=backend),
        "compiled-8": make(compile=backend, state_bits=8),
        "eager-32": make(),
        "eager-8": make(state_bits=8),
        "fused": torch.optim.AdamW(make_params(count, size), lr=1e-3, fused=True).step,
    }
    if backend == "inductor" and native.available():  # else compiled-8 is inductor's (or the backend's) code
        steps["inductor-8"] = without_native(make(compile=backend, state_bits=8))
    peer = bnb_adamw8bit(make_params(count, size)) if name == "adamw" else None
    if peer is not None:
        steps["bnb-8"] = peer.step
    return steps


def time_steps(steps: dict[str, Callable[[], object]], repeats: int, warmup: int,
               clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = clock()
            step()
            times[name].append(clock() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", default="100x100k,10x1M")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the compiled rows")
    args = parser.parse_args(argv)
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu counts only this thread's time: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    began = time.time()
    print(f"torch {torch.__version__}, threads {args.threads}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}; ms of {args.clock} time per step "
          f"(median of {args.repeats}, round-robin)")
    if args.backend != "inductor":
        kernel = f"the {args.backend!r} backend's code (the native kernel stands in for inductor only)"
    elif native.available():
        kernel = "native kernel"
    else:
        kernel = f"inductor (native kernel missing: {native.build_error()})"
    print(f"compiled-8 runs on: {kernel}")
    print(f"{'optimizer':>10} {'shape':>9} " + " ".join(f"{c:>11}" for c in CONTENDERS)
          + f" {'8/32 comp':>9} {'ind/32':>7}")
    for name in args.optimizers.split(","):
        for shape in args.shapes.split(","):
            count, size = SHAPES[shape]
            medians = time_steps(contenders(name, count, size, args.backend), args.repeats, args.warmup, clock)
            ms = {k: v * 1e3 for k, v in medians.items()}
            ratio = ms["compiled-8"] / ms["compiled-32"]
            inductor_ratio = f"{ms['inductor-8'] / ms['compiled-32']:7.2f}" if "inductor-8" in ms else f"{'-':>7}"
            cells = " ".join(f"{ms[c]:11.2f}" if c in ms else f"{'-':>11}" for c in CONTENDERS)
            print(f"{name:>10} {shape:>9} {cells} {ratio:9.2f} {inductor_ratio}", flush=True)
    print(f"took {time.time() - began:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
