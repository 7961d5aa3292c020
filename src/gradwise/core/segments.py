"""Per-parameter reductions that also work when many parameters share one flat buffer.

A kernel that reduces over its parameter (a mask's sum, a norm) calls these with its state dict `s`:
- eager and on the compiled per-parameter path, `s` is the parameter's own state and each function is the
  plain reduction over the whole tensor (`x.sum()`, `x.mean()`, ...): a 0-dim tensor, the very operations a
  kernel would write without this module, so eager numbers do not change;
- on the compiled flat path (`gradwise.core.compiled`), the engine adds these tensors to the `s` it passes,
  which describe the buffer cut into blocks of ALIGN elements or a multiple (each parameter
  starts on a block; the alignment padding after it is never counted): SEGMENT_IDS, the parameter each block
  belongs to (blocks of padding only: an extra index, the last), SEGMENT_VALID, how many leading elements of
  each block belong to that parameter (absent when every parameter fills its blocks: then there is no
  padding), and SEGMENT_SIZES, each parameter's number of elements. Each function
  then returns a tensor shaped like x holding, at every element, the reduction over that element's
  parameter: a sum per block (a plain, fused reduction), an index_add of the block sums (one per block, not
  per element: scatter is slow in inductor's CPU code), then a gather per block.

Either result broadcasts against x, so a kernel written with these functions runs on both paths.

State of one number per parameter (a 0-dim tensor in eager, AdaGrad-Norm's b^2, SGD-SaI's g-SNR) is, on the
flat path, one column of shape (parameters + 1, 1) (the last row, of the padding-only blocks, is unused):
each parameter's state entry is a 0-dim view of its row (state_dict is unchanged). A kernel updates it with
the same in-place ops as in eager (adding a 0-dim tensor adds it to every parameter's number) and reads it
at every element of x with `segment_value`. Such a
transform is marked `segmented=True` (see `kernel_transform`), which lets the compiled engine run it flat.
A kernel that combines several reductions (the cautious mask's numel / (sum + 1)) does so per parameter,
with `segment_sums`, `segment_sizes` and one `segment_broadcast` of the result: the per-parameter numbers are
then computed once, not once per block inside the loop over the buffer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

SEGMENT_IDS = "_segment_ids"
SEGMENT_VALID = "_segment_valid"
SEGMENT_SIZES = "_segment_sizes"
KEYS = (SEGMENT_IDS, SEGMENT_VALID, SEGMENT_SIZES)
MAX_BLOCK = 1024  # elements per block at most (segment_layout)


def _blocks(x: Tensor, s: dict[str, Any]) -> Tensor:
    return x.reshape(s[SEGMENT_IDS].shape[0], -1)


def _per_element(per_segment: Tensor, x: Tensor, s: dict[str, Any]) -> Tensor:
    rows = _blocks(x, s)
    return per_segment[s[SEGMENT_IDS]][:, None].expand(rows.shape).reshape(x.shape)


def _stored(values: Tensor) -> Tensor:
    """`values` (one per parameter), which inductor then keeps in a buffer of its own instead of computing
    them again at every block that reads them (as_strided needs its input stored: see torch/_inductor/lowering.py).
    A division per parameter read by every block of a parameter-sized loop otherwise runs once per block,
    on the divider that the loop's own divisions and square roots need."""
    return values.as_strided(values.shape, values.stride())


def _totals(x: Tensor, s: dict[str, Any]) -> Tensor:
    rows = _blocks(x, s)
    ids = s[SEGMENT_IDS]
    if SEGMENT_VALID in s:
        keep = torch.arange(rows.shape[1], device=x.device)[None, :] < s[SEGMENT_VALID][:, None]
        rows = torch.where(keep, rows, torch.zeros((), dtype=x.dtype, device=x.device))
    partial = rows.sum(1)
    return torch.zeros(s[SEGMENT_SIZES].shape, dtype=x.dtype, device=x.device).index_add_(0, ids, partial)


