"""Heavy-ball momentum, with dampening and the Nesterov look-ahead, as SGD-style optimizers use it."""

from __future__ import annotations

from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state


def heavy_ball(
    momentum: float,
    dampening: float = 0.0,
    nesterov: bool = False,
    dampen_first_step: bool = True,
    key: str = "momentum_buffer",
) -> Transform:
    """b <- momentum b + (1 - dampening) u;  u <- u + momentum b (Nesterov) or u <- b.

    The buffer b, kept in state[key], starts at zero. With `dampen_first_step=True` the first step is the
    general rule, b_1 = (1 - dampening) u_1: the convention of the AdamP authors' SGDP. With False, the
    first step copies the update undamped, b_1 = u_1: the convention of torch.optim.SGD (which, with
    momentum=0, keeps no buffer at all; express that by leaving this transform out of the chain).
    Polyak, 1964; Nesterov's variant as formulated by Sutskever et al., ICML 2013.
    """

    def coefficients(t: float) -> tuple[bool, float, float]:
        first = t == 1 and not dampen_first_step
        return (first, momentum, 1.0 if first else 1 - dampening)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        first, beta, weight = c
        buf = s[key]
        if first is True:  # eager (a Python bool): the copy itself
            buf.copy_(u)
        else:
            # with a tensor flag, the undamped first step is the general rule with weight 1 on the zero buffer
            buf.mul_(beta).add_(u, alpha=weight)
        # The buffer itself is returned: later transforms never modify u in place (engine contract).
        return u.add(buf, alpha=beta) if nesterov else buf

    return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True,
                            native=("heavy_ball_nesterov" if nesterov else "heavy_ball", key))


def replace_buffer(key: str = "momentum_buffer") -> Transform:
    """state[key] <- u: the buffer carries on from the update as processed so far, not as accumulated.

    The authors' SGDP without Nesterov projects the tensor that is its momentum buffer in place, so the
    buffer it carries into the next step is the projected one; placed after `radial_projection`, this
    transform reproduces that. Passes u on unchanged.
    """

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        if u is not s[key]:
            s[key].copy_(u)
        return u

    return kernel_transform(kernel, elementwise=True)


def dampened(dampening: float) -> Transform:
    """u <- (1 - dampening) u: `heavy_ball`'s buffer when momentum is 0, b = (1 - dampening) u, kept nowhere.

    With momentum 0 the buffer holds only the current update and is never read again; an optimizer may use
    this stateless form instead and spare its step a parameter-sized read and write (the convention of
    torch.optim.SGD, which keeps no buffer without momentum).
    """

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        return u * c[0]

    return kernel_transform(kernel, lambda t: (1 - dampening,), elementwise=True)
