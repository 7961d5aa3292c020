"""Adafactor's pieces: a second moment kept as row and column statistics, update clipping by RMS and the
relative step size (Shazeer & Stern, 2018, arXiv:1804.04235)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform
from ..core.segments import (
    COLUMN_FACTOR,
    FACTOR_BATCH_ROWS,
    FACTOR_COLUMN_BATCHES,
    FACTOR_COLUMNS,
    FACTOR_GATHERS,
    FACTOR_ROW_BATCHES,
    FACTOR_ROW_LENGTHS,
    FACTOR_ROWS,
    FULL_FACTOR,
    ROW_FACTOR,
    SEGMENT_IDS,
    _stored,
    factor_shapes,
    segment_broadcast,
    segment_sizes,
    segment_sums,
)


def _factored_state(p: Tensor) -> dict[str, Tensor]:
    return {k: p.new_zeros(shape) for k, shape in factor_shapes(p.shape).items()}


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
        if FACTOR_ROWS in s:  # the compiled flat path, with matrices in the bucket
            return _flat_factored(u, s, weight, floor).clamp_(min=floor_sq).rsqrt_().mul_(u)
        if u.dim() > 1:
            row, col = s[ROW_FACTOR], s[COLUMN_FACTOR]
            # mean of u^2 along one dimension, as a squared norm: no u^2 of the full size is formed
            row.lerp_(torch.linalg.vector_norm(u, dim=-1, keepdim=True).square_().div_(u.size(-1)), weight)
            col.lerp_(torch.linalg.vector_norm(u, dim=-2, keepdim=True).square_().div_(u.size(-2)), weight)
            estimate = (row @ col).div_(row.mean(dim=-2, keepdim=True).clamp_(min=floor))
        else:
            s[FULL_FACTOR].lerp_(u * u, weight)
            estimate = s[FULL_FACTOR].clone()
        return estimate.clamp_(min=floor_sq).rsqrt_().mul_(u)

    return kernel_transform(kernel, coefficients, _factored_state, segmented="factored")


def _flat_factored(u: Tensor, s: dict, weight: Tensor, floor: Tensor | float) -> Tensor:
    """`factored_second_moment`'s update of R and C and its estimate V_hat on a flat buffer laid out by
    gradwise.core.segments.factor_layout: sums of u^2 per block added by index into the rows, and per column
    block the sum of its R blocks (gathered: no scatter per element). A vector is a single row of factor 1
    whose columns are its elements, with no division by a mean: its estimate is its full second moment."""
    rows_of, columns_of = s[FACTOR_ROWS], s[FACTOR_COLUMNS]
    square = (u * u).view(rows_of.shape[0], -1)
    row, columns = s[ROW_FACTOR], s[COLUMN_FACTOR].view(-1, square.shape[1])
    lengths = s[FACTOR_ROW_LENGTHS].to(u.dtype)
    in_matrix = lengths > 0
    row_sums = torch.zeros_like(row).index_add_(0, rows_of, square.sum(1))
    # the new factors are stored and written back, and what the elements read is computed per row, block or
    # column block and stored (_stored): inductor otherwise recomputes them, with their gathers, per element
    new_row = _stored(torch.lerp(row, torch.where(in_matrix, row_sums / lengths.clamp(min=1), 0.0), weight))
    row.copy_(new_row)
    # per group of parameters with R rows: each column block's R source blocks, gathered, stored (summed in
    # place of the gather, inductor's loop would run over the rows innermost, an element per row) and summed
    column_sums = torch.cat([_stored(square[sources]).sum(1) / sources.shape[1] for sources in s[FACTOR_GATHERS]])
    new_columns = _stored(torch.lerp(columns, column_sums, weight))
    columns.copy_(new_columns)
    counts = s[FACTOR_BATCH_ROWS].to(u.dtype)
    means = torch.zeros_like(counts).index_add_(0, s[FACTOR_ROW_BATCHES], new_row) / counts.clamp(min=1)
    divisors = torch.where(counts > 0, means.clamp(min=floor), 1.0)[s[FACTOR_COLUMN_BATCHES]]
    row_factors = _stored(torch.where(in_matrix, new_row, 1.0)[rows_of])
    block_divisors = _stored(divisors[columns_of])
    estimate = row_factors[:, None] * new_columns[columns_of] / block_divisors[:, None]
    return estimate.view(u.shape)


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
