"""Stochastic rounding for bfloat16 parameters: an engine option of every gradwise optimizer.

Per-group hyper-parameter it adds:
  stochastic_rounding (bool, default False): for bfloat16 parameters, the step works on a float32 copy of
    the parameter (the gradient and the bfloat16 or float16 state tensors are read as float32 too) and
    the new parameter is written back rounded stochastically: up or down to one of its two bfloat16
    neighbours, with the probabilities that make the expected result the float32 value. Rounding to
    nearest loses every update smaller than half a bfloat16 step (1/256 of the parameter's magnitude): a
    parameter near 1 trained at lr=1e-3 never moves. Rounded stochastically, such updates add up on
    average. State tensors keep their stored dtype (rounded to nearest); with `state_dtype` or `state_bits`
    the storage reads them as float32 directly, so `state_dtype=torch.float32` keeps float32 moments for
    bfloat16 weights. Parameters of any other dtype are left alone.

The random bits: each bfloat16 parameter draws a seed on its first step, from `torch.initial_seed()` and
its position in the optimizer (so a run seeded with `torch.manual_seed` repeats itself, and the option
draws nothing from torch's global generator), and keeps it in its state as "rounding_seed" (an int, saved
by `state_dict`). Step t seeds a `torch.Generator` with a hash of (seed, t), so a resumed run draws the
same bits as an uninterrupted one.

The bit trick: a float32 whose low 16 bits are zero is a bfloat16. Adding 16 uniform random bits to the
low half of the float32's bits and clearing them rounds the magnitude up with probability (distance to
the lower neighbour) / (gap): the carry into the upper half happens exactly then. It works for either sign
(the bits are sign and magnitude) and across binades; NaN and infinities are rounded to nearest instead.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..core.engine import EngineOption, State, Transform, Work, extend, kernel_transform, no_coefficients
from ..core.validation import Flag

__all__ = ["ROUNDING", "stochastic_round"]

SEED = "rounding_seed"
PARAMETER = "_rounding_parameter"  # the float32 copy, present only during a step
NARROW = "_rounding_narrow_state"  # the stored state tensors a step reads as float32, present only during a step
_MASK64 = (1 << 64) - 1


def stochastic_round(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """`x` (float32) rounded to bfloat16 stochastically: E[result] = x for finite x within bfloat16's range."""
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round expects a float32 tensor, got {x.dtype}")
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    bits = (x.view(torch.int32) + noise).bitwise_and_(-65536)  # -65536 = 0xFFFF0000 as int32
    rounded = bits.view(torch.float32).to(torch.bfloat16)  # exact: the low half is zero
    return torch.where(torch.isfinite(x), rounded, x.to(torch.bfloat16))


def _mix(*values: int) -> int:
    """A 63-bit hash of integers (SplitMix64's finaliser over a running sum), for generator seeds."""
    z = 0
    for value in values:
        z = (z + (value & _MASK64) + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
    return z >> 1


class _Seeds:
    """Per step: the first-step seed of a parameter, from torch.initial_seed() and its position."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.position: dict[int, int] | None = None

    def __call__(self, p: Tensor) -> int:
        if self.position is None:
            params = (q for group in self.optimizer.param_groups for q in group["params"])
            self.position = {id(q): index for index, q in enumerate(params)}
        return _mix(torch.initial_seed(), self.position[id(p)])


def _narrow(key: str, value: object) -> bool:
    return key != "step" and isinstance(value, Tensor) and value.dtype in (torch.bfloat16, torch.float16)


def _open(seeds: _Seeds) -> Transform:
    """Prepended: the float32 copies of the parameter, the update and the narrow state tensors."""

    def init(p: Tensor) -> dict[str, Any]:
        return {SEED: seeds(p)} if p.dtype == torch.bfloat16 else {}

    def kernel(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
        if p.dtype != torch.bfloat16:
            return u
        narrow = {key: value for key, value in s.items() if _narrow(key, value)}
        for key, value in narrow.items():
            s[key] = value.float()
        s[NARROW] = narrow
        s[PARAMETER] = work = p.float()
        if p.grad is None:
            return u.float()
        work.grad = p.grad.float()  # for transforms that read the raw gradient (AdamP's projection test)
        return work.grad if u is p.grad else u.float()

    return kernel_transform(kernel, init=init)


def _step_number(t: float) -> tuple[float]:
    return (t,)


def _close() -> Transform:
    """Appended: state back to its stored tensors (to nearest), the parameter back with stochastic rounding."""

    def kernel(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
        if p.dtype != torch.bfloat16:
            return u
        work = s.pop(PARAMETER)
        for key, stored in s.pop(NARROW).items():
            stored.copy_(s[key])
            s[key] = stored
        write_rounded(p, work, s[SEED], c[0])
        return u

    return kernel_transform(kernel, _step_number)


def write_rounded(p: Tensor, work: Tensor, seed: int, step: Any) -> None:
    """p <- work stochastically rounded, with the parameter's seed mixed with the step number (resumable)."""
    generator = torch.Generator(device=p.device)
    generator.manual_seed(_mix(seed, int(step)))
    p.copy_(stochastic_round(work, generator))


def on_parameter_copy(transform: Transform, key: str, init: Callable[[Tensor], dict[str, Any]] | None = None
                      ) -> Transform:
    """`transform` run on the copy of the parameter kept in the step's state under `key` (the parameter itself
    when there is none), with its state allocated by `init` when given. Shared by this option and
    `gradwise.state.master`."""
    init = init or transform.init
    if transform.kernel is not None:
        inner_kernel = transform.kernel

        def kernel(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
            return inner_kernel(u, s.get(key, p), s, c)

        direction = None
        if transform.direction is not None:  # the cautious mask reads it: keep it, on the copy as well
            inner_direction = transform.direction

            def direction(u: Tensor, p: Tensor, s: State, c: tuple) -> Tensor:
                return inner_direction(u, s.get(key, p), s, c)

        return kernel_transform(kernel, transform.coefficients or no_coefficients, init, writes=transform.writes,
                                direction=direction)
    inner_update = transform.update

    def update(u: Tensor, p: Tensor, s: State, t: float) -> Tensor:
        return inner_update(u, s.get(key, p), s, t)

    return Transform(update, init, transform.writes)


def _on_copy(transform: Transform) -> Transform:
    """The transform run on the float32 copy of a bfloat16 parameter (the parameter itself otherwise)."""
    return on_parameter_copy(transform, PARAMETER)


def _prepare(optimizer: Any, work: Work) -> _Seeds | None:
    return _Seeds(optimizer) if any(group["stochastic_rounding"] for group, _ in work) else None


def _wrap(h: SimpleNamespace, chain: tuple[Transform, ...], seeds: _Seeds | None) -> tuple[Transform, ...]:
    if not h.stochastic_rounding:
        return chain
    return (_open(seeds), *map(_on_copy, chain), _close())  # type: ignore[arg-type]


ROUNDING = EngineOption(
    name="stochastic_rounding",
    defaults={"stochastic_rounding": False},
    ranges={"stochastic_rounding": Flag()},
    prepare=_prepare,
    wrap=_wrap,
)

extend(ROUNDING)
