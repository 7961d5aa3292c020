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


# -- factors: a second moment kept per row and per column of each parameter of two or more dimensions ----------
# (Adafactor's R and C, gradwise.transforms.factored). A parameter of shape (..., R, C) keeps ROW_FACTOR of shape
# (..., R, 1) and COLUMN_FACTOR of shape (..., 1, C); one of fewer dimensions keeps FULL_FACTOR, shaped like
# it. On a flat buffer (see factor_layout) the state dict holds two buffers under ROW_FACTOR and COLUMN_FACTOR:
# every matrix's rows, then an extra row (always 0: the row of the blocks outside the matrices), and every
# matrix's columns and every vector's FULL_FACTOR (a vector is read as one row whose columns are its elements),
# each region padded to whole blocks. Each parameter's state entries are views of their regions.
ROW_FACTOR, COLUMN_FACTOR, FULL_FACTOR = "row_var", "col_var", "variance"
FACTOR_STATE_KEYS = frozenset({ROW_FACTOR, COLUMN_FACTOR, FULL_FACTOR})
FACTOR_ROWS = "_factor_rows"  # per block: its row (blocks outside the matrices: the extra row, the last)
FACTOR_ROW_LENGTHS = "_factor_row_lengths"  # per row: its length, C (the extra row: 0)
FACTOR_ROW_BATCHES = "_factor_row_batches"  # per row: its matrix, one per index of the leading dimensions
FACTOR_BATCH_ROWS = "_factor_batch_rows"  # per matrix: R (and an extra matrix, of no rows: 0)
FACTOR_COLUMNS = "_factor_columns"  # per block: its block of the column buffer viewed as (-1, block)
FACTOR_COLUMN_BATCHES = "_factor_column_batches"  # per column block: its matrix (vectors: the extra one)
FACTOR_GATHERS = "_factor_gathers"  # a tuple, per number of rows R: (column blocks, R) the blocks adding to each
FACTOR_KEYS = (FACTOR_ROWS, FACTOR_ROW_LENGTHS, FACTOR_ROW_BATCHES, FACTOR_BATCH_ROWS, FACTOR_COLUMNS,
               FACTOR_COLUMN_BATCHES, FACTOR_GATHERS)


def factor_shapes(shape: torch.Size) -> dict[str, tuple[int, ...]]:
    """The factored state of a parameter of `shape`: its keys and their shapes."""
    if len(shape) < 2:
        return {FULL_FACTOR: tuple(shape)}
    return {ROW_FACTOR: (*shape[:-1], 1), COLUMN_FACTOR: (*shape[:-2], 1, shape[-1])}


