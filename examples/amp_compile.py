"""`torch.compile(model)` and bfloat16 autocast on the CPU with a gradwise optimizer.

bfloat16 has float32's exponent range, so autocast needs no GradScaler: the loss is not scaled, gradients
do not overflow where float32 would not, and the parameters and the optimizer's state stay in float32. The
forward pass runs its matrix products in bfloat16 under `torch.autocast("cpu", dtype=torch.bfloat16)`; the
backward pass gives float32 gradients for the float32 parameters. The gradwise optimizer is used as is
(`nonfinite="skip"`, its default, would skip a step whose gradients are not finite rather than poison the
moments: the job a GradScaler does for float16). `torch.compile` compiles the model; the optimizer steps
outside the graph.

    python examples/amp_compile.py --steps 100            # inductor needs a C++ compiler on the CPU
    python examples/amp_compile.py --backend aot_eager    # traces and checks the graph, compiles no code
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradwise as gw


def regression(n: int = 1024, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, 1, generator=g) / d**0.5
    return x, torch.tanh(x @ w) + 0.05 * torch.randn(n, 1, generator=g)


def main(steps: int = 100, backend: str = "inductor", optimizer: str = "lion", lr: float = 3e-4,
         batch: int = 64) -> dict[str, float]:
    torch.manual_seed(0)
    x, y = regression()
    model = nn.Sequential(nn.Linear(x.shape[1], 128), nn.GELU(), nn.LayerNorm(128), nn.Linear(128, 1))
    compiled = torch.compile(model, backend=backend)
    opt = gw.create(optimizer, model, lr=lr, weight_decay=0.01)
    losses = []
    for step in range(steps):
        idx = torch.arange(step * batch, (step + 1) * batch) % len(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prediction = compiled(x[idx])
        loss = nn.functional.mse_loss(prediction.float(), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    window = max(1, steps // 10)
    result = {
        "first_loss": sum(losses[:window]) / window,
        "last_loss": sum(losses[-window:]) / window,
        "prediction_dtype": str(prediction.dtype),
        "param_dtype": str(next(model.parameters()).dtype),
        "skipped_steps": float(opt.skipped_steps),
        "optimizer_steps": float(min(state["step"] for state in opt.state.values())),
    }
    print(f"{optimizer} ({backend}, bf16 autocast): loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}; "
          f"activations {result['prediction_dtype']}, parameters {result['param_dtype']}")
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--optimizer", default="lion")
    parser.add_argument("--lr", type=float, default=3e-4)
    main(**vars(parser.parse_args()))
