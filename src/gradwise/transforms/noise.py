"""Langevin noise and friction: the transforms that turn a descent method into a posterior sampler.

Each transform here draws standard normal noise xi for its parameter with `gaussian_like`: from torch's
global generator by default, or from the `torch.Generator` passed in (it must live on the parameter's
device). Draws happen in the order the engine visits parameters (param groups in order, parameters in
order), one draw of the parameter's shape per parameter per step, so a seeded generator gives a
reproducible chain.

The generator is part of each kernel's structure (it never changes during a run); every number is a
coefficient. With `drawn` (a state key) a kernel draws nothing itself: it reads xi from state[drawn], which the
caller filled before the step (the samplers do so under compile with a generator, see
`gradwise.optim.langevin.LangevinSampler`), and may overwrite it. The kernels are elementwise: each element
gets its own independent draw, although the stream of draws over a flat buffer of several parameters is not
the concatenation of their separate streams.

The gradient u these transforms receive must be the gradient of the full-data negative log posterior
U(theta) = -log p(theta) - sum_i log p(x_i | theta) (see `gradwise.sampling.collect.neg_log_posterior`):
the injected noise is calibrated against that scale.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core import Transform, kernel_transform, zeros_state


def gaussian_like(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A tensor of independent N(0, 1) draws with p's shape, dtype and device."""
    if generator is None:  # no generator argument at all: torch.compile traces randn without one
        return torch.randn(p.shape, dtype=p.dtype, device=p.device)
    return torch.randn(p.shape, generator=generator, dtype=p.dtype, device=p.device)


def _draw(p: Tensor, s: dict, generator: torch.Generator | None, drawn: str | None) -> Tensor:
    """This step's xi for p: state[drawn] (filled before the step, and free to be overwritten) or a fresh draw."""
    return s[drawn] if drawn is not None else gaussian_like(p, generator)


def langevin_step(
    lr: float, temperature: float = 1.0, generator: torch.Generator | None = None, drawn: str | None = None
) -> Transform:
    """p <- p - lr u + sqrt(2 lr T) xi, xi ~ N(0, I): an Euler-Maruyama step of overdamped Langevin dynamics.

    Its stationary distribution (as lr -> 0, with exact gradients) is proportional to exp(-U / T).
    """
    scale = math.sqrt(2.0 * lr * temperature)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        noise = _draw(p, s, generator, drawn)
        p.add_(u, alpha=c[0]).add_(noise, alpha=c[1])
        return u

    return kernel_transform(kernel, lambda t: (-lr, scale), writes=True, elementwise=True)


def preconditioned_langevin_step(
    lr: float,
    temperature: float,
    eps: float,
    generator: torch.Generator | None = None,
    second: str = "square_avg",
    drawn: str | None = None,
) -> Transform:
    """G = 1 / (eps + sqrt(v));  p <- p - lr G u + sqrt(2 lr T G) xi, with v read from state[second].

    The diagonal preconditioner of pSGLD (Li et al., 2016), v the RMSprop average of squared gradients.
    The correction term Gamma(theta) = sum_j dG_ij / dtheta_j of the exact preconditioned dynamics is
    left out (see `gradwise.optim.langevin.PSGLD`).
    """

    def coefficients(t: float) -> tuple[float, float, float]:
        return (eps, math.sqrt(2.0 * lr * temperature), -lr)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        precondition = s[second].sqrt().add_(c[0]).reciprocal_()
        noise = _draw(p, s, generator, drawn).mul_(precondition.sqrt()).mul_(c[1])
        p.addcmul_(precondition, u, value=c[2]).add_(noise)
        return u

    return kernel_transform(kernel, coefficients, writes=True, elementwise=True)


def sghmc_friction(
    lr: float,
    friction: float,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    noise_estimate: tuple[str, str, float] | None = None,
    key: str = "momentum_buffer",
    drawn: str | None = None,
) -> Transform:
    """b <- (1 - friction) b + lr u - N(0, 2 lr max(friction T - beta_hat, 0));  returns b.

    The momentum of SGHMC (Chen et al., 2014) in their (eta, alpha) form, with eta = lr and
    alpha = friction, kept as b = -v so that the step p <- p - b (`sgd_step(1.0)`) completes it.
    beta_hat = lr V / 2 is the part of the diffusion the stochastic gradient already supplies, V its
    variance. Without `noise_estimate` beta_hat = 0. With `noise_estimate = (mean_key, sq_key, decay)`,
    V = max(m2 / c - (m1 / c)^2, 0) per coordinate, from EMAs m1 of u and m2 of u^2 (state[mean_key],
    state[sq_key], maintained by earlier transforms with coefficient `decay`), c = 1 - decay^t.
    """
    if noise_estimate is None:

        def coefficients(t: float) -> tuple[float, ...]:
            return (math.sqrt(2.0 * lr * friction * temperature), 1.0 - friction, lr)

        def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
            noise = _draw(p, s, generator, drawn).mul_(c[0])
            s[key].mul_(c[1]).add_(u, alpha=c[2]).sub_(noise)  # b = -v exactly, noise included
            return s[key]

        return kernel_transform(kernel, coefficients, zeros_state(key), elementwise=True)

    mean_key, sq_key, decay = noise_estimate

    def estimated_coefficients(t: float) -> tuple[float, ...]:
        return (1.0 - decay**t, 0.5 * lr, friction * temperature, 2.0 * lr, 1.0 - friction, lr)

    def estimated_kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        correction, half_lr, friction_t, two_lr, keep, step = c
        noise = _draw(p, s, generator, drawn)
        variance = (s[sq_key] / correction).sub_((s[mean_key] / correction).square_()).clamp_(min=0.0)
        beta_hat = variance.mul_(half_lr)
        noise.mul_(beta_hat.neg_().add_(friction_t).clamp_(min=0.0).mul_(two_lr).sqrt_())
        s[key].mul_(keep).add_(u, alpha=step).sub_(noise)  # b = -v exactly, noise included
        return s[key]

    return kernel_transform(estimated_kernel, estimated_coefficients, zeros_state(key), elementwise=True)
