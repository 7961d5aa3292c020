"""Gradient clipping, an engine option of every optimizer: by global norm, by value, or per tensor.

    clip_grad_norm=c:      g <- g min(1, c / (||G|| + 1e-6)), ||G|| the 2-norm of all the optimizer's
                           gradients together (as torch.nn.utils.clip_grad_norm_, whose eps it keeps);
    clip_grad_value=c:     g <- clamp(g, -c, c) (as torch.nn.utils.clip_grad_value_);
    clip_component_norm=c: g <- g min(1, c / (||g|| + 1e-6)) for each tensor on its own (component-wise
                           clipping).
All default to None (off). Clipping happens first, before the optimizer's chain, on the update the chain
receives: p.grad itself is left as it was. With several options on, the order is norm, value, component.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..core import Optional, Positive, Transform, kernel_transform
from ..core.engine import EngineOption, Work, extend

EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s

OPTIONS = ("clip_grad_norm", "clip_grad_value", "clip_component_norm")


def global_grad_norm(grads: list[Tensor]) -> Tensor:
    """The 2-norm of all gradients together, computed as the norm of the per-tensor norms (torch's order)."""
    device = grads[0].device
    norms = [torch.linalg.vector_norm(g, 2) for g in grads]
    dtypes = {n.dtype for n in norms}
    dtype = norms[0].dtype if len(dtypes) == 1 else torch.float32
    return torch.linalg.vector_norm(torch.stack([n.to(device=device, dtype=dtype) for n in norms]), 2)


def clip_by_global_norm(max_norm: float, norm: Tensor) -> Transform:
    """u <- u min(1, max_norm / (norm + 1e-6)), `norm` computed once per step over all parameters.

    The factor, a 0-dim tensor, is the transform's coefficient."""
    factor = (max_norm / (norm + EPS)).clamp(max=1.0)
    return kernel_transform(_scale_by_factor, lambda t: (factor,), elementwise=True)


def _scale_by_factor(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    return u * c[0].to(device=u.device, dtype=u.dtype)


def clip_by_value(limit: float) -> Transform:
    """u <- clamp(u, -limit, limit)."""
    return kernel_transform(_clamp, lambda t: (-limit, limit), elementwise=True)


def _clamp(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    return u.clamp(c[0], c[1])


def clip_by_component_norm(max_norm: float) -> Transform:
    """u <- u min(1, max_norm / (||u|| + 1e-6)), the norm of this tensor alone."""
    return kernel_transform(_clip_component, lambda t: (max_norm,))


def _clip_component(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    factor = (c[0] / (torch.linalg.vector_norm(u, 2) + EPS)).clamp(max=1.0)
    return u * factor


def _prepare(optimizer: Any, work: Work) -> Tensor | None:
    if all(group.get("clip_grad_norm") is None for group, params in work if params):
        return None
    grads = [p.grad for _, params in work for p in params if p.grad is not None]  # all have one
    if not grads:
        return None
    return global_grad_norm(grads)


def _wrap(h: SimpleNamespace, chain: tuple[Transform, ...], norm: Tensor | None) -> tuple[Transform, ...]:
    head: list[Transform] = []
    if h.clip_grad_norm is not None and norm is not None:
        head.append(clip_by_global_norm(h.clip_grad_norm, norm))
    if h.clip_grad_value is not None:
        head.append(clip_by_value(h.clip_grad_value))
    if h.clip_component_norm is not None:
        head.append(clip_by_component_norm(h.clip_component_norm))
    return (*head, *chain)


CLIPPING = EngineOption(
    name="clipping",
    defaults={name: None for name in OPTIONS},
    ranges={name: Optional(Positive) for name in OPTIONS},
    prepare=_prepare,
    wrap=_wrap,
)

extend(CLIPPING)
