"""Block-wise 8-bit quantization with the dynamic (tree) code map of Dettmers et al. (2022).

Reference: T. Dettmers, M. Lewis, S. Shleifer, L. Zettlemoyer, "8-bit Optimizers via Block-wise
Quantization", ICLR 2022.

The code map. A signed code is read from the most significant bit: one sign bit, then a run of E zero
bits, then a single one bit (the indicator that ends the exponent), then the remaining F bits, which are a
linear fraction. The value is sign * 10^-E * f, where f splits (0.1, 1] into 2^F equal steps and takes
their right ends, so the largest code is exactly 1 and the absmax of a block is stored without error. A
code whose bits after the sign are all zero is 0. The unsigned map (for moments that are never negative,
such as Adam's second moment) has no sign bit and so one more bit for exponent and fraction. With 8 bits:

  signed:   E = 0..6, F = 6 - E; largest gap between neighbouring codes 0.9 / 64  (top decade)
  unsigned: E = 0..7, F = 7 - E; largest gap between neighbouring codes 0.9 / 128 (top decade)

so rounding to the nearest code errs by at most half of that gap times the block's absmax
(`max_error(signed)`). Small magnitudes keep their relative precision down to 1e-6 (signed) or 1e-7
(unsigned) of the block's absmax; anything smaller rounds to 0 or to the smallest code.

Block-wise: a tensor is cut, in memory order, into blocks of `block` values (the last one padded), each
scaled by its own float32 absmax into [-1, 1] and rounded to the nearest code (a table look-up on the
float32 bits, equal to `torch.bucketize` on the midpoints between codes and a few times faster). A stored
tensor is the uint8 code indices plus one float32 per block.

Under torch.compile the values of codes come from arithmetic instead of a table (`_decode_arithmetic`):
inductor's CPU code loads table entries one vector lane at a time, and arithmetic, comparisons and `where`
stay vectorised. In decade j (magnitude indices m in [2^j, 2^(j+1))) a code's value is the exact fraction
(9 m + P_j) / Q_j, P_j = 9 - 8 * 2^j, Q_j = 10^(B - j) * 2^j (B = 7 signed, 8 unsigned), so one float32
division rounds it as the table does (checked for all 256 codes by the tests).

Non-finite input: NaN and infinities have no code. A block holding any of them is stored with a NaN
scale, so every value of that block reads back as NaN: the damage stays visible and stays inside the
block instead of silently clipping to a finite number. (Optimizers keep non-finite values out of their
state with `nonfinite="skip"`, the default.)
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

_Table = TypeVar("_Table")

__all__ = ["dequantize", "dequantize_rows", "dynamic_map", "max_error", "quantize", "quantize_rows"]


@functools.cache
def _dynamic_values(signed: bool, bits: int) -> tuple[float, ...]:
    magnitude_bits = bits - 1 if signed else bits
    values = {0.0}
    for zeros in range(magnitude_bits):  # E zero bits, then the indicator bit, then F fraction bits
        fraction_bits = magnitude_bits - 1 - zeros
        steps = 2**fraction_bits
        for k in range(1, steps + 1):
            value = 10.0**-zeros * (0.1 + 0.9 * k / steps)
            values.add(value)
            if signed:
                values.add(-value)
    return tuple(sorted(values))


def dynamic_map(signed: bool, bits: int = 8) -> Tensor:
    """The sorted distinct values of the dynamic code map (float32, in [-1, 1] or [0, 1]).

    Signed: 255 values (the +0 and -0 codes coincide); unsigned: 256 values."""
    return torch.tensor(_dynamic_values(signed, bits), dtype=torch.float32)


def max_error(signed: bool, bits: int = 8) -> float:
    """The largest rounding error of one value, as a fraction of its block's absmax: half the widest gap."""
    values = dynamic_map(signed, bits)
    return float((values[1:] - values[:-1]).max()) / 2