def _column_sources(shape: torch.Size, first: int, block: int) -> Tensor:
    """Per column block of a parameter whose blocks start at `first`: the blocks adding to it, (blocks, R)."""
    if len(shape) < 2:
        return torch.arange(first, first + -(-shape.numel() // block))[:, None]
    r, per_row = shape[-2], shape[-1] // block
    b = shape.numel() // (r * shape[-1])
    rows = torch.arange(b)[:, None, None] * r + torch.arange(r)[None, None, :]
    return (first + rows * per_row + torch.arange(per_row)[None, :, None]).reshape(-1, r)


def factor_layout(shapes: list[torch.Size], offsets: list[int], total: int, device: torch.device, block: int = 16
                  ) -> tuple[dict[str, Any], int, int, list[dict[str, int]]]:
    """The FACTOR_* tensors of parameters of `shapes` at `offsets` in a flat buffer of `total` elements (each
    parameter non-empty), the lengths of the row and column buffers, and per parameter the start of each of
    its factored state entries in its buffer (ROW_FACTOR and COLUMN_FACTOR in theirs; FULL_FACTOR in the
    column buffer). Blocks are the largest multiple of `block` (up to MAX_BLOCK) that divides the total, every
    offset and every matrix's row length C, else of one element: each block then lies in one row of one
    matrix, and its columns are consecutive. The column buffer holds the parameters grouped by their number
    of rows R (vectors: 1), so that each group's column sums are one gathered reduction over R (FACTOR_GATHERS),
    not a scatter of every element (slow in inductor's CPU code)."""
    matrices = [shape for shape in shapes if len(shape) >= 2]
    block = _largest_block(math.gcd(total, *offsets, *(shape[-1] for shape in matrices)), block)
    blocks = total // block
    rows_of = torch.full((blocks,), -1, dtype=torch.int64)  # -1: outside every matrix, set below
    row_lengths: list[int] = []
    row_batches: list[int] = []
    batch_rows: list[int] = []
    batch_of: list[int] = []  # per parameter: its first matrix (vectors: -1)
    rows = batches = 0
    for shape, off in zip(shapes, offsets, strict=True):
        batch_of.append(batches if len(shape) >= 2 else -1)
        if len(shape) < 2:
            continue
        n, r, c = shape.numel(), shape[-2], shape[-1]
        b = n // (r * c)
        rows_of[off // block : (off + n) // block] = rows + torch.arange(n // block) * block // c
        row_lengths += [c] * (b * r)
        row_batches += [batches + i // r for i in range(b * r)]
        batch_rows += [r] * b
        rows, batches = rows + b * r, batches + b
    rows_of[rows_of < 0] = rows
    sources = [_column_sources(shape, off // block, block) for shape, off in zip(shapes, offsets, strict=True)]
    covered = torch.zeros(blocks, dtype=torch.bool)
    for src in sources:
        covered[src.reshape(-1)] = True
    padding = torch.nonzero(~covered).reshape(-1, 1)  # blocks of padding only: a column block each, never read
    groups: dict[int, list[int]] = {}  # R -> the parameters (len(shapes): the padding) in column buffer order
    for i, src in enumerate([*sources, padding]):
        if src.numel():
            groups.setdefault(src.shape[1], []).append(i)
    columns_of = torch.empty(blocks, dtype=torch.int64)
    column_batches: list[Tensor] = []
    gathers: list[Tensor] = []
    places: list[dict[str, int]] = [{} for _ in shapes]
    width = 0  # column blocks so far
    for r in sorted(groups):
        gathers.append(torch.cat([([*sources, padding])[i] for i in groups[r]]))
        for i in groups[r]:
            src = sources[i] if i < len(shapes) else padding
            columns_of[src] = (width + torch.arange(src.shape[0]))[:, None].expand_as(src)
            if i < len(shapes):
                places[i] = {COLUMN_FACTOR if len(shapes[i]) >= 2 else FULL_FACTOR: width * block}
            if i < len(shapes) and batch_of[i] >= 0:
                c = shapes[i][-1]
                column_batches.append(batch_of[i] + torch.arange(src.shape[0]) * block // c)
            else:
                column_batches.append(torch.full((src.shape[0],), batches, dtype=torch.int64))
            width += src.shape[0]
    first_row = 0
    for i, shape in enumerate(shapes):
        if len(shape) >= 2:
            places[i][ROW_FACTOR] = first_row
            first_row += shape.numel() // shape[-1]
    layout: dict[str, Any] = {
        FACTOR_ROWS: rows_of,
        FACTOR_ROW_LENGTHS: torch.tensor([*row_lengths, 0], dtype=torch.float64),
        FACTOR_ROW_BATCHES: torch.tensor([*row_batches, batches], dtype=torch.int64),
        FACTOR_BATCH_ROWS: torch.tensor([*batch_rows, 0], dtype=torch.float64),
        FACTOR_COLUMNS: columns_of,
        FACTOR_COLUMN_BATCHES: torch.cat(column_batches),
    }
    layout = {k: v.to(device) for k, v in layout.items()}
    layout[FACTOR_GATHERS] = tuple(g.to(device) for g in gathers)
    return layout, rows + 1, width * block, places