def segment_sums(x: Tensor, s: dict[str, Any]) -> Tensor:
    """x.sum() (0-dim), or on a flat buffer the sum of each parameter: one value per parameter (SEGMENT_SIZES'
    shape; the last, of the padding-only blocks, is 0). `segment_broadcast` gives it x's shape."""
    if SEGMENT_IDS not in s:
        return x.sum()
    return _totals(x, s)


def segment_sizes(x: Tensor, s: dict[str, Any]) -> Any:
    """x.numel() (an int), or on a flat buffer each parameter's number of elements (x's dtype; the padding's
    entry is 1), aligned with `segment_sums`."""
    if SEGMENT_IDS not in s:
        return x.numel()
    return s[SEGMENT_SIZES].to(x.dtype)


def segment_broadcast(values: Any, x: Tensor, s: dict[str, Any]) -> Any:
    """`values` computed from `segment_sums`/`segment_sizes` (one per parameter) at every element of x on a
    flat buffer; unchanged otherwise (a number or 0-dim tensor broadcasts by itself)."""
    if SEGMENT_IDS not in s:
        return values
    return _per_element(_stored(values), x, s)


def segment_value(state: Tensor, x: Tensor, s: dict[str, Any]) -> Tensor:
    """A per-parameter number kept in the state (0-dim in eager, a flat layout's column on the flat path) at
    every element of x on a flat buffer; unchanged otherwise (a 0-dim tensor broadcasts by itself). A column
    is told apart by its two dimensions: a flat buffer and its per-element state are 1-D (a bucket of 0-dim
    parameters keeps 0-dim state per element, which is already each element's value)."""
    if SEGMENT_IDS not in s or state.dim() != 2:
        return state
    return _per_element(state[:, 0], x, s)


def segment_sum(x: Tensor, s: dict[str, Any]) -> Tensor:
    """x.sum(), per parameter on a flat buffer."""
    return segment_broadcast(segment_sums(x, s), x, s)


def segment_numel(x: Tensor, s: dict[str, Any]) -> Any:
    """x.numel() (an int), or on a flat buffer each element's parameter size (a tensor of x's dtype)."""
    return segment_broadcast(segment_sizes(x, s), x, s)


def segment_mean(x: Tensor, s: dict[str, Any]) -> Tensor:
    """x.mean(), per parameter on a flat buffer."""
    if SEGMENT_IDS not in s:
        return x.mean()
    return segment_broadcast(segment_sums(x, s) / segment_sizes(x, s), x, s)


def segment_norm(x: Tensor, s: dict[str, Any]) -> Tensor:
    """The 2-norm of x, per parameter on a flat buffer."""
    if SEGMENT_IDS not in s:
        return torch.linalg.vector_norm(x)
    return segment_broadcast(segment_sums(x * x, s).sqrt(), x, s)


def _largest_block(common: int, block: int) -> int:
    """The largest multiple of `block` up to MAX_BLOCK that divides `common` (of 1 when `block` does not divide
    it): the block size of a layout whose offsets, lengths and total are all multiples of `common`."""
    if common % block:
        block = 1
    return max((b for b in range(block, min(common, MAX_BLOCK) + 1, block) if common % b == 0), default=block)


def segment_layout(sizes: list[int], offsets: list[int], total: int, device: torch.device,
                   block: int = 16) -> dict[str, Tensor]:
    """The SEGMENT_* tensors for parameters of `sizes` elements at `offsets` in a buffer of `total`: blocks of
    a multiple of `block` elements where every offset and the total allow it (else of one element, or of its
    multiples), the largest up to MAX_BLOCK (fewer blocks: fewer per-block sums, loads and loop ends in the
    compiled loops; on 100 x 100k, blocks of 800 instead of 16 take about a fifth off cadamw's step)."""
    block = _largest_block(math.gcd(total, *offsets), block)  # every block size dividing the gcd fits the layout
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
    layout = {SEGMENT_IDS: ids.to(device), SEGMENT_SIZES: counts.to(device)}
    if any(size % block for size in sizes):  # else no block holds padding: the sums need no mask
        layout[SEGMENT_VALID] = valid.to(device)
    return layout


