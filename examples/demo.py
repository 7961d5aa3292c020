"""Train one small network with every registered optimizer and print a table of final losses.

A stand-in for the benchmark lab: same data, same model initialisation, same number of steps, each
optimizer at its paper's default hyper-parameters except the learning rate given on the command line.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import gradwise as gw
from gradwise.core.registry import entry


def data(n=512, d=20, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g) * 1.5
    y = torch.randint(0, classes, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    return x, y


def train(name: str, lr: float, steps: int, seed: int) -> tuple[float, float, float]:
    x, y = data()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 4))
    opt = gw.create(name, model, lr=lr)
    start = time.perf_counter()
    for step in range(steps):
        idx = torch.arange(step * 64, step * 64 + 64) % len(x)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    elapsed = time.perf_counter() - start
    with torch.no_grad():
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    return loss, accuracy, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    names = [n for n in gw.available() if entry(n).kind == "optimizer"]
    rows = [(n, *train(n, args.lr, args.steps, args.seed)) for n in names]
    print(f"{'optimizer':<14} {'final loss':>10} {'accuracy':>9} {'seconds':>8}")
    for name, loss, accuracy, seconds in sorted(rows, key=lambda r: r[1]):
        print(f"{name:<14} {loss:>10.4f} {accuracy:>9.3f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
