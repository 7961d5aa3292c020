"""Param groups with a learning rate per parameter: layer-wise decay and multipliers by name.

Both helpers return a list of param groups (dicts with "params" and "lr") for any optimizer, gradwise's or
torch.optim's. They split biases and normalisation weights into groups of their own with
`weight_decay=0.0` (the same split `gradwise.create` makes for a model, via `core.registry.parameter_groups`),
so passing their groups to `create` or to an optimizer keeps that exclusion:

    groups = gw.layerwise_lr_decay(model, lr=1e-3, decay=0.75)
    opt = gw.create("adamw", groups, weight_decay=0.05)   # decayed groups take 0.05, bias/norm groups 0.0

Each group's learning rate is an ordinary "lr", so torch.optim.lr_scheduler schedules scale every group by
the same factor and the ratios between groups hold for the whole run.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .core.registry import no_decay, parameter_groups
from .core.validation import Interval, NonNegative, Optional

Exclude = Callable[[nn.Module, str, torch.Tensor], bool]

__all__ = ["layer_depths", "layerwise_lr_decay", "lr_multipliers", "no_decay_with_embeddings"]


def no_decay_with_embeddings(module: nn.Module, name: str, p: torch.Tensor) -> bool:
    """`no_decay` (biases and normalisation weights) plus embedding tables, as in many language-model recipes."""
    return no_decay(module, name, p) or isinstance(module, nn.Embedding | nn.EmbeddingBag)


def layer_depths(model: nn.Module, blocks: str | None = None) -> dict[str, int]:
    """Each trainable parameter's depth counted from the top of the network: 0 for the output end.

    The network is read as a stack of units, from input to output: the parameters registered before the
    stack of blocks (embeddings, patch projection), each block, and the parameters registered after it
    (final norm, head). A parameter's depth is the number of units above it that hold trainable parameters;
    with a head this gives the ViT/BEiT numbering: head 0, last block 1, ..., embeddings L + 1.

    `blocks` names the `nn.ModuleList` or `nn.Sequential` holding the repeated layers ("blocks",
    "encoder.layer", "transformer.h"); "" is the model itself. Left out, it is the container with the most
    children that hold trainable parameters (the first such, outermost, on a tie).
    """
    named = _trainable(model)
    stack_name = _find_stack(model) if blocks is None else blocks
    stack = _stack_module(model, stack_name)
    prefix = f"{stack_name}." if stack_name else ""
    children = [(name, child) for name, child in stack.named_children() if _has_trainable(child)]
    unit_of_block = {f"{prefix}{name}": index for index, (name, _) in enumerate(children)}
    before, after, block_units = [], [], {}
    for name in named:
        unit = _block_of(name, unit_of_block)
        if unit is not None:
            block_units[name] = unit
        elif block_units:
            after.append(name)
        else:
            before.append(name)
    offset = 1 if before else 0
    top = offset + len(children) - 1 + (1 if after else 0)
    depths = {name: top for name in before}
    depths.update({name: top - (offset + unit) for name, unit in block_units.items()})
    depths.update({name: 0 for name in after})
    return {name: depths[name] for name in named}


def layerwise_lr_decay(
    model: nn.Module,
    lr: float,
    decay: float = 0.75,
    *,
    blocks: str | None = None,
    multipliers: Mapping[str, float] | None = None,
    weight_decay: float | None = None,
    exclude: Exclude = no_decay,
) -> list[dict[str, Any]]:
    """Param groups with `lr * decay ** depth` per parameter, depth counted from the top (`layer_depths`).

    The output layers train at `lr`, each block below at `decay` times the one above, the embeddings at
    `lr * decay ** (L + 1)` for L blocks: layer-wise learning-rate decay as used to fine-tune ViT, BEiT and
    BERT-style encoders. `multipliers` (as in `lr_multipliers`) scale on top of the decay. Parameters for
    which `exclude(module, name, p)` holds get `weight_decay=0.0`; the others get `weight_decay` when given,
    otherwise the optimizer's own default.
    """
    NonNegative.check("lr", lr)
    Interval(0.0, 1.0, low_closed=False).check("decay", decay)
    depths = layer_depths(model, blocks)
    scale_of_name = {name: decay**depth for name, depth in depths.items()}
    if multipliers is not None:
        for name, factor in _multipliers_by_name(model, multipliers).items():
            scale_of_name[name] *= factor
    return _groups(model, lr, scale_of_name, weight_decay, exclude)


def lr_multipliers(
    model: nn.Module,
    multipliers: Mapping[str, float],
    *,
    lr: float,
    weight_decay: float | None = None,
    exclude: Exclude = no_decay,
) -> list[dict[str, Any]]:
    """Param groups with `lr` times a multiplier chosen by the parameter's name.

    `multipliers` maps shell-style patterns (`fnmatch`: "head.*", "embed*", "*.bias") matched against the
    full parameter name ("encoder.0.weight") to a factor; the first matching pattern, in the mapping's
    order, applies and unmatched parameters keep factor 1. A pattern that matches no parameter is an error
    (a typo would otherwise pass silently). Weight decay as in `layerwise_lr_decay`.
    """
    NonNegative.check("lr", lr)
    scale_of_name = {name: 1.0 for name in _trainable(model)}
    scale_of_name.update(_multipliers_by_name(model, multipliers))
    return _groups(model, lr, scale_of_name, weight_decay, exclude)


# -- helpers ----------------------------------------------------------------------------------------------
def _trainable(model: nn.Module) -> list[str]:
    """Names of the trainable parameters, each tensor once (the first name of a shared one)."""
    return [name for name, p in model.named_parameters() if p.requires_grad]


def _has_trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _find_stack(model: nn.Module) -> str:
    best, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList | nn.Sequential):
            count = sum(_has_trainable(child) for child in module.children())
            if count > best_count:
                best, best_count = name, count
    if best is None:
        raise ValueError(
            "blocks=None: found no nn.ModuleList or nn.Sequential holding trainable layers in "
            f"{type(model).__name__}; pass blocks='name' of the module that holds the repeated layers"
        )
    return best


def _stack_module(model: nn.Module, name: str) -> nn.Module:
    if not isinstance(name, str):
        raise TypeError(f"blocks must be a module name (str) or None, got {name!r} ({type(name).__name__})")
    try:
        module = model.get_submodule(name)
    except AttributeError:
        containers = [n for n, m in model.named_modules() if n and isinstance(m, nn.ModuleList | nn.Sequential)]
        raise ValueError(
            f"blocks={name!r} is not a submodule of {type(model).__name__}; containers it has: "
            f"{', '.join(containers) or 'none'}"
        ) from None
    if not any(_has_trainable(child) for child in module.children()):
        raise ValueError(f"blocks={name!r} has no children with trainable parameters")
    return module


def _block_of(name: str, unit_of_block: dict[str, int]) -> int | None:
    for block, unit in unit_of_block.items():
        if name.startswith(block + "."):
            return unit
    return None


def _multipliers_by_name(model: nn.Module, multipliers: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(multipliers, Mapping):
        raise TypeError(
            f"multipliers must be a mapping from name pattern to factor, got {type(multipliers).__name__}"
        )
    for pattern, factor in multipliers.items():
        if not isinstance(pattern, str):
            raise TypeError(f"multipliers: pattern {pattern!r} must be a str (an fnmatch pattern)")
        NonNegative.check(f"multipliers[{pattern!r}]", factor)
    names = _trainable(model)
    chosen: dict[str, float] = {}
    for pattern, factor in multipliers.items():
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise ValueError(
                f"multipliers[{pattern!r}] matches no trainable parameter of {type(model).__name__}; "
                f"names look like: {', '.join(names[:4])}"
            )
        for name in hits:
            chosen.setdefault(name, float(factor))
    return chosen


def _groups(
    model: nn.Module, lr: float, scale_of_name: dict[str, float], weight_decay: float | None, exclude: Exclude
) -> list[dict[str, Any]]:
    """Cut the decayed / not-decayed split of `parameter_groups` by learning rate, in model order."""
    Optional(NonNegative).check("weight_decay", weight_decay)
    scale_of_param = {id(p): scale_of_name[name] for name, p in model.named_parameters() if name in scale_of_name}
    groups: list[dict[str, Any]] = []
    for split in parameter_groups(model, weight_decay, exclude):
        # the decayed split carries weight_decay=None when none was given: the key is left out, so the
        # optimizer's own default applies; any other key of the split is kept
        settings = {k: v for k, v in split.items() if k != "params" and not (k == "weight_decay" and v is None)}
        by_scale: dict[float, dict[str, Any]] = {}
        for p in split["params"]:
            scale = scale_of_param[id(p)]
            if scale not in by_scale:
                by_scale[scale] = {"params": [], **settings, "lr": lr * scale}
            by_scale[scale]["params"].append(p)
        groups.extend(by_scale.values())
    return groups
