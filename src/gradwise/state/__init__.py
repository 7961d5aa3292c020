"""Memory-lean optimizer state: an engine option of every gradwise optimizer.

Per-group hyper-parameters it adds:
  state_bits (32 | 8, default 32): 8 keeps each state tensor of the parameter's shape as uint8 codes of the
    dynamic map with one float32 absmax per block (Dettmers et al., 2022, "8-bit Optimizers via Block-wise
    Quantization"): about 1 byte per value instead of 4 (AdamW: about 2 bytes of state per parameter
    instead of 8). The transforms still compute in the parameter's dtype: each step dequantizes, updates
    and quantizes again (see `gradwise.state.storage`).
  state_block (integer >= 64, default 2048): values per block, the paper's block size.
  state_min_size (integer >= 0, default 4096): parameters with fewer elements keep full-precision state,
    as in the paper's implementation (small tensors save little and are often sensitive: biases, norms).
  state_dtype (None or a torch floating dtype, default None): keep the state tensors that are not
    quantized in this dtype (e.g. torch.bfloat16: 2 bytes per value), rounded to nearest.
  stochastic_rounding (bool, default False): bfloat16 parameters are updated in float32 and written back
    with stochastic rounding (see `gradwise.state.rounding`).

With the defaults (32 bits, no dtype) the option does nothing and the state is exactly torch's.

With compile=True and an elementwise chain (AdamW, AdaBelief, Adan, ...), the float32 parameters of a group that
keep 8-bit state are updated in one compiled call per bucket: dequantize, chain, quantize over flat buffers that
the parameters and their codes are views of (`gradwise.core.compiled_state`). The codes are the eager step's,
except that inductor's fused float arithmetic may differ from eager's by an ulp, so a value on the edge between
two codes may (rarely) round to the neighbouring one.

Checkpoints convert both ways (see `gradwise.state.storage` for the error bounds): `load_state_dict` restores
the saved groups' options, so after loading an 8-bit checkpoint set `group["state_bits"] = 32` to continue in
32 bits (the codes become floats before the next step, exactly), or set 8 after loading a 32-bit one (the
floats are quantized at the end of the next step).

Keeping some parameters in 32-bit state (the paper's stable-embedding advice): `gradwise.create(...,
state_bits=8, state_bits_exclude=torch.nn.Embedding)`; see `gradwise.core.registry.create`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from ..core.engine import EngineOption, Storage, Work, extend
from ..core.validation import Integer, OneOf, Optional
from . import master as master  # noqa: F401  (registers the master_weights option)
from .quantize import dequantize, dynamic_map, max_error, quantize
from .rounding import ROUNDING, stochastic_round
from .storage import ABSMAX, NON_NEGATIVE, FloatStorage, QuantizedStorage, dequantize_state, is_quantized

__all__ = [
    "NON_NEGATIVE", "ROUNDING", "STATE", "FloatStorage", "QuantizedStorage", "dequantize", "dequantize_state",
    "dynamic_map", "is_quantized", "max_error", "quantize", "stochastic_round", "storage",
]

STATE_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def storage(h: SimpleNamespace) -> Storage | None:
    """The storage a param group's hyper-parameters ask for, or None for the plain state."""
    wide = bool(getattr(h, "stochastic_rounding", False))  # bfloat16 parameters step in float32
    if h.state_bits == 8:
        small = None if h.state_dtype is None else FloatStorage(h.state_dtype, wide)
        return QuantizedStorage(block=h.state_block, min_size=h.state_min_size, small=small, float32_for_bfloat16=wide)
    if h.state_dtype is not None:
        return FloatStorage(h.state_dtype, wide)
    return None


def dequantize_loaded(optimizer: Any, work: Work) -> None:
    """Before a step: 8-bit state found in a 32-bit group (a checkpoint of an 8-bit run loaded into a 32-bit
    optimizer) becomes float state of the parameter's dtype, exactly the values the codes stand for.

    The scan runs only when it can find something: on the first step, after `load_state_dict` (torch gives
    the optimizer a new state dict) and after a group's state_bits changed. It covers every parameter of the
    group, not only those with a gradient this step: the scan does not run again, so a parameter left out
    would meet its codes later as if they were floats."""
    seen = (id(optimizer.state), tuple(group["state_bits"] for group in optimizer.param_groups))
    if getattr(optimizer, "_gradwise_scanned_state", None) == seen:
        return
    optimizer._gradwise_scanned_state = seen
    for group in optimizer.param_groups:
        if group["state_bits"] != 32:
            continue
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and any(key.endswith(ABSMAX) for key in state):
                dequantize_state(p, state, group["state_block"])


STATE = EngineOption(
    name="state",
    defaults=dict(state_bits=32, state_block=2048, state_min_size=4096, state_dtype=None),
    ranges=dict(
        state_bits=OneOf((32, 8)),
        state_block=Integer(64),
        state_min_size=Integer(0),
        state_dtype=Optional(OneOf(STATE_DTYPES)),
    ),
    prepare=dequantize_loaded,
    storage=storage,
)

extend(STATE)
