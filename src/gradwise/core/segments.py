"""Per-parameter reductions that also work when many parameters share one flat buffer.

A kernel that reduces over its parameter (a mask's sum, a norm) calls these with its state dict `s`:
- eager and on the compiled per-parameter path, `s` is the parameter's own state and each function is the
  plain reduction over the whole tensor (`x.sum()`, `x.mean()`, ...): a 0-dim tensor, the very operations a
  kernel would write without this module, so eager numbers do not change;
- on the compiled flat path (`gradwise.core.compiled`), the engine adds three tensors to the `s` it passes,
  which describe the buffer cut into blocks of ALIGN elements (each parameter starts on a block; the
  alignment padding after it is never counted): SEGMENT_IDS, the parameter each block belongs to (blocks of
  padding only: an extra index, the last), SEGMENT_VALID, how many leading elements of each block belong to
  that parameter, and SEGMENT_SIZES, each parameter's number of elements. Each function then returns a
  tensor shaped like x holding, at every element, the reduction over that element's parameter: a sum per
  block (a plain, fused reduction), an index_add of the block sums (one per block, not per element: scatter
  is slow in inductor's CPU code), then a gather per block.

Either result broadcasts against x, so a kernel written with these functions runs on both paths. Such a
transform is marked `segmented=True` (see `kernel_transform`), which lets the compiled engine run it flat.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

SEGMENT_IDS = "_segment_ids"
SEGMENT_VALID = "_segment_valid"
SEGMENT_SIZES = "_segment_sizes"
KEYS = (SEGMENT_IDS, SEGMENT_VALID, SEGMENT_SIZES)


def _blocks(x: Tensor, s: dict[str, Any]) -> Tensor:
    return x.reshape(s[SEGMENT_IDS].shape[0], -1)


def _per_element(per_segment: Tensor, x: Tensor, s: dict[str, Any]) -> Tensor:
    rows = _blocks(x, s)
    return per_segment[s[SEGMENT_IDS]][:, None].expand(rows.shape).reshape(x.shape)


def _scatter_sum(x: Tensor, s: dict[str, Any]) -> Tensor:
    rows = _blocks(x, s)
    ids, valid = s[SEGMENT_IDS], s[SEGMENT_VALID]
    keep = torch.arange(rows.shape[1], device=x.device)[None, :] < valid[:, None]
    partial = torch.where(keep, rows, torch.zeros((), dtype=x.dtype, device=x.device)).sum(1)
    totals = torch.zeros(s[SEGMENT_SIZES].shape, dtype=x.dtype, device=x.device).index_add_(0, ids, partial)
    return _per_element(totals, x, s)


def segment_sum(x: Tensor, s: dict[str, Any]) -> Tensor:
    """x.sum(), per parameter on a flat buffer."""
    if SEGMENT_IDS not in s:
        return x.sum()
    return _scatter_sum(x, s)


def segment_numel(x: Tensor, s: dict[str, Any]) -> Any:
    """x.numel() (an int), or on a flat buffer each element's parameter size (a tensor of x's dtype)."""
    if SEGMENT_IDS not in s:
        return x.numel()
    return _per_element(s[SEGMENT_SIZES].to(x.dtype), x, s)


def segment_mean(x: Tensor, s: dict[str, Any]) -> Tensor:
    """x.mean(), per parameter on a flat buffer."""
    if SEGMENT_IDS not in s:
        return x.mean()
    return _scatter_sum(x, s) / segment_numel(x, s)


def segment_norm(x: Tensor, s: dict[str, Any]) -> Tensor:
    """The 2-norm of x, per parameter on a flat buffer."""
    if SEGMENT_IDS not in s:
        return torch.linalg.vector_norm(x)
    return _scatter_sum(x * x, s).sqrt()


def segment_layout(sizes: list[int], offsets: list[int], total: int, device: torch.device,
                   block: int = 16) -> dict[str, Tensor]:
    """The SEGMENT_* tensors for parameters of `sizes` elements at `offsets` in a buffer of `total`
    (blocks of `block` elements where every offset and the total allow it, else of one element)."""
    if any(off % block for off in offsets) or total % block:
        block = 1
    n = len(sizes)
    blocks = total // block
    ids = torch.full((blocks,), n, dtype=torch.int64)
    valid = torch.zeros(blocks, dtype=torch.int64)
    for i, (off, size) in enumerate(zip(offsets, sizes, strict=True)):
        first, count = off // block, -(-size // block)
        ids[first : first + count] = i
        valid[first : first + count] = block
        if size % block:
            valid[first + count - 1] = size % block
    counts = torch.tensor([*sizes, 1], dtype=torch.float64)
    return {SEGMENT_IDS: ids.to(device), SEGMENT_VALID: valid.to(device), SEGMENT_SIZES: counts.to(device)}
