"""Float32 master weights for bfloat16 and float16 parameters: an engine option of every gradwise optimizer.

Per-group hyper-parameter it adds:
  master_weights (bool, default False): a bfloat16 or float16 parameter gets a float32 master copy kept in
    the optimizer's state. Each step upcasts the gradient to float32 and runs the whole chain on the master
    copy (state allocated on the first step is float32 too), then writes the parameter back as the master
    rounded to nearest. The master copy is the trajectory a float32 optimizer would follow from the same
    start with the same gradients, bit for bit (tests/state/test_master.py); the low-precision parameter is
    only what the forward pass reads.
    With `stochastic_rounding=True` as well, bfloat16 parameters are written back with stochastic rounding
    from the master copy instead (unbiased: E[parameter] = master; the random bits are drawn as that option
    draws them, see `gradwise.state.rounding`); float16 parameters are still rounded to nearest.
    Parameters of any other dtype (float32, float64) are left alone: the option is a no-op for them (no
    number changes; with compile=True a group with the option runs the per-parameter compiled path rather
    than the flat one, so set it on the groups that hold low-precision parameters).

Memory: 4 extra bytes per bfloat16/float16 parameter for the master copy, kept between steps, and the
chain's state tensors are float32 (AdamW: 8 bytes per parameter instead of 4 in bfloat16) unless
`state_bits=8` or `state_dtype` narrows them. A step also holds a float32 copy of the gradient (4 bytes per
parameter, freed at the end of the step). AdamW on bfloat16 weights: 2 (weight) + 4 (master) + 8 (moments)
= 14 bytes per parameter, against 12 for a float32 model.

How the master copy is stored: `state[p]["master_weight"]` holds its float32 bits as an int32 tensor of the
parameter's shape, so that the state storages (`state_bits=8`, `state_dtype`), which convert the floating
state tensors of the parameter's shape, never round it; `state_dict` saves it as is (a bit-exact round trip,
so a resumed run equals an uninterrupted one). `master_weight(optimizer, p)` returns it as float32.

With `state_bits=8` or `state_dtype`, the group's storage keeps the state as it asks (8-bit codes, or
`state_dtype`) but hands it to the chain as float32 and stores the float32 result: one rounding per step, by
the storage (`state_dtype=torch.float32` keeps the moments in float32 exactly). The option wraps the storage
the `state` option chooses, showing it a float32 stand-in of the parameter (a meta tensor of its shape).
Any bfloat16/float16 state tensor the chain is handed anyway (a checkpoint of a run without the option) is
read as float32 and stays float32.

The master copy is created on the parameter's first step with the option on (from the parameter's value
then) and is the truth from then on: writing into the parameter directly (re-initialising, loading model
weights) while keeping the optimizer state is overwritten by the next step; load the optimizer state too,
or delete `state[p]["master_weight"]`. Switching the option off leaves a stale master copy in the state:
delete it before switching the option on again.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..core.engine import EngineOption, State, Transform, Work, extend, kernel_transform
from ..core.validation import Flag
from .rounding import SEED, _Seeds, on_parameter_copy, write_rounded

__all__ = ["MASTER", "MASTER_WEIGHTS", "master_weight"]

MASTER = "master_weight"  # the float32 master copy, as int32 bits
WORKING = "_master_working"  # the master copy as float32 (a view of MASTER), present only during a step
NARROW = (torch.bfloat16, torch.float16)


def master_weight(optimizer: Any, p: Tensor) -> Tensor | None:
    """The float32 master copy of `p` kept by `optimizer` (a view of its state), or None if it has none."""
    bits = optimizer.state.get(p, {}).get(MASTER)
    return None if bits is None else bits.view(torch.float32)


def _wide(p: Tensor) -> Tensor:
    """What a transform's `init` sees: a float32 copy of a bfloat16/float16 parameter, with its gradient."""
    if p.dtype not in NARROW:
        return p
    wide = p.detach().float()
    if p.grad is not None:
        wide.grad = p.grad.float()  # for inits that read it (SGDSaI's signal-to-noise ratio)
    return wide


