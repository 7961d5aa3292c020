"""The cautious mask, an engine option of every optimizer: step only where the update agrees with the gradient.

With d the direction the optimizer's step subtracts (p <- p - lr d) and g the gradient its chain receives,
    phi = 1[d g > 0];   p <- p - lr d phi numel / (sum(phi) + 1)          (cautious=True)
    p <- p - lr d phi / max(mean(phi), 1e-3)                              (cautious="mean")
The first is the published rule (the authors' C-AdamW and C-Lion); the second, the mean-normalised form
used by timm's `caution` flag, rescales so that the kept coordinates carry the update's size.

The mask acts on the step only, the transform marked `writes=True`: the engine snapshots p before it,
lets it write, and keeps delta = p_after - p_before where delta g < 0 (rescaled as above). A step that
declares its `direction` (Adam's step: m; SGD's and so Lion's and ADOPT's: the incoming update; see
`gradwise.core.Transform`) is masked by the sign of that direction instead, the authors' d g > 0: the same
mask wherever the change is not rounded away, and a compiled step whose mask sum reads only the tensors
the direction needs (C-AdamW: m and g, not v and p). Weight decay
and other transforms outside the step stay unmasked, as in the paper's C-AdamW. g is the update that
enters the chain, after clipping and Grokfast when those options are on.

The masked chain is one transform whose kernel runs the chain's kernels in turn, keeping g in a local
variable; its coefficients are those of the chain's transforms, concatenated. The mask's sum (or mean) is a
reduction per parameter, taken through `gradwise.core.segments`: when every transform of the chain is
elementwise (or segmented itself), the masked transform is `segmented` and the compiled engine runs it on
its flat buffers.

Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
arXiv:2411.16085.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..core import OneOf, Transform, kernel_transform
from ..core.engine import EngineOption, extend
from ..core.segments import segment_broadcast, segment_sizes, segment_sums

MEAN_FLOOR = 1e-3


def cautious_mask(delta: Tensor, grad: Tensor, mode: bool | str, s: dict | None = None) -> Tensor:
    """The rescaled mask of the coordinates where the step -delta points along the gradient (per parameter
    when `s` marks a flat buffer of several, see gradwise.core.segments)."""
    return _rescaled((delta * grad < 0).to(delta.dtype), mode, {} if s is None else s)


def _rescaled(mask: Tensor, mode: bool | str, s: dict) -> Tensor:
    """mask (0 or 1) times numel / (sum + 1), or / max(mean, MEAN_FLOOR), per parameter."""
    size = segment_sizes(mask, s)
    if mode == "mean":  # mask / mean(mask), as a product: the mask is 0 or 1, so the same numbers
        mean = mask.mean() if isinstance(size, int) else segment_sums(mask, s) / size  # eager: torch's mean
        scale = 1 / mean.clamp(min=MEAN_FLOOR)
    else:
        scale = size / (segment_sums(mask, s) + 1)
    return mask * segment_broadcast(scale, mask, s)  # one scale per parameter, then one product per element


def cautious(chain: tuple[Transform, ...], mode: bool | str) -> tuple[Transform, ...]:
    """`chain` as one transform whose step transforms (writes=True) are masked by the update entering it."""
    if not any(tr.writes for tr in chain):
        raise RuntimeError("cautious: this optimizer's chain marks no step transform (writes=True) to mask")

    def init(p: Tensor) -> dict[str, Tensor]:
        state: dict[str, Tensor] = {}
        for tr in chain:
            state.update(tr.init(p))
        return state

    if any(tr.kernel is None for tr in chain):  # a transform not yet split: the unsplit form, eager only
        return (Transform(_masked_updates(chain, mode), init, writes=True),)
    coefficient_fns = tuple(tr.coefficients for tr in chain if tr.coefficients is not None)
    if len(coefficient_fns) != len(chain):  # kernel_transform always sets both
        raise RuntimeError("cautious: a transform has a kernel but no coefficients")
    # the length of each transform's coefficients is part of the chain's structure
    ends = tuple(itertools.accumulate(len(fn(1.0)) for fn in coefficient_fns))
    parts = tuple(zip((0, *ends[:-1]), ends, strict=True))

    def coefficients(t: float) -> tuple:
        values = tuple(itertools.chain.from_iterable(fn(t) for fn in coefficient_fns))
        if len(values) != ends[-1]:
            raise RuntimeError("cautious: a transform's number of coefficients changed with the step")
        return values

    kernels = tuple(tr.kernel for tr in chain if tr.kernel is not None)  # all of them (checked above)
    writes = tuple(tr.writes for tr in chain)
    directions = tuple(tr.direction for tr in chain)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        grad = u
        for inner, step, direction, (start, end) in zip(kernels, writes, directions, parts, strict=True):
            if step:
                u = _masked(inner, u, p, s, c[start:end], grad, mode, direction)
            else:
                u = inner(u, p, s, c[start:end])
        return u

    # the wrapped chain reduces as its transforms do: plain segments, rows or factored state ("rows" and
    # "factored" together cannot be told with one tag: such a chain runs per parameter)
    segmented: bool | str = all(tr.elementwise or tr.segmented for tr in chain)
    tags = {tr.segmented for tr in chain if isinstance(tr.segmented, str)}
    if segmented and tags:
        segmented = tags.pop() if len(tags) == 1 else False
    return (kernel_transform(kernel, coefficients, init, writes=True, segmented=segmented),)


def _masked(inner: Callable, u: Tensor, p: Tensor, s: dict, c: Any, grad: Tensor, mode: bool | str,
            direction: Callable | None = None) -> Tensor:
    """Run one step (kernel or update) and keep only the part of its move that the mask lets through. The
    mask reads the sign of the step's `direction` (see `Transform`) when it has one, else of the change."""
    # d g > 0, taken before the step; the same booleans as (-d) g < 0, one negation fewer per element (twice
    # on the compiled flat path: the mask's sum and the masked write each compute it)
    agrees = None if direction is None else direction(u, p, s, c) * grad > 0
    before = p.detach().clone(memory_format=torch.preserve_format)
    out = inner(u, p, s, c)
    delta = p - before
    mask = cautious_mask(delta, grad, mode, s) if agrees is None else _rescaled(agrees.to(delta.dtype), mode, s)
    p.copy_(before.addcmul_(delta, mask))
    return out


def _masked_updates(chain: tuple[Transform, ...], mode: bool | str) -> Callable:
    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        grad = u
        for tr in chain:
            u = _masked(tr.update, u, p, s, t, grad, mode) if tr.writes else tr.update(u, p, s, t)
        return u

    return update


def _wrap(h: SimpleNamespace, chain: tuple[Transform, ...], context: None) -> tuple[Transform, ...]:
    if not h.cautious:
        return chain
    return cautious(chain, h.cautious)


CAUTIOUS = EngineOption(
    name="cautious",
    defaults=dict(cautious=False),
    ranges=dict(cautious=OneOf((False, True, "mean"))),
    wrap=_wrap,
)

extend(CAUTIOUS)
