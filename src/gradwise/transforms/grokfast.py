"""Grokfast, an engine option of every optimizer: amplify the slow component of the gradient.

    g <- g + lamb * filter(g)
grokfast="ema": filter(g)_t = alpha filter_{t-1} + (1 - alpha) g_t, started at the first gradient
    (defaults alpha=0.98, lamb=2.0, the authors' gradfilter_ema);
grokfast="ma": the mean of the last `window` gradients, applied only once the window is full
    (defaults window=100, lamb=5.0, the authors' gradfilter_ma with warmup=True).
grokfast_lamb=None takes the authors' default of the chosen filter. The filter runs before the
optimizer's chain (after clipping), on the update the chain receives; p.grad is left as it was. Its state
lives in the parameter's state ("grokfast_ema"; "grokfast_ma" with a step count "grokfast_ma_count"), so it
is saved and restored with the optimizer's state_dict. The moving average keeps `window` copies of each
parameter's gradient.

Lee, Kang, Lee, Kim, Kim & Lee, "Grokfast: Accelerated Grokking by Amplifying Slow Gradients", 2024,
arXiv:2405.20233.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor

from ..core import Beta, Integer, NonNegative, OneOf, Optional, Transform
from ..core.engine import EngineOption, extend

DEFAULT_LAMB = {"ema": 2.0, "ma": 5.0}


def grokfast_ema(alpha: float, lamb: float, key: str = "grokfast_ema") -> Transform:
    """e <- alpha e + (1 - alpha) u (e starts at the first u);  u <- u + lamb e."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        if key not in s:
            s[key] = u.detach().clone(memory_format=torch.preserve_format)
        ema = s[key]
        ema.mul_(alpha).add_(u * (1 - alpha))
        return u + ema * lamb

    return Transform(update)


def grokfast_ma(window: int, lamb: float, key: str = "grokfast_ma", count: str = "grokfast_ma_count") -> Transform:
    """Keep the last `window` values of u;  once there are `window` of them, u <- u + lamb * their mean."""

    def update(u: Tensor, p: Tensor, s: dict, t: float) -> Tensor:
        if key not in s or s[key].shape[0] != window:
            s[key] = torch.zeros((window, *u.shape), dtype=u.dtype, device=u.device)
            s[count] = torch.tensor(0, dtype=torch.int64)
        n = int(s[count])
        buf = s[key]
        buf[n % window].copy_(u)
        n += 1
        s[count] = torch.tensor(n, dtype=torch.int64)
        if n < window:
            return u
        total = buf[n % window].clone()  # oldest first, the order of the authors' sum over their deque
        for i in range(1, window):
            total.add_(buf[(n + i) % window])
        return u + total / window * lamb

    return Transform(update)


def _wrap(h: SimpleNamespace, chain: tuple[Transform, ...], context: None) -> tuple[Transform, ...]:
    if h.grokfast is None:
        return chain
    lamb = DEFAULT_LAMB[h.grokfast] if h.grokfast_lamb is None else h.grokfast_lamb
    if h.grokfast == "ema":
        return (grokfast_ema(h.grokfast_alpha, lamb), *chain)
    return (grokfast_ma(h.grokfast_window, lamb), *chain)


GROKFAST = EngineOption(
    name="grokfast",
    defaults=dict(grokfast=None, grokfast_alpha=0.98, grokfast_lamb=None, grokfast_window=100),
    ranges=dict(
        grokfast=OneOf((None, "ema", "ma")),
        grokfast_alpha=Beta,
        grokfast_lamb=Optional(NonNegative),
        grokfast_window=Integer(1),
    ),
    wrap=_wrap,
)

extend(GROKFAST)
