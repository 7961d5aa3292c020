"""The registry of optimizers by name, and `create`, the factory that builds one for a model."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import required

from .engine import unknown_argument_message
from .validation import Interval


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


Exclude = Callable[[nn.Module, str, torch.Tensor], bool]
StateBitsExclude = str | re.Pattern | type | Exclude | Iterable[str | re.Pattern | type | Exclude]

FULL_STATE = {"state_bits": 32, "state_dtype": None}  # what state_bits_exclude gives the parameters it matches


def parameter_groups(
    model: nn.Module,
    weight_decay: float | None,
    exclude: Exclude | None = no_decay,
    *,
    state_bits_exclude: StateBitsExclude | None = None,
) -> list[dict[str, Any]]:
    """Split a model's trainable parameters into a decayed group and a group without weight decay.

    The parameters for which `exclude(module, name, p)` holds (by default `no_decay`: biases and
    normalisation weights) go in the group with `weight_decay=0.0`, the others in the group with
    `weight_decay`. `exclude=None` makes no such split and sets no weight decay. `state_bits_exclude`
    (see `create`) splits each group again: the parameters it matches go in a group of their own with
    full-precision state (`state_bits=32, state_dtype=None`).
    Empty groups are left out; parameters keep the model's order within each group.
    """
    full_state = _state_bits_matcher(model, state_bits_exclude)
    buckets: dict[tuple[bool, bool], list[torch.Tensor]] = {}
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            plain = exclude is not None and exclude(module, name, p)
            full = full_state(module, f"{prefix}.{name}" if prefix else name, name, p)
            buckets.setdefault((plain, full), []).append(p)
    groups = []
    for plain, full in ((False, False), (False, True), (True, False), (True, True)):
        if (plain, full) not in buckets:
            continue
        group: dict[str, Any] = {"params": buckets[plain, full]}
        if exclude is not None:
            group["weight_decay"] = 0.0 if plain else weight_decay
        if full:
            group.update(FULL_STATE)
        groups.append(group)
    return groups


def _state_bits_matcher(
    model: nn.Module, rules: StateBitsExclude | None
) -> Callable[[nn.Module, str, str, torch.Tensor], bool]:
    """One predicate (module, full name, local name, p) from the rules of `state_bits_exclude`."""
    if rules is None:
        return lambda module, full_name, name, p: False
    if isinstance(rules, str | re.Pattern | type) or not isinstance(rules, Iterable):
        rules = [rules]
    tests = []
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    for rule in rules:
        if isinstance(rule, str):
            test = functools.partial(lambda pattern, full_name: fnmatch.fnmatchcase(full_name, pattern), rule)
        elif isinstance(rule, re.Pattern):
            test = functools.partial(lambda pattern, full_name: pattern.search(full_name) is not None, rule)
        elif isinstance(rule, type) and issubclass(rule, nn.Module):
            tests.append(functools.partial(lambda kind, module, full_name, name, p: isinstance(module, kind), rule))
            continue
        elif callable(rule) and not isinstance(rule, type):
            tests.append(functools.partial(lambda f, module, full_name, name, p: bool(f(module, name, p)), rule))
            continue
        else:
            raise TypeError(
                f"state_bits_exclude: {rule!r} is not accepted; give a name pattern (fnmatch str), a compiled "
                "regular expression, an nn.Module subclass, a function (module, name, p) -> bool, or a list of these"
            )
        if not any(test(name) for name in names):
            raise ValueError(
                f"state_bits_exclude: {rule.pattern if isinstance(rule, re.Pattern) else rule!r} matches no "
                f"trainable parameter of {type(model).__name__}; names look like: {', '.join(names[:4])}"
            )
        tests.append(functools.partial(lambda match, module, full_name, name, p: match(full_name), test))
    return lambda module, full_name, name, p: any(t(module, full_name, name, p) for t in tests)


def create(
    name: str,
    model_or_params: nn.Module | Iterable[Any],
    *,
    state_bits_exclude: StateBitsExclude | None = None,
    layer_decay: float | None = None,
    **hyper: Any,
) -> torch.optim.Optimizer:
    """Build the optimizer registered as `name`.

    Given an `nn.Module`, biases and normalisation weights go in a group without weight decay; given
    parameters or param groups, they are passed on unchanged. Unknown hyper-parameters raise a TypeError
    that lists the accepted ones.

    `state_bits_exclude` (a model only) keeps full-precision optimizer state (state_bits=32, no state_dtype)
    for the parameters it matches while the others take `state_bits=8` or `state_dtype`: one rule or a list
    of them, each a shell-style pattern matched against the full parameter name ("embed.*", "*.embedding.*";
    a pattern that matches nothing is an error), a compiled regular expression (`re.search` on the name),
    an `nn.Module` subclass (every parameter registered directly on a module of that type) or a function
    `(module, name, p) -> bool` as for weight decay. The matched parameters get param groups of their own.

    The stable-embedding recipe of Dettmers et al. (2022, "8-bit Optimizers via Block-wise Quantization"):
    token embeddings see a few rows of large, rare gradients per step, which 8-bit block-wise
    state represents poorly; the paper keeps their optimizer state in 32 bits (and, in its StableEmbedding
    layer, adds Xavier-uniform initialisation and a layer norm after the lookup: model changes left to the
    user). With gradwise:

        opt = gw.create("adamw", model, lr=1e-3, weight_decay=0.1, state_bits=8,
                        state_bits_exclude=torch.nn.Embedding)       # or "embed.*", or a list of rules

    `layer_decay` (a model only, in (0, 1]) gives each parameter the learning rate `lr * layer_decay ** depth`,
    depth counted from the output end (head 0, last block 1, ..., embeddings L + 1): the groups of
    `gradwise.layerwise_lr_decay(model, lr, layer_decay)`, with the stack of blocks found as it finds it (call
    that function with `blocks=` for a model where it guesses wrong). The weight-decay split and
    `state_bits_exclude` apply within each learning rate:

        opt = gw.create("adamw", vit, lr=1e-3, weight_decay=0.05, layer_decay=0.75)
    """
    e = entry(name)
    accepted = [k for k in _signature_names(e.cls) if k != "params"]
    for key in hyper:
        if key not in accepted:
            raise TypeError(unknown_argument_message(f"{e.cls.__name__} ({name!r})", key, accepted))
    kwargs = {**e.preset, **hyper}
    if layer_decay is not None and not isinstance(model_or_params, nn.Module):
        raise TypeError(
            "layer_decay needs the model (an nn.Module) to find its layers; got "
            f"{type(model_or_params).__name__}. With parameters or param groups, build the groups with "
            "gradwise.layerwise_lr_decay(model, lr, decay) instead"
        )
    params: Any
    if isinstance(model_or_params, nn.Module):
        wd = kwargs.get("weight_decay", _default_of(e.cls, "weight_decay"))
        if layer_decay is not None:
            params = _layer_decay_groups(e, model_or_params, kwargs, layer_decay, wd, state_bits_exclude)
        elif wd or state_bits_exclude is not None:
            params = parameter_groups(
                model_or_params, wd, no_decay if wd else None, state_bits_exclude=state_bits_exclude
            )
        else:
            params = [p for p in model_or_params.parameters() if p.requires_grad]
    elif state_bits_exclude is not None:
        raise TypeError(
            "state_bits_exclude needs the model (an nn.Module) to match parameter names and module types; "
            f"got {type(model_or_params).__name__}. With parameters or param groups, put the parameters to "
            "keep in full precision in a group with state_bits=32"
        )
    else:
        params = model_or_params
    return e.cls(params, **kwargs)


def _layer_decay_groups(
    e: Entry,
    model: nn.Module,
    kwargs: dict[str, Any],
    layer_decay: float,
    weight_decay: Any,
    state_bits_exclude: StateBitsExclude | None,
) -> list[dict[str, Any]]:
    """`create(..., layer_decay=)`: the groups of `layerwise_lr_decay`, each split again by `state_bits_exclude`."""
    from ..param_groups import layerwise_lr_decay  # param_groups builds on this module

    Interval(0.0, 1.0, low_closed=False).check("layer_decay", layer_decay)
    lr = kwargs.get("lr", _default_of(e.cls, "lr"))
    if lr is None or lr is inspect.Parameter.empty or lr is required:
        raise TypeError(f"layer_decay scales the learning rate: {e.cls.__name__} ({e.name!r}) needs lr=...")
    groups = layerwise_lr_decay(model, lr, layer_decay, weight_decay=weight_decay if weight_decay else None)
    if not weight_decay:  # no decay asked for: the split keeps its learning rates but sets no weight_decay
        groups = [{k: v for k, v in group.items() if k != "weight_decay"} for group in groups]
    if state_bits_exclude is None:
        return groups
    matches = _state_bits_matcher(model, state_bits_exclude)
    full = {
        id(p)
        for prefix, module in model.named_modules()
        for name, p in module.named_parameters(recurse=False)
        if matches(module, f"{prefix}.{name}" if prefix else name, name, p)
    }
    split = []
    for group in groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        for keep_full in (False, True):
            members = [p for p in group["params"] if (id(p) in full) == keep_full]
            if members:
                split.append({**settings, "params": members, **(FULL_STATE if keep_full else {})})
    return split


def _signature_names(cls: type) -> list[str]:
    return list(inspect.signature(cls).parameters)


def _default_of(cls: type, key: str) -> Any:
    parameter = inspect.signature(cls).parameters.get(key)
    return None if parameter is None else parameter.default
