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

from ..core import Beta, Integer, NonNegative, OneOf, Optional, Transform, kernel_transform
from ..core.engine import EngineOption, extend

DEFAULT_LAMB = {"ema": 2.0, "ma": 5.0}


def grokfast_ema(alpha: float, lamb: float, key: str = "grokfast_ema") -> Transform:
    """e <- alpha e + (1 - alpha) u (e starts at the first u);  u <- u + lamb e.

    e is allocated by the kernel, as a copy of u, the first time it runs for a parameter: at the parameter's
    first step, or at its first step after the filter is switched on mid-run (the authors' rule either
    way). It has no `init`, so the engine's state growth (a chain that gains state mid-run) never hands it a
    zero average. Compiled, the first call adds the key to the state and the flat buffers gather again.
    """

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        keep, weight, gain = c
        if key not in s:  # a structural check (the state's keys), not a number
            s[key] = u.detach().clone(memory_format=torch.preserve_format)
        ema = s[key]
        ema.mul_(keep).add_(u * weight)
        return u + ema * gain

    return kernel_transform(kernel, lambda t: (alpha, 1 - alpha, lamb), elementwise=True)


def grokfast_ma(window: int, lamb: float, key: str = "grokfast_ma", count: str = "grokfast_ma_count") -> Transform:
    """Keep the last `window` values of u;  once there are `window` of them, u <- u + lamb * their mean.

    The window is structural (it sizes the state). The values sit in a ring indexed by the count of updates
    seen, state[count]: with a Python coefficient (eager) the kernel reads the count on the host and sums
    only once the window is full; with a tensor coefficient (compiled) it indexes with the count as a
    tensor, sums every step and selects with torch.where. Both sum oldest first.
    """

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        if key not in s or s[key].shape[0] != window:  # structural: first use, or a new window length
            s[key] = torch.zeros((window, *u.shape), dtype=u.dtype, device=u.device)
            s[count] = torch.tensor(0, dtype=torch.int64)
        if not isinstance(c[0], Tensor):
            return _moving_average_host(u, s[key], s, count, window, c[0])
        buf, n = s[key], s[count]
        buf.index_copy_(0, (n % window).to(buf.device).reshape(1), u.unsqueeze(0))
        n.add_(1)
        order = (n.to(buf.device) + torch.arange(window, device=buf.device)) % window
        rows = buf.index_select(0, order)  # oldest first, the order of the authors' sum over their deque
        total = rows[0].clone()
        for i in range(1, window):
            total.add_(rows[i])
        return torch.where(n.to(u.device) >= window, u + total / window * c[0], u)

    return kernel_transform(kernel, lambda t: (lamb,))


def _moving_average_host(u: Tensor, buf: Tensor, s: dict, count: str, window: int, lamb: float) -> Tensor:
    n = int(s[count])
    buf[n % window].copy_(u)
    n += 1
    s[count] = torch.tensor(n, dtype=torch.int64)
    if n < window:
        return u
    total = buf[n % window].clone()  # oldest first, the order of the authors' sum over their deque
    for i in range(1, window):
        total.add_(buf[(n + i) % window])
    return u + total / window * lamb


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
