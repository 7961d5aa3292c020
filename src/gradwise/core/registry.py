"""The registry of optimizers by name, and `create`, the factory that builds one for a model."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .engine import unknown_argument_message


@dataclass(frozen=True)
class Entry:
    """A registered name: the class, the arguments that make this variant, and where it comes from."""

    name: str
    cls: type[torch.optim.Optimizer]
    paper: str
    year: int
    oracle: str
    preset: dict[str, Any] = field(default_factory=dict)
    kind: str = "optimizer"  # or "sampler": draws from a distribution instead of minimising


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str,
    *,
    paper: str,
    year: int,
    oracle: str,
    preset: dict[str, Any] | None = None,
    kind: str = "optimizer",
) -> Callable[[type], type]:
    """Class decorator: make an optimizer reachable by `name` in `create`, `get` and `available`.

    `preset` registers a variant (for example "amsgrad" flags) under its own name; `kind` is "optimizer"
    or "sampler" (stochastic-gradient MCMC: it samples a posterior rather than minimising a loss).
    """
    if kind not in ("optimizer", "sampler"):
        raise ValueError(f"kind={kind!r} is not accepted: kind must be 'optimizer' or 'sampler'")

    def decorate(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"optimizer name {name!r} is already registered by {_REGISTRY[name].cls.__name__}")
        _REGISTRY[name] = Entry(name, cls, paper, year, oracle, dict(preset or {}), kind)
        return cls

    return decorate


def entry(name: str) -> Entry:
    key = name.lower()
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r}.{hint} Available: {', '.join(available())}")
    return _REGISTRY[key]


def get(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered under `name`."""
    return entry(name).cls


def available() -> list[str]:
    """The registered optimizer names, sorted."""
    return sorted(_REGISTRY)


def entries() -> list[Entry]:
    return [_REGISTRY[name] for name in available()]


NORM_LAYERS = (
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def no_decay(module: nn.Module, name: str, p: torch.Tensor) -> bool:
    """True for the parameters that conventionally get no weight decay: biases and normalisation weights."""
    return name == "bias" or isinstance(module, NORM_LAYERS)


def parameter_groups(
    model: nn.Module, weight_decay: float, exclude: Callable[[nn.Module, str, torch.Tensor], bool] = no_decay
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into a decayed group and a group without weight decay."""
    decay, plain, seen = [], [], set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (plain if exclude(module, name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def create(
    name: str, model_or_params: nn.Module | Iterable[Any], **hyper: Any
) -> torch.optim.Optimizer:
    """Build the optimizer registered as `name`.

    Given an `nn.Module`, biases and normalisation weights go in a group without weight decay; given
    parameters or param groups, they are passed on unchanged. Unknown hyper-parameters raise a TypeError
    that lists the accepted ones.
    """
    e = entry(name)
    accepted = [k for k in _signature_names(e.cls) if k != "params"]
    for key in hyper:
        if key not in accepted:
            raise TypeError(unknown_argument_message(f"{e.cls.__name__} ({name!r})", key, accepted))
    kwargs = {**e.preset, **hyper}
    if isinstance(model_or_params, nn.Module):
        wd = kwargs.get("weight_decay", _default_of(e.cls, "weight_decay"))
        if wd:
            params: Any = parameter_groups(model_or_params, wd)
        else:
            params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = model_or_params
    return e.cls(params, **kwargs)


def _signature_names(cls: type) -> list[str]:
    return list(inspect.signature(cls).parameters)


def _default_of(cls: type, key: str) -> Any:
    parameter = inspect.signature(cls).parameters.get(key)
    return None if parameter is None else parameter.default
