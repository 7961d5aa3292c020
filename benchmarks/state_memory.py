"""Bytes of optimizer state per parameter and time per step, with 32-bit, bfloat16 and 8-bit state.

    python benchmarks/state_memory.py [--elements 4000000] [--steps 5] [--device cpu]

One parameter of `--elements` values; each optimizer takes `--steps` steps on a random gradient. State
bytes count every state tensor but the step counter (codes, block scales and full-precision tensors).
"""

from __future__ import annotations

import argparse
import time

import torch

import gradwise as gw
import gradwise.state  # noqa: F401  (registers the option)

OPTIMIZERS = {
    "adamw": {"lr": 1e-3},
    "adabelief": {"lr": 1e-3},
    "adan": {"lr": 1e-3},
    "lion": {"lr": 1e-4},
    "sgd": {"lr": 1e-2, "momentum": 0.9},
}
MODES = {"32-bit": {}, "bfloat16": {"state_dtype": torch.bfloat16}, "8-bit": {"state_bits": 8}}


def measure(name: str, mode: dict, elements: int, steps: int, device: str) -> tuple[float, float]:
    g = torch.Generator(device=device).manual_seed(0)
    p = torch.randn(elements, generator=g, device=device).requires_grad_()
    opt = gw.create(name, [p], **OPTIMIZERS[name], **mode)
    times = []
    for _ in range(steps):
        p.grad = torch.randn(elements, generator=g, device=device)
        if device != "cpu":
            torch.cuda.synchronize()
        start = time.perf_counter()
        opt.step()
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    state = opt.state[p]
    used = sum(v.numel() * v.element_size() for k, v in state.items() if k != "step" and torch.is_tensor(v))
    return used / elements, 1e3 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=4_000_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"{'optimizer':<10} " + " ".join(f"{m + ' B/param':>16} {m + ' ms':>12}" for m in MODES))
    for name in OPTIMIZERS:
        cells = [measure(name, mode, args.elements, args.steps, args.device) for mode in MODES.values()]
        print(f"{name:<10} " + " ".join(f"{b:>16.3f} {ms:>12.2f}" for b, ms in cells))


if __name__ == "__main__":
    main()
