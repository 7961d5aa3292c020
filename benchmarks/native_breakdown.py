"""Where the native fused 8-bit step's time goes: the codec alone against the whole step and the 32-bit step.

For each optimizer, on one flat bucket of --values float32 values (blocks of 2048, as state_speed.py's 10 x 1M),
one thread, the native kernel (gradwise.state.native) runs:
  codec     a program with no ops: decode every state key, copy the gradient, take each block's absmax and
            round again (what any 8-bit step pays, whatever its update)
  step      the optimizer's own program (its chain's native ops): the compiled 8-bit step's kernel call
and, in the same run, the optimizer's compiled 32-bit step on a bucket of the same size (compile=True, the flat
path). Times are the minimum of --repeats calls, in ns per value, and as ratios to the 32-bit step: the issue's
target is step / 32-bit <= 1.5, and codec / 32-bit is a lower bound of that ratio for this kernel.

Run:  .venv/bin/python benchmarks/native_breakdown.py [--values 10000000] [--repeats 7]
                                                      [--optimizers adamw,adabelief,adan] [--backend inductor]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

import torch

import gradwise
import gradwise.state  # noqa: F401  (registers state_bits)
from gradwise.core.engine import hyper_parameters
from gradwise.state import NON_NEGATIVE, native

quantize = importlib.import_module("gradwise.state.quantize")  # the package exports a function of that name
BLOCK = 2048


def minimum_time(run, repeats: int) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def kernel_times(name: str, values: int, repeats: int) -> tuple[float, float, int]:
    """(codec seconds, step seconds, number of state keys) of the native kernel on `values` values."""
    opt = gradwise.create(name, [torch.zeros(1, requires_grad=True)], lr=1e-3, weight_decay=1e-2)
    chain = opt.chain(hyper_parameters(opt.param_groups[0]))
    keys = sorted({k for tr in chain for k in (tr.native or ())[1:]})
    n = values // BLOCK * BLOCK
    g = torch.Generator().manual_seed(0)
    grad, param = torch.randn(n, generator=g), torch.randn(n, generator=g)
    codes, scales, signed = [], [], []
    for key in keys:
        sign = key not in NON_NEGATIVE
        start = torch.randn(n, generator=g) * 0.1
        c, s = quantize.quantize(start if sign else start.abs(), BLOCK, sign)
        codes.append(c)
        scales.append(s)
        signed.append(sign)
    valid = torch.full((n // BLOCK,), BLOCK, dtype=torch.int32)
    empty, none = native.program([], keys, 5)
    ops, count = native.program(chain, keys, 5)

    def call(program, length):
        return lambda: native.run_program(program, length, param, grad, codes, scales, signed, valid, BLOCK,
                                          maximize=False, threads=1)

    return minimum_time(call(empty, none), repeats), minimum_time(call(ops, count), repeats), len(keys)


def compiled_32_time(name: str, values: int, repeats: int, backend: str) -> float:
    params = [torch.zeros(values // BLOCK * BLOCK, requires_grad=True)]
    params[0].grad = torch.randn_like(params[0])
    opt = gradwise.create(name, params, lr=1e-3, weight_decay=1e-2, compile=backend)
    opt.step()  # compiles
    return minimum_time(opt.step, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--values", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--optimizers", default="adamw,adabelief,adan")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the 32-bit step")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not native.available():
        print(f"the native kernel is not available here: {native.build_error()}")
        return 1
    lib = native.library()
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"kernel: {'AVX2' if lib.gw8_vectorised() else 'portable C'}; {args.values} values; "
          f"minimum of {args.repeats} calls, ns per value")
    print(f"{'optimizer':>10} {'keys':>4} {'codec':>7} {'step':>7} {'32-bit':>7} {'codec/32':>8} {'step/32':>8}")
    for name in args.optimizers.split(","):
        codec, step, keys = kernel_times(name, args.values, args.repeats)
        full = compiled_32_time(name, args.values, args.repeats, args.backend)
        per = 1e9 / (args.values // BLOCK * BLOCK)
        print(f"{name:>10} {keys:>4} {codec * per:7.2f} {step * per:7.2f} {full * per:7.2f} {codec / full:8.2f} "
              f"{step / full:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
