"""Adafactor's pieces: a second moment kept as row and column statistics, update clipping by RMS and the
relative step size (Shazeer & Stern, 2018, arXiv:1804.04235)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform
from ..core.segments import SEGMENT_IDS, segment_broadcast, segment_sizes, segment_sums


def _factored_state(p: Tensor) -> dict[str, Tensor]:
    if p.dim() > 1:
        rows = list(p.shape)
        rows[-1] = 1
        cols = list(p.shape)
        cols[-2] = 1
        return {"row_var": p.new_zeros(rows), "col_var": p.new_zeros(cols)}
    return {"variance": torch.zeros_like(p, memory_format=torch.preserve_format)}


def factored_second_moment(decay: float, eps1: float | None) -> Transform:
    """u <- u / sqrt(max(V_hat, eps1^2)), with V_hat Adafactor's estimate of E[u^2].

    The weight of the new statistic at step t is t^decay (beta2_t = 1 - t^decay). For a tensor of two or
    more dimensions only the means of u^2 over its last dimension (R, state["row_var"]) and over its
    second-to-last one (C, state["col_var"]) are kept, and V_hat = R C / mean(R) (the outer product over the
    last two dimensions, divided by mean(R) floored at eps1). A vector or scalar keeps the full average in
    state["variance"]. eps1=None means the machine epsilon of the parameter's dtype.
    """

    machine_eps = eps1 is None  # the floor then depends on the parameter's dtype: read in the kernel

    def coefficients(t: float) -> tuple[float, float, float]:
        floor = 0.0 if eps1 is None else eps1
        return (t**decay, floor, floor * floor)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        weight, floor, floor_sq = c
        if machine_eps:
            floor = torch.finfo(p.dtype).eps
            floor_sq = floor * floor
        if u.dim() > 1:
            row, col = s["row_var"], s["col_var"]
            # mean of u^2 along one dimension, as a squared norm: no u^2 of the full size is formed
            row.lerp_(torch.linalg.vector_norm(u, dim=-1, keepdim=True).square_().div_(u.size(-1)), weight)
            col.lerp_(torch.linalg.vector_norm(u, dim=-2, keepdim=True).square_().div_(u.size(-2)), weight)
            estimate = (row @ col).div_(row.mean(dim=-2, keepdim=True).clamp_(min=floor))
        else:
            s["variance"].lerp_(u * u, weight)
            estimate = s["variance"].clone()
        return estimate.clamp_(min=floor_sq).rsqrt_().mul_(u)

    return kernel_transform(kernel, coefficients, _factored_state, segmented=True)


def _rms(x: Tensor, s: dict) -> Tensor:
    """RMS(x) = ||x|| / sqrt(numel(x)): 0-dim, or on a flat buffer one value per parameter (to be spread over
    the elements with `segment_broadcast` once the per-parameter numbers are done)."""
    if SEGMENT_IDS not in s:
        return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))
    return (segment_sums(x * x, s) / segment_sizes(x, s)).sqrt()


def clip_by_rms(threshold: float) -> Transform:
    """u <- u / max(1, RMS(u) / threshold): Adafactor's update clipping (threshold d)."""

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        return u / segment_broadcast((_rms(u, s) / c[0]).clamp(min=1.0), u, s)

    return kernel_transform(kernel, lambda t: (threshold,), segmented=True)


def relative_step_size(lr: float, eps2: float) -> Transform:
    """u <- alpha_t u with alpha_t = max(eps2, RMS(p)) min(lr, 1 / sqrt(t)): the step relative to the scale of
    the parameter, read before anything in the same step writes it."""

    def coefficients(t: float) -> tuple[float, float]:
        return (eps2, min(lr, 1 / t**0.5))

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        return u * segment_broadcast((_rms(p, s).clamp(min=c[0]) * c[1]).to(u.dtype), u, s)

    return kernel_transform(kernel, coefficients, segmented=True)


def descend(writes: bool = True) -> Transform:
    """p <- p - u: the step of a chain whose update already carries its step size."""
    return kernel_transform(_descend, writes=writes, elementwise=True)


def _descend(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
    p.sub_(u)
    return u