def _open_kernel(u: Tensor, p: Tensor, s: State) -> Tensor:
    """The master copy (created on first use), the state tensors and the update, as float32."""
    bits = s.get(MASTER)
    if bits is None:
        bits = s[MASTER] = p.detach().float().view(torch.int32)
    for key in [k for k, v in s.items() if k != "step" and isinstance(v, Tensor) and v.dtype in NARROW]:
        s[key] = s[key].float()  # from a storage or a checkpoint of a run without the option: stays float32
    s[WORKING] = work = bits.view(torch.float32)
    if p.grad is None:  # the engine steps parameters with a gradient only; a caller of the kernel might not
        return u.float()
    work.grad = p.grad.float()  # for transforms that read the raw gradient (AdamP's projection test)
    return work.grad if u is p.grad else u.float()


def _open(seeds: _Seeds | None) -> Transform:
    """Prepended: the step runs on the float32 master copy from here on."""
    if seeds is None:

        def kernel(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
            return u if p.dtype not in NARROW else _open_kernel(u, p, s)

        return kernel_transform(kernel)

    def seeded(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
        if p.dtype not in NARROW:
            return u
        if p.dtype == torch.bfloat16 and SEED not in s:
            s[SEED] = seeds(p)
        return _open_kernel(u, p, s)

    return kernel_transform(seeded)


def _step_number(t: float) -> tuple[float]:
    return (t,)


def _close(stochastic: bool) -> Transform:
    """Appended: the parameter becomes the master copy rounded to its dtype."""

    def nearest(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
        if p.dtype not in NARROW:
            return u
        work = s.pop(WORKING)
        work.grad = None
        p.copy_(work)  # float32 to bfloat16/float16: round to nearest even
        return u

    if not stochastic:
        return kernel_transform(nearest)

    def stochastically(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
        if p.dtype != torch.bfloat16:
            return nearest(u, p, s, c)
        work = s.pop(WORKING)
        work.grad = None
        write_rounded(p, work, s[SEED], c[0])
        return u

    return kernel_transform(stochastically, _step_number)


def _on_master(transform: Transform) -> Transform:
    """The transform run on the master copy of a bfloat16/float16 parameter, its state allocated in float32."""
    return on_parameter_copy(transform, WORKING, lambda p: transform.init(_wide(p)))


@dataclass(frozen=True)
class Float32Working:
    """A state storage (`gradwise.core.engine.Storage`) that works as `inner` does for a float32 parameter of
    the same shape: the chain gets, and gives back, float32 working state for bfloat16/float16 parameters."""

    inner: Any

    def init(self, p: Tensor, state: State) -> None:
        self.inner.init(_float32_shape_of(p), state)

    def open(self, p: Tensor, state: State) -> State:
        work: State = self.inner.open(_float32_shape_of(p), state)
        return work

    def close(self, p: Tensor, state: State, work: State) -> None:
        self.inner.close(_float32_shape_of(p), state, work)


def _float32_shape_of(p: Tensor) -> Tensor:
    return torch.empty(p.shape, dtype=torch.float32, device="meta") if p.dtype in NARROW else p


def _storage(h: SimpleNamespace) -> Float32Working | None:
    """The `state` option's storage for this group, made to work in float32 (asked before that option's)."""
    if not h.master_weights:
        return None
    from . import STATE  # defined after this module is imported

    inner = STATE.storage(h) if STATE.storage is not None else None
    return None if inner is None else Float32Working(inner)


def _both(group: dict[str, Any]) -> bool:
    return bool(group.get("master_weights") and group.get("stochastic_rounding"))


def _prepare(optimizer: Any, work: Work) -> _Seeds | None:
    return _Seeds(optimizer) if any(_both(group) for group, _ in work) else None


def _wrap(h: SimpleNamespace, chain: tuple[Transform, ...], seeds: _Seeds | None) -> tuple[Transform, ...]:
    if not h.master_weights:
        return chain
    stochastic = bool(getattr(h, "stochastic_rounding", False))
    return (_open(seeds if stochastic else None), *map(_on_master, chain), _close(stochastic))


MASTER_WEIGHTS = EngineOption(
    name="master_weights",
    defaults={"master_weights": False},
    ranges={"master_weights": Flag()},
    prepare=_prepare,
    wrap=_wrap,
    storage=_storage,
)

extend(MASTER_WEIGHTS)