def _per_device(build: Callable[[bool, torch.device], _Table]) -> Callable[[bool, torch.device], _Table]:
    """Memoise a table builder per (signed, device) in a plain dict: torch.compile reads a filled entry as a
    constant, where through functools.cache it would trace the builder and rebuild the table in every step."""
    tables: dict[tuple[bool, str], _Table] = {}

    def get(signed: bool, device: torch.device) -> _Table:
        key = (signed, str(device))
        if key not in tables:
            tables[key] = build(signed, torch.device(device))
        return tables[key]

    return get


@_per_device
def _tables(signed: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    values = dynamic_map(signed).to(device)
    return values, (values[1:] + values[:-1]) / 2


# Rounding to the nearest code by table look-up instead of a binary search over the midpoints: a magnitude's
# float32 bits, shifted right by 23 - 8, number buckets of 1/256 of a binade. The closest codes differ by at
# least 0.9/128 of their size, more than a bucket's width, so a bucket holds at most one midpoint: the code
# is the count of midpoints below the bucket plus one if the magnitude is above the bucket's midpoint. A bucket
# fixes every bit of a magnitude above the low 15, so the midpoint inside it is known from those 15 bits alone,
# and one int32 entry holds both numbers: one look-up per value (inductor's CPU code makes each look-up a
# lane-by-lane load through a stack buffer, the rounding's largest cost).
_SHIFT = 23 - 8
_LOW = (1 << _SHIFT) - 1  # the bits of a magnitude below its bucket
_NEVER = 1 << _SHIFT  # above every value of the low bits: the bucket holds no midpoint
_LOWEST = (127 - 30) << 8  # first bucket: 2^-30 (anything smaller joins it); the smallest midpoint is 5e-8
_BUCKETS = (30 + 1) << 8  # up to 2^1, past the largest magnitude, 1
_SIGNED_ZERO = 127  # index of the code 0 in the signed map (127 negative codes below it)


@_per_device
def _rounding_table(signed: bool, device: torch.device) -> Tensor:
    """Per bucket, one int32: (the number of midpoints, between non-negative codes, below the bucket) << 16 |
    (the least low bits of a magnitude above the bucket's midpoint; `_NEVER` if none); then the same for
    negative values, whose ties go to the larger magnitude (the least low bits at or above the midpoint)."""
    _, midpoints = _tables(signed, torch.device("cpu"))
    midpoints = midpoints[midpoints > 0]  # the same float32 numbers as the signed map's positive half
    edges = ((torch.arange(_BUCKETS + 1, dtype=torch.int32) + _LOWEST) << _SHIFT).view(torch.float32)
    below = torch.searchsorted(midpoints, edges[:-1]).to(torch.int32)  # midpoints < the bucket's lower edge
    inside = torch.searchsorted(midpoints, edges[1:]) - below  # midpoints in [lower, upper)
    if int(inside.max()) > 1 or int(below[0]) > 0:
        raise AssertionError("a quantization bucket holds two midpoints")  # cannot happen for the 8-bit maps
    low = midpoints[below.clamp(max=len(midpoints) - 1)].view(torch.int32) & _LOW
    above = torch.where(inside == 1, low + 1, _NEVER)  # > midpoint
    at_or_above = torch.where(inside == 1, low, _NEVER)  # >= midpoint
    return torch.cat([(below << 16) | above, (below << 16) | at_or_above]).to(device, torch.int32)


def _nearest_codes(normalized: Tensor, signed: bool, cleaned: bool = False) -> Tensor:
    """Indices into `dynamic_map(signed)` of the codes nearest to `normalized` (float32 in [-1, 1]; unsigned: NaN
    reads 0); a value exactly between two codes takes the lower one, as `torch.bucketize` on the midpoints.
    Integer operations and one look-up (`_rounding_table`) per value. `cleaned=True`: the caller has already sent
    an unsigned map's NaN and negative values to 0 (eager `quantize_rows`, in its clamp), so it is not done twice."""
    table = _rounding_table(signed, normalized.device)
    if not signed and torch.compiler.is_compiling():  # negative values, -0 and NaN to +0
        normalized = torch.where(normalized > 0.0, normalized, 0.0)
    elif not signed and not cleaned:  # the same codes (-0 rounds as +0); `cleaned`: the caller did it
        normalized = normalized.clamp_min(0.0).nan_to_num_(0.0)
    bits = normalized.view(torch.int32)
    magnitude_bits = bits & 0x7FFFFFFF if signed else bits
    key = (magnitude_bits >> _SHIFT).sub_(_LOWEST).clamp_(0, _BUCKETS - 1)
    sign = bits >> 31  # -1 for negative values, else 0
    if signed:
        key.add_(sign & _BUCKETS)
    if torch.compiler.is_compiling():  # the key is in range: no bounds check in compiled code
        entry = torch.ops.aten._unsafe_index(table, [key])
    else:  # faster than advanced indexing in eager
        entry = table.index_select(0, key.view(-1)).view(key.shape)
    index = (entry >> 16).add_((magnitude_bits & _LOW) >= (entry & 0xFFFF))
    if not signed:
        return index
    return index.bitwise_xor_(sign).sub_(sign).add_(_SIGNED_ZERO)  # 127 - index for negative values, 127 + index


def _decade_constants(signed: bool) -> tuple[tuple[float, float, float], ...]:
    """Per decade j: (its first magnitude index 2^j, P_j, Q_j)."""
    magnitude_bits = 7 if signed else 8
    return tuple((float(2**j), 9.0 - 8.0 * 2**j, float(10 ** (magnitude_bits - j) * 2**j))
                 for j in range(magnitude_bits))


_DECADES = {signed: _decade_constants(signed) for signed in (True, False)}


def _decode_arithmetic(codes: Tensor, signed: bool) -> Tensor:
    """`dynamic_map(signed)[codes]` (the signed map's unused code 255 reads NaN) from float32 code indices,
    without a table: comparisons, `where` and one division, all of which inductor vectorises."""
    offset = codes - float(_SIGNED_ZERO) if signed else codes
    magnitude = offset.abs() if signed else offset
    shift, divisor = torch.zeros_like(magnitude), torch.ones_like(magnitude)
    for first, p, q in _DECADES[signed]:
        inside = magnitude >= first
        shift, divisor = torch.where(inside, p, shift), torch.where(inside, q, divisor)
    if signed:
        shift = torch.where(magnitude > float(_SIGNED_ZERO), float("nan"), shift)
    value = (magnitude * 9.0 + shift) / divisor
    return torch.where(offset < 0, -value, value) if signed else value


def quantize(x: Tensor, block: int, signed: bool = True) -> tuple[Tensor, Tensor]:
    """Round `x` block-wise to the dynamic map: (uint8 codes shaped like x, float32 absmax per block).

    `signed=False` is for tensors that are never negative; negative values then round to 0."""
    if block < 1:
        raise ValueError(f"block must be a positive integer, got {block}")
    n = x.numel()
    blocks = -(-n // block)
    flat = x.detach().reshape(-1).to(torch.float32)
    if blocks * block != n:
        flat = torch.cat([flat, flat.new_zeros(blocks * block - n)])
    if not n:
        return flat.to(torch.uint8).view(x.shape), flat.new_zeros(0)
    codes, absmax = quantize_rows(flat.view(blocks, block), signed)
    return codes.view(-1)[:n].view(x.shape), absmax


def quantize_rows(rows: Tensor, signed: bool = True) -> tuple[Tensor, Tensor]:
    """`quantize` of float32 `rows` shaped (blocks, block), one block a row: (uint8 codes of that shape,
    float32 absmax per row). The arithmetic of every 8-bit path (eager, per-parameter and flat compiled).
    Rows may also be shaped (blocks, ...): each block is then everything after the first dimension."""
    dims = tuple(range(1, rows.dim()))
    absmax = rows.abs().amax(dim=dims)
    # amax propagates NaN, and an infinity is the max: a block whose absmax is finite is finite
    absmax = torch.where(torch.isfinite(absmax), absmax, torch.full_like(absmax, float("nan")))
    scale = torch.where(absmax > 0, absmax, 1.0)  # NaN > 0 is False: a block that is not finite has scale 1
    normalized = rows / scale.view(-1, *(1 for _ in dims))
    # into [-1, 1] with NaN -> 0 and +-inf -> +-1 (only in blocks that are not finite, whose scale is 1). Compiled:
    # by comparisons and `where`, which torch.compile's CPU code vectorises (its clamp also propagates NaN, three
    # instructions a bound); unsigned: `_nearest_codes` sends NaN (and negative values) to 0. Eager: the same
    # numbers in place.
    if torch.compiler.is_compiling():
        normalized = torch.where(normalized > 1.0, 1.0, normalized)
        if signed:
            normalized = torch.where(normalized < -1.0, -1.0, normalized)
            normalized = torch.where(normalized != normalized, 0.0, normalized)  # x != x is the NaN test
    else:  # unsigned: negative values to +0 in the same pass
        normalized = normalized.nan_to_num_(0.0, 1.0, -1.0).clamp_(-1.0 if signed else 0.0, 1.0)
    codes = _nearest_codes(normalized, signed, cleaned=not torch.compiler.is_compiling())
    if torch.compiler.is_compiling():
        codes = codes.float()  # inductor's CPU code converts int32 to uint8 one lane at a time, float32 in vectors
    return codes.to(torch.uint8), absmax


@_per_device
def _lookup(signed: bool, device: torch.device) -> Tensor:
    """The code values padded to 256 entries (the signed map's unused code 255 reads NaN), so that any uint8
    indexes it without a bounds check (eager decoding; compiled code decodes by arithmetic)."""
    values, _ = _tables(signed, torch.device("cpu"))
    return torch.cat([values, values.new_full((256 - len(values),), float("nan"))]).to(device)


def dequantize_rows(codes: Tensor, absmax: Tensor, signed: bool = True, words: bool = False) -> Tensor:
    """The float32 values of uint8 `codes` shaped (blocks, ...) with one scale per block (`quantize_rows`).
    Under torch.compile the values come from `_decode_arithmetic` instead of a table, and with `words=True`
    codes shaped (blocks, groups, 8), contiguous and starting on a 4-byte boundary (the layout of
    `gradwise.core.compiled_state`), are read as two int32 words per group of 8: inductor's CPU code loads a
    vector of uint8 through a copy on the stack, several times slower than a vector of int32."""
    scale = absmax.to(torch.float32).view(-1, *(1 for _ in range(codes.dim() - 1)))
    if torch.compiler.is_compiling():
        return _decode_arithmetic(_code_indices(codes) if words else codes.float(), signed) * scale
    return _lookup(signed, codes.device)[codes.int()] * scale


def _code_indices(codes: Tensor) -> Tensor:
    """Contiguous uint8 codes shaped (..., 8) that start on a 4-byte boundary, as float32 indices read from two
    little-endian int32 words per 8 codes."""
    if sys.byteorder != "little":
        return codes.float()
    words = codes.view(torch.int32)  # (..., 2)
    lane = torch.arange(8, device=codes.device, dtype=torch.int32)
    word = torch.where(lane < 4, words[..., 0:1], words[..., 1:2])
    return ((word >> ((lane & 3) * 8)) & 255).float()


def dequantize(
    codes: Tensor, absmax: Tensor, block: int, signed: bool = True, dtype: torch.dtype = torch.float32
) -> Tensor:
    """The values that `quantize` stored, as a new tensor of `dtype` shaped like `codes`."""
    n = codes.numel()
    values, _ = _tables(signed, codes.device)
    flat = values[codes.reshape(-1).long()]
    blocks = absmax.numel()
    if blocks * block != n:
        flat = torch.cat([flat, flat.new_zeros(blocks * block - n)])
    out = flat.view(blocks, block) * absmax.to(torch.float32)[:, None]
    return out.view(-1)[:n].to(dtype).view(codes.shape)
