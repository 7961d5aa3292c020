"""Learning-rate scaling at initialisation by the gradient signal-to-noise ratio (SGD-SaI)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import Transform, kernel_transform
from ..core.segments import segment_value


def gradient_snr(g: Tensor, eps: float) -> Tensor:
    """g-SNR = ||g|| / (std(g) + eps), over the elements of one tensor (0-dim, g's dtype).

    std is the unbiased standard deviation; a one-element tensor has none (NaN), which counts as 0, so its
    g-SNR is |g| / eps: the convention of the SGD-SaI authors' code.
    """
    sigma = g.std().nan_to_num() if g.numel() > 1 else g.new_zeros(())
    return torch.linalg.vector_norm(g) / (sigma + eps)


def snr_scaled_step(lr: float, eps: float, key: str = "gsnr") -> Transform:
    """p <- p - lr gsnr u, with gsnr = gradient_snr(g_1) fixed at the parameter's first step.

    The scale is computed once, when the engine allocates the parameter's state (its first step with a
    gradient), from that gradient p.grad, and kept in state[key]; every later step reuses it. g-SNR is
    unchanged by the gradient's sign and scale, so `maximize`, norm clipping and Grokfast's first step
    (which multiplies g_1 by 1 + lamb) do not change it.
    """

    def init(p: Tensor) -> dict[str, Tensor]:
        if p.grad is None:
            raise RuntimeError("snr_scaled_step needs the parameter's gradient when its state is allocated")
        return {key: gradient_snr(p.grad.detach(), eps).to(p.dtype)}

    def coefficients(t: float) -> tuple[float]:
        return (-lr,)

    def kernel(u: Tensor, p: Tensor, s: dict, c: tuple) -> Tensor:
        p.addcmul_(u, segment_value(s[key], u, s), value=c[0])
        return u

    # on the flat path s[key] is a column of one gsnr per parameter (gradwise.core.segments)
    return kernel_transform(kernel, coefficients, init, writes=True, segmented=True)
