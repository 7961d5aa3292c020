"""How a param group's state tensors are kept between steps: 8-bit block-wise codes, or a narrower float.

Which tensors are converted: those of the parameter's shape, floating point, other than "step", with at
least `min_size` elements (8-bit only; small tensors cost little and keep full precision). Anything else
(step counts, factored statistics of another shape, integer counters) stays as the transforms left it.

Stored form of a quantized tensor `key`: `state[key]` holds uint8 codes shaped like the parameter and
`state[key + "_absmax"]` one float32 scale per block, so `state_dict` saves the compact form as is.

Signed or unsigned code map: decided by the key's name. The moments in `NON_NEGATIVE` (second moments,
their running maxima, AdaBelief's variance, ...) are never negative and use the unsigned map, which has
twice the resolution; every other key uses the signed map. A negative value under a non-negative key
would be stored as 0.

Working tensors: `open` returns new tensors of the parameter's dtype, the dtype the state has without this
option, so every transform runs unchanged; for bfloat16 parameters with `stochastic_rounding=True`, whose
step runs in float32, float32 (so `state_dtype=torch.float32` keeps float32 moments for bfloat16 weights).

Converting checkpoints (`load_state_dict` restores the saved groups' state_bits, state_block and
state_dtype; set the group's keys after loading to change them):
- 32-bit state into an 8-bit group: a float tensor found under a quantized key is used as the working
  tensor as it is and quantized on the step's `close`: one rounding, of at most `max_error(signed)` times
  the block's absmax per value (signed: 0.9/128 = 0.0070, unsigned: 0.9/256 = 0.0035).
- 8-bit state into a 32-bit group: `dequantize_state` (run by the option before the first step after
  loading) replaces codes and scales by float tensors of the parameter's dtype. This adds no error: the
  values are exactly those the 8-bit optimizer worked with. They differ from the values of a run that
  was 32-bit throughout by the 8-bit rounding of the last step, within the same bound.
- 8-bit state into an 8-bit group with a larger `min_size` (or smaller tensors): dequantized as above.
The block size is not stored with the codes: reading them needs the `state_block` they were written
with (restored by `load_state_dict`); a count of scales that does not fit the block size is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.engine import State
from .quantize import dequantize, quantize

__all__ = ["NON_NEGATIVE", "FloatStorage", "QuantizedStorage", "dequantize_state", "is_quantized", "working_dtype"]

NON_NEGATIVE = frozenset(
    {
        "exp_avg_sq",
        "max_exp_avg_sq",
        "exp_avg_var",
        "max_exp_avg_var",
        "square_avg",
        "grad_sq_avg",
        "variance",
        "sum_sq_norm",
    }
)

ABSMAX = "_absmax"


def _convertible(p: Tensor, key: str, value: object) -> bool:
    return (
        key != "step"
        and not key.endswith(ABSMAX)
        and isinstance(value, Tensor)
        and value.is_floating_point()
        and value.shape == p.shape
    )


def is_quantized(state: State, key: str) -> bool:
    """True when `state[key]` holds 8-bit codes (a uint8 tensor with its block scales beside it)."""
    value = state.get(key)
    return isinstance(value, Tensor) and value.dtype == torch.uint8 and key + ABSMAX in state


def working_dtype(p: Tensor, float32_for_bfloat16: bool = False) -> torch.dtype:
    """The dtype the transforms see the state in: the parameter's, or float32 for a bfloat16 parameter whose
    step runs on a float32 copy (`stochastic_rounding=True`, see `gradwise.state.rounding`)."""
    return torch.float32 if float32_for_bfloat16 and p.dtype == torch.bfloat16 else p.dtype


def _read_codes(p: Tensor, state: State, key: str, block: int, dtype: torch.dtype | None = None) -> Tensor:
    codes, scales = state[key], state[key + ABSMAX]
    if scales.numel() != -(-codes.numel() // block):
        raise ValueError(
            f"state[{key!r}] holds {codes.numel()} 8-bit codes with {scales.numel()} block scales, which does "
            f"not fit state_block={block}: set the param group's state_block to the value the state was saved with"
        )
    return dequantize(codes, scales, block, signed=key not in NON_NEGATIVE, dtype=dtype or p.dtype)


def dequantize_state(p: Tensor, state: State, block: int) -> None:
    """Replace, in place, every 8-bit tensor of `state` by float values of `p`'s dtype (exact: the values
    the codes stand for) and drop its block scales."""
    for key in [k for k in state if is_quantized(state, k)]:
        state[key] = _read_codes(p, state, key, block)
        del state[key + ABSMAX]


@dataclass(frozen=True)
class FloatStorage:
    """State tensors of the parameter's shape kept in `dtype` (e.g. torch.bfloat16) and worked on in
    `working_dtype` (the parameter's); rounding to `dtype` is to nearest."""

    dtype: torch.dtype
    float32_for_bfloat16: bool = False

    def read(self, p: Tensor, key: str, value: object) -> object:
        """The working form of one stored value: `working_dtype`."""
        dtype = working_dtype(p, self.float32_for_bfloat16)
        if isinstance(value, Tensor) and _convertible(p, key, value) and value.dtype != dtype:
            return value.to(dtype)
        return value

    def write(self, p: Tensor, key: str, value: object) -> object:
        """The stored form of one working value: `dtype`."""
        return value.to(self.dtype) if isinstance(value, Tensor) and _convertible(p, key, value) else value

    def init(self, p: Tensor, state: State) -> None:
        self.close(p, state, dict(state))

    def open(self, p: Tensor, state: State) -> State:
        return {key: self.read(p, key, value) for key, value in state.items()}

    def close(self, p: Tensor, state: State, work: State) -> None:
        for key, value in work.items():
            state[key] = self.write(p, key, value)


@dataclass(frozen=True)
class QuantizedStorage:
    """8-bit block-wise storage (`state_bits=8`); tensors below `min_size` elements are kept as they are,
    or by `small` (a FloatStorage of the group's state_dtype) when one is given."""

    block: int = 2048
    min_size: int = 4096
    small: FloatStorage | None = None
    float32_for_bfloat16: bool = False  # dequantize to float32 for bfloat16 parameters (see `working_dtype`)

    def _quantizes(self, p: Tensor, key: str, value: object) -> bool:
        return _convertible(p, key, value) and p.numel() >= self.min_size

    def init(self, p: Tensor, state: State) -> None:
        self.close(p, state, dict(state))

    def open(self, p: Tensor, state: State) -> State:
        work: State = {}
        for key, value in state.items():
            if key.endswith(ABSMAX) and is_quantized(state, key[: -len(ABSMAX)]):
                continue
            if is_quantized(state, key):
                work[key] = _read_codes(p, state, key, self.block, working_dtype(p, self.float32_for_bfloat16))
            elif self.small is not None:
                work[key] = self.small.read(p, key, value)
            else:
                work[key] = value
        return work

    def close(self, p: Tensor, state: State, work: State) -> None:
        for key, value in work.items():
            if self._quantizes(p, key, value):
                state[key], state[key + ABSMAX] = quantize(value, self.block, signed=key not in NON_NEGATIVE)
                continue
            if _convertible(p, key, value):
                state.pop(key + ABSMAX, None)  # codes loaded for a tensor this group keeps in floats
            state[key] = value if self.small is None else self.small.write(p, key, value)
