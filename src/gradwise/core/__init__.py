"""The engine: validation, the chain optimizer, and the registry. Knows no optimizer by name."""

from .engine import (
    NONFINITE_POLICIES,
    ChainOptimizer,
    Transform,
    bias_correction,
    hyper_parameters,
    kernel_transform,
    zeros_state,
)
from .registry import Entry, available, create, entries, get, parameter_groups, register
from .validation import (
    Beta,
    Betas,
    Flag,
    Integer,
    Interval,
    NonNegative,
    OneOf,
    Optional,
    Positive,
    Range,
    UnitInterval,
)

__all__ = [
    "NONFINITE_POLICIES", "Beta", "Betas", "ChainOptimizer", "Entry", "Flag", "Integer", "Interval",
    "NonNegative", "OneOf", "Optional", "Positive", "Range", "Transform", "UnitInterval", "available",
    "bias_correction", "create", "entries", "get", "hyper_parameters", "kernel_transform", "parameter_groups",
    "register",
    "zeros_state",
]
