"""Hyper-parameter ranges: each checks one value and raises an error that names it and the accepted range."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


class Range:
    """Accepted values of one hyper-parameter. `check(name, value)` raises or returns the value."""

    def check(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


def _as_real(name: str, value: Any, accepted: str) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point():
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in {accepted}, got {value!r} ({type(value).__name__})")
    return float(value)


@dataclass(frozen=True)
class Interval(Range):
    """A real number between `low` and `high`; NaN and infinities are always refused."""

    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = True
    high_closed: bool = True

    def describe(self) -> str:
        left = "[" if self.low_closed and math.isfinite(self.low) else "("
        right = "]" if self.high_closed and math.isfinite(self.high) else ")"
        return f"{left}{_fmt(self.low)}, {_fmt(self.high)}{right}"

    def check(self, name: str, value: Any) -> Any:
        x = _as_real(name, value, self.describe())
        ok = math.isfinite(x)
        ok = ok and (x >= self.low if self.low_closed else x > self.low)
        ok = ok and (x <= self.high if self.high_closed else x < self.high)
        if not ok:
            raise ValueError(f"{name}={value!r} is out of range: {name} must be finite and in {self.describe()}")
        return value


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}"


NonNegative = Interval(0.0)
Positive = Interval(0.0, low_closed=False)
Beta = Interval(0.0, 1.0, high_closed=False)
UnitInterval = Interval(0.0, 1.0)


@dataclass(frozen=True)
class Integer(Range):
    """A whole number, at least `low`."""

    low: int = 0

    def describe(self) -> str:
        return f"integers >= {self.low}"

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an integer >= {self.low}, got {value!r} ({type(value).__name__})")
        if value < self.low:
            raise ValueError(f"{name}={value!r} is out of range: {name} must be an integer >= {self.low}")
        return value


@dataclass(frozen=True)
class Betas(Range):
    """A tuple of `n` momentum coefficients, each in [0, 1)."""

    n: int = 2

    def describe(self) -> str:
        return f"a tuple of {self.n} numbers, each in [0, 1)"

    def check(self, name: str, value: Any) -> Any:
        if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != self.n:
            raise ValueError(f"{name}={value!r} is out of range: {name} must be {self.describe()}")
        for i, beta in enumerate(value):
            Beta.check(f"{name}[{i}]", beta)
        return tuple(value)


@dataclass(frozen=True)
class Flag(Range):
    """True or False."""

    def describe(self) -> str:
        return "True or False"

    def check(self, name: str, value: Any) -> Any:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
        return value


@dataclass(frozen=True)
class OneOf(Range):
    """One of a fixed set of values."""

    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        return "one of " + ", ".join(repr(c) for c in self.choices)

    def check(self, name: str, value: Any) -> Any:
        if value not in self.choices:
            raise ValueError(f"{name}={value!r} is not accepted: {name} must be {self.describe()}")
        return value


@dataclass(frozen=True)
class Optional(Range):
    """None, or a value accepted by `inner`."""

    inner: Range = NonNegative

    def describe(self) -> str:
        return f"None or {self.inner.describe()}"

    def check(self, name: str, value: Any) -> Any:
        return value if value is None else self.inner.check(name, value)
