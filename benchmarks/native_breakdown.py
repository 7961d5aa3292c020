"""Where the native fused 8-bit step's time goes: the codec alone against the whole step and the 32-bit step.

For each optimizer, on one flat bucket of --values float32 values (blocks of 2048, as state_speed.py's 10 x 1M),
one thread, the native kernel (gradwise.state.native) runs:
  codec     a program with no ops: decode every state key, copy the gradient, take each block's absmax and
            round again (what any 8-bit step pays, whatever its update)
  step      the optimizer's own program (its chain's native ops): the compiled 8-bit step's kernel call
and, in the same run, the optimizer's compiled 32-bit step on a bucket of the same size (compile=True, the flat
path, nonfinite="ignore": neither side makes the non-finite check). The three are timed round-robin; times are
the minimum of --repeats calls, in ns per value, and as ratios to the 32-bit step: the issue's target is
step / 32-bit <= 1.5, and codec / 32-bit is a lower bound of that ratio for this kernel.

Run:  .venv/bin/python benchmarks/native_breakdown.py [--values 10000000] [--repeats 7]
                                                      [--optimizers adamw,adabelief,adan] [--backend inductor]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

import torch

import gradwise
import gradwise.state  # noqa: F401  (registers state_bits)
from gradwise.core.engine import hyper_parameters
from gradwise.state import NON_NEGATIVE, STATE, native

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling script, also when loaded by path
from step_speed import time_round_robin  # noqa: E402  (the same round-robin timing as step_speed.py)

quantize = importlib.import_module("gradwise.state.quantize")  # the package exports a function of that name
BLOCK = STATE.defaults["state_block"]  # the package's default block, as state_speed.py's optimizers use


def contenders(name: str, values: int, backend: str) -> tuple[dict[str, Callable[[], object]], int]:
    """The three timed calls on one bucket of `values` values (a whole number of blocks), and the number of state
    keys: the kernel's codec alone (a program with no ops), its step (the optimizer's ops), and the compiled
    32-bit step. Both sides leave out the non-finite check (`nonfinite="ignore"` for the 32-bit step; the kernel
    call never makes it)."""
    n = values // BLOCK * BLOCK
    opt = gradwise.create(name, [torch.zeros(1, requires_grad=True)], lr=1e-3, weight_decay=1e-2)
    chain = opt.chain(hyper_parameters(opt.param_groups[0]))
    keys = sorted({k for tr in chain for k in (tr.native or ())[1:]})  # the state keys the ops read and write
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
    call = native.Bound(param, grad, codes, scales, signed, torch.full((n // BLOCK,), BLOCK, dtype=torch.int32),
                        BLOCK)
    t = 5  # any step past the first: the bias corrections are then ordinary numbers
    empty, ops = native.Program([], keys), native.Program(chain, keys)
    empty_ops, step_ops = empty.at([], t), ops.at(chain, t)
    params = [torch.zeros(n, requires_grad=True)]
    params[0].grad = torch.randn_like(params[0])
    full = gradwise.create(name, params, lr=1e-3, weight_decay=1e-2, compile=backend, nonfinite="ignore")
    return {
        "codec": lambda: call(empty_ops, empty.count, maximize=False, threads=1),
        "step": lambda: call(step_ops, ops.count, maximize=False, threads=1),
        "32-bit": full.step,
    }, len(keys)


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
        calls, keys = contenders(name, args.values, args.backend)
        # round-robin (load from other processes hits all alike), the first round a warm-up (and the compile)
        times = time_round_robin(calls, args.repeats, warmup=1, stat="min")
        codec, step, full = times["codec"], times["step"], times["32-bit"]
        per = 1e9 / (args.values // BLOCK * BLOCK)
        print(f"{name:>10} {keys:>4} {codec * per:7.2f} {step * per:7.2f} {full * per:7.2f} {codec / full:8.2f} "
              f"{step / full:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
