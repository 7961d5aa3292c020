"""The cautious mask, an engine option of every optimizer: step only where the update agrees with the gradient.

With d the direction the optimizer's step subtracts (p <- p - lr d) and g the gradient its chain receives,
    phi = 1[d g > 0];   p <- p - lr d phi numel / (sum(phi) + 1)          (cautious=True)
    p <- p - lr d phi / max(mean(phi), 1e-3)                              (cautious="mean")
The first is the published rule (the authors' C-AdamW and C-Lion); the second, the mean-normalised form
used by timm's `caution` flag, rescales so that the kept coordinates carry the update's size.

The mask acts on the step only, the transform marked `writes=True`: the engine snapshots p before it,
lets it write, and keeps delta = p_after - p_before where delta g < 0 (rescaled as above). Weight decay
and other transforms outside the step stay unmasked, as in the paper's C-AdamW. g is the update that
enters the chain, after clipping and Grokfast when those options are on.

Liang, Chen, Liu & Liu, "Cautious Optimizers: Improving Training with One Line of Code", 2024,
arXiv:2411.16085.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from ..core import OneOf, Transform
from ..core.engine import EngineOption, extend

MEAN_FLOOR = 1e-3


def cautious_mask(delta: Tensor, grad: Tensor, mode: bool | str) -> Tensor:
    """The rescaled mask of the coordinates where the step -delta points along the gradient."""
    mask = (delta * grad < 0).to(delta.dtype)
    if mode == "mean":
        return mask / mask.mean().clamp(min=MEAN_FLOOR)
    return mask * (mask.numel() / (mask.sum() + 1))


def cautious(chain: tuple[Transform, ...], mode: bool | str) -> tuple[Transform, ...]:
    """Mask every step transform (writes=True) of `chain` by the gradient that enters it."""
    if not any(tr.writes for tr in chain):
        raise RuntimeError("cautious: this optimizer's chain marks no step transform (writes=True) to mask")
    seen: dict[str, Tensor] = {}

    def remember(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        seen["grad"] = u
        return u

    def masked(step: Transform) -> Transform:
        def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
            before = p.detach().clone(memory_format=torch.preserve_format)
            out = step.update(u, p, s, t)
            delta = p - before
            p.copy_(before.addcmul_(delta, cautious_mask(delta, seen["grad"], mode)))
            return out

        return Transform(update, step.init, writes=True)

    return (Transform(remember), *(masked(tr) if tr.writes else tr for tr in chain))


def _wrap(h: SimpleNamespace, chain: tuple[Transform, ...], context: None) -> tuple[Transform, ...]:
    if not h.cautious:
        return chain
    return cautious(chain, h.cautious)


CAUTIOUS = EngineOption(
    name="cautious",
    defaults=dict(cautious=False),
    ranges=dict(cautious=OneOf((False, True, "mean"))),
    wrap=_wrap,
)

extend(CAUTIOUS)