# -- rows: each parameter of two or more dimensions viewed as (size(0), -1) -----------------------------------
ROW_IDS = "_row_ids"  # per block: its row (blocks of other parameters and padding: an extra row, the last)
ROW_PARAMS = "_row_params"  # per row: its parameter (the extra row: the extra index)
ROW_LENGTHS = "_row_lengths"  # per parameter: the length of its rows (0 for parameters of fewer dimensions)
ROW_KEYS = (ROW_IDS, ROW_PARAMS, ROW_LENGTHS)


def row_layout(shapes: list[torch.Size], offsets: list[int], total: int, device: torch.device,
               block: int = 16) -> dict[str, Tensor]:
    """The ROW_* tensors of parameters of `shapes` at `offsets` in a flat buffer of `total` elements; empty when
    no parameter has two or more dimensions (a kernel then treats every parameter as a vector). Rows are
    counted per block of `block` elements when every row, offset and the total allow it (each block then lies
    in one row: one index_add per block, not per element), else per element."""
    matrices = [i for i, shape in enumerate(shapes) if len(shape) >= 2 and shape.numel() > 0]
    if not matrices:
        return {}
    # a block never straddles two rows when every matrix's offset and row length is a multiple of it (the
    # blocks outside the matrices all read the extra row); the largest such multiple of `block`, as in
    # segment_layout: inductor then reads a row's value once per block, not through an index per element
    block = _largest_block(
        math.gcd(total, *(offsets[i] for i in matrices), *(shapes[i].numel() // shapes[i][0] for i in matrices)), block)
    row_count = sum(shapes[i][0] for i in matrices)
    ids = torch.full((total // block,), row_count, dtype=torch.int64)
    params = torch.full((row_count + 1,), len(shapes), dtype=torch.int64)
    lengths = torch.zeros(len(shapes) + 1, dtype=torch.float64)
    first = 0
    for i in matrices:
        rows, n = shapes[i][0], shapes[i].numel()
        start = offsets[i] // block
        ids[start : start + n // block] = torch.arange(first, first + rows).repeat_interleave(n // rows // block)
        params[first : first + rows] = i
        lengths[i] = n // rows
        first += rows
    return {ROW_IDS: ids.to(device), ROW_PARAMS: params.to(device), ROW_LENGTHS: lengths.to(device)}


def row_sums(x: Tensor, s: dict[str, Any]) -> Tensor:
    """Per row (ROW_IDS) of a flat buffer: the sum of x over the row, a tensor of one value per row."""
    ids = s[ROW_IDS]
    partial = x.reshape(ids.shape[0], -1).sum(1)
    return torch.zeros(s[ROW_PARAMS].shape, dtype=x.dtype, device=x.device).index_add_(0, ids, partial)


def rows_to_elements(per_row: Tensor, x: Tensor, s: dict[str, Any]) -> Tensor:
    """Each element's value of its row, from one value per row."""
    ids = s[ROW_IDS]
    return per_row[ids][:, None].expand(ids.shape[0], x.numel() // ids.shape[0]).reshape(x.shape)


def rows_to_params(per_row: Tensor, s: dict[str, Any], reduce: str) -> Tensor:
    """One value per parameter from one per row: their "sum" or "amax" (over a parameter's rows; 0 for
    parameters without rows)."""
    out = torch.zeros(s[ROW_LENGTHS].shape, dtype=per_row.dtype, device=per_row.device)
    if reduce == "sum":
        return out.index_add_(0, s[ROW_PARAMS], per_row)
    return out.scatter_reduce_(0, s[ROW_PARAMS], per_row, reduce, include_self=True)


def params_to_elements(per_param: Tensor, x: Tensor, s: dict[str, Any]) -> Tensor:
    """Each element's value of its parameter, from one value per parameter (SEGMENT_IDS' numbering)."""
    return _per_element(per_param, x, s)
