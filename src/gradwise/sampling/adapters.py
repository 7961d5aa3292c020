"""Adapters that turn common diffusion-model outputs into the EDM denoiser `D(x, sigma) -> x0 estimate`.

Conventions. The samplers work on x = x_0 + sigma * eps (variance exploding, "VE"). A variance-preserving
(VP) model sees z = alpha * x_0 + s * eps with alpha = 1 / sqrt(1 + sigma^2) and s = sigma * alpha, so
z = alpha * x. From the model's prediction:
  epsilon:  x_0 = x - sigma * eps
  v:        v = alpha * eps - s * x_0  =>  x_0 = alpha * z - s * v = x / (1 + sigma^2) - sigma alpha v
  sample:   x_0 is the prediction itself.
`sigma` reaching a denoiser is a tensor of x's dtype and device, either 0-d or broadcastable against x
(shape (B, 1, ..., 1), used by the "adaptive" sampler whose samples carry their own noise levels).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_PREDICTIONS = ("epsilon", "v", "sample")


def _x0_from_prediction(prediction: str, x: torch.Tensor, sigma: torch.Tensor,
                        out: torch.Tensor) -> torch.Tensor:
    if prediction == "epsilon":
        return x - sigma * out
    if prediction == "v":
        alpha = torch.rsqrt(1 + sigma * sigma)
        return x * alpha * alpha - sigma * alpha * out
    return out


def _check_prediction(prediction: str) -> str:
    if prediction not in _PREDICTIONS:
        raise ValueError(f"prediction={prediction!r} is not one of {_PREDICTIONS}")
    return prediction


def prediction_denoiser(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        prediction: str = "epsilon", scale_input: bool = True) -> Denoiser:
    """Wrap `model(input, sigma)` predicting epsilon, v or x_0 as an EDM denoiser.

    With `scale_input` the model receives the VP-scaled input z = x / sqrt(1 + sigma^2) (how VP models are
    trained); without, it receives x itself (a VE model such as NCSN++ with epsilon output).
    """
    _check_prediction(prediction)

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        inp = x * torch.rsqrt(1 + sigma * sigma) if scale_input else x
        return _x0_from_prediction(prediction, x, sigma, model(inp, sigma))

    return denoiser


def sigma_to_timestep(sigma: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Continuous timestep t of a discrete VP schedule with sigma_t = sigma, by linear interpolation of
    log sigma between the two neighbouring training timesteps (clamped to [0, T - 1])."""
    log_sigmas = (0.5 * torch.log((1 - alphas_cumprod) / alphas_cumprod)).to(sigma.device, torch.float64)
    log_sigma = torch.log(sigma.to(torch.float64).clamp_min(1e-10))
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1).contiguous()).clamp(1, log_sigmas.numel() - 1)
    low = high - 1
    w = ((log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
    return (low + w).reshape(sigma.shape)


def vp_discrete_denoiser(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                         alphas_cumprod: torch.Tensor, prediction: str = "epsilon",
                         round_timesteps: bool = False) -> Denoiser:
    """Wrap a discrete-time VP model `model(z, t)` (DDPM/LDM style: z = sqrt(alpha_bar_t) x_0 +
    sqrt(1 - alpha_bar_t) eps, t in [0, T)) as an EDM denoiser.

    sigma maps to t through `sigma_to_timestep` (interpolating log sigma over the training schedule, so a
    sigma from `vp_sigmas` gives back its integer timestep); `round_timesteps` rounds t to the nearest
    integer for models that only accept integer timesteps. `alphas_cumprod` must increase in sigma, i.e.
    decrease in t, as a DDPM's does.
    """
    _check_prediction(prediction)
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if alphas_cumprod.ndim != 1 or not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()):
        raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1)")

    def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = sigma_to_timestep(sigma, alphas_cumprod)
        t = t.round() if round_timesteps else t
        inp = x * torch.rsqrt(1 + sigma * sigma)
        return _x0_from_prediction(prediction, x, sigma, model(inp, t.to(x.dtype)))

    return denoiser
