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
option, so every transform runs unchanged. A float tensor found under a quantized key (a checkpoint
saved by a 32-bit optimizer, loaded into an 8-bit one) is used as the working tensor as it is; `close` then
quantizes it, so loading costs one rounding, of at most `quantize.max_error(signed)` times the block's
absmax per value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.engine import State
from .quantize import dequantize, quantize

__all__ = ["NON_NEGATIVE", "FloatStorage", "QuantizedStorage"]

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


@dataclass(frozen=True)
class QuantizedStorage:
    """8-bit block-wise storage (`state_bits=8`); tensors below `min_size` elements are kept as they are,
    or in `dtype` when one is given."""

    block: int = 2048
    min_size: int = 4096
    dtype: torch.dtype | None = None

    def _quantizes(self, p: Tensor, key: str, value: object) -> bool:
        return _convertible(p, key, value) and p.numel() >= self.min_size

    def init(self, p: Tensor, state: State) -> None:
        self.close(p, state, dict(state))

    def open(self, p: Tensor, state: State) -> State:
        work = {}
        for key, value in state.items():
            if key.endswith(ABSMAX) and key[: -len(ABSMAX)] in state:
                continue
            scales = state.get(key + ABSMAX)
            if isinstance(value, Tensor) and value.dtype == torch.uint8 and scales is not None:
                work[key] = dequantize(value, scales, self.block, signed=key not in NON_NEGATIVE, dtype=p.dtype)
            elif self.dtype is not None and _convertible(p, key, value) and value.dtype != p.dtype:
                work[key] = value.to(p.dtype)
            else:
                work[key] = value
        return work

    def close(self, p: Tensor, state: State, work: State) -> None:
        for key, value in work.items():
            if self._quantizes(p, key, value):
                state[key], state[key + ABSMAX] = quantize(value, self.block, signed=key not in NON_NEGATIVE)
            elif self.dtype is not None and _convertible(p, key, value):
                state[key] = value.to(self.dtype)
            else:
                state[key] = value


@dataclass(frozen=True)
class FloatStorage:
    """State tensors of the parameter's shape kept in `dtype` (e.g. torch.bfloat16) and worked on in the
    parameter's dtype; rounding to `dtype` is to nearest."""

    dtype: torch.dtype

    def init(self, p: Tensor, state: State) -> None:
        self.close(p, state, dict(state))

    def open(self, p: Tensor, state: State) -> State:
        return {
            key: value.to(p.dtype) if _convertible(p, key, value) and value.dtype != p.dtype else value
            for key, value in state.items()
        }

    def close(self, p: Tensor, state: State, work: State) -> None:
        for key, value in work.items():
            state[key] = value.to(self.dtype) if _convertible(p, key, value) else value
