"""Radial projection (AdamP, SGDP): keep momentum from inflating the norm of scale-invariant weights."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core import Transform, kernel_transform
from ..core.segments import (
    ROW_IDS,
    ROW_LENGTHS,
    SEGMENT_IDS,
    SEGMENT_SIZES,
    params_to_elements,
    row_sums,
    rows_to_elements,
    rows_to_params,
)


def _looks_scale_invariant(g: Tensor, p: Tensor, rows: int, delta: float, eps: float) -> Tensor:
    """max_i |cos(g_i, p_i)| < delta / sqrt(d) over the rows of g and p viewed as (rows, d): a 0-dim bool."""
    p_rows = p.reshape(rows, -1)
    cosine = F.cosine_similarity(g.reshape(rows, -1), p_rows, dim=1, eps=eps).abs()
    return cosine.amax() < delta / math.sqrt(p_rows.size(1))


def _radial_part(u: Tensor, p: Tensor, rows: int, eps: float) -> Tensor:
    """p_n <p_n, u> per row of the (rows, d) view, with p_n = p / (||p|| + eps): the part of u along p."""
    p_rows = p.reshape(rows, -1)
    p_n = p_rows / p_rows.norm(dim=1, keepdim=True).add(eps)
    return (p_n * (p_n * u.reshape(rows, -1)).sum(dim=1, keepdim=True)).view(u.shape)


def radial_projection(delta: float, wd_ratio: float, eps: float, decay: float = 0.0) -> Transform:
    """Where the gradient finds a weight scale-invariant, drop the radial part of u and decay p less.

    The test (Heo et al., 2021) runs on parameters of more than one dimension, with g = p.grad:
    channel-wise first, max_i |cos(g_i, p_i)| < delta / sqrt(d) over the rows i of p viewed as
    (p.size(0), d); if that fails, layer-wise, the same with p as a single row. Where a view passes, u loses
    its radial part in that view, p_n = p / (||p|| + eps) per row, and the decoupled weight decay is
    p <- p (1 - decay wd_ratio); elsewhere u is unchanged and p <- p (1 - decay). `decay` is the step's
    decay rate: lr * weight_decay for AdamP, lr * weight_decay / (1 - momentum) for SGDP.

    Projection and decay are one transform on purpose: the decay rate depends on the test's verdict, and
    the test must see p before it decays (as in the authors' code). Split in two, the verdict would have to
    travel through the parameter's state, where it would be saved and restored with the optimizer although
    it is a value of this step only. The gradient is read from p.grad rather than u, which by now is the
    optimizer's direction; |cos| makes the test blind to its sign, so `maximize` needs no special case.

    Both views are computed and selected with torch.where, not with an `if` on a tensor: the step stays free
    of host synchronisation (one per parameter per view otherwise) and traceable by torch.compile, at the
    price of computing one radial part that is thrown away.

    The numbers delta, wd_ratio and decay are coefficients; eps is captured by the kernel, as torch's
    cosine_similarity takes it as a Python float (a hyper-parameter that never changes during a run).
    Whether to decay at all (decay > 0) is decided when the chain is built.
    """
    decays = decay > 0

    def coefficients(t: float) -> tuple[float, float, float]:
        return (delta, 1 - decay * wd_ratio, 1 - decay)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        bound, keep_fired, keep_plain = c
        if SEGMENT_IDS in s:  # the compiled flat path: many parameters in one buffer
            return _flat_projection(u, p, s, c, eps, decays)
        if p.dim() < 2 or p.numel() == 0:
            if decays:
                p.mul_(keep_plain)
            return u
        g, channels = p.grad, p.size(0)
        assert g is not None  # the engine steps parameters that have a gradient
        by_channel = _looks_scale_invariant(g, p, channels, bound, eps)
        fired = by_channel | _looks_scale_invariant(g, p, 1, bound, eps)
        radial = torch.where(by_channel, _radial_part(u, p, channels, eps), _radial_part(u, p, 1, eps))
        u = torch.where(fired, u - radial, u)
        if decays:
            dtype = torch.promote_types(p.dtype, torch.float32)  # a bf16 1 - 1e-5 would round to 1
            keep = torch.where(
                fired, p.new_full((), keep_fired, dtype=dtype), p.new_full((), keep_plain, dtype=dtype)
            )
            p.mul_(keep)
        return u

    return kernel_transform(kernel, coefficients, segmented="rows")


def _flat_projection(u: Tensor, p: Tensor, s: dict, c: tuple, eps: float, decays: bool) -> Tensor:
    """`radial_projection`'s kernel on a flat buffer (gradwise.core.segments): the same test and projection
    per parameter, with the sums over rows and over parameters taken by index_add (equal to eager's within
    rounding). Parameters of fewer than two dimensions (all of them when the layout has no ROW_IDS) keep u
    and decay plainly."""
    bound, keep_fired, keep_plain = c
    if ROW_IDS not in s:
        if decays:
            p.mul_(keep_plain)
        return u
    g = p.grad
    assert g is not None  # the flat buffer's gradient
    gp, gg, pp, pu = (row_sums(x, s) for x in (g * p, g * g, p * p, p * u))
    lengths = s[ROW_LENGTHS]
    matrix = lengths > 0
    cos_rows = gp.abs() / (gg.sqrt().clamp(min=eps) * pp.sqrt().clamp(min=eps))
    by_channel = matrix & (rows_to_params(cos_rows, s, "amax") < bound / lengths.clamp(min=1).sqrt())
    lgp, lgg, lpp, lpu = (rows_to_params(x, s, "sum") for x in (gp, gg, pp, pu))
    cos_layer = lgp.abs() / (lgg.sqrt().clamp(min=eps) * lpp.sqrt().clamp(min=eps))
    by_layer = matrix & (cos_layer < bound / s[SEGMENT_SIZES].to(cos_layer.dtype).sqrt())
    fired = by_channel | by_layer
    per_row = pu / (pp.sqrt() + eps) ** 2  # the radial part of u in a row: p * <p, u> / (||p|| + eps)^2
    per_layer = lpu / (lpp.sqrt() + eps) ** 2
    coefficient = torch.where(params_to_elements(by_channel, u, s), rows_to_elements(per_row, u, s),
                              params_to_elements(per_layer, u, s))
    fired_here = params_to_elements(fired, u, s)
    u = torch.where(fired_here, u - p * coefficient, u)
    if decays:  # the coefficients are 0-dim tensors here, float32 or wider (compiled) or numbers (tests)
        p.mul_(torch.where(fired_here, keep_fired, keep_plain))
    return u
