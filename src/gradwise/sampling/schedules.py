"""Noise-level schedules: functions that return the decreasing sigmas to pass to `sample`.

Every schedule speaks the EDM parametrisation x_sigma = x_0 + sigma * noise. Each returns a float64 CPU
tensor of `n + 1` values, the `n` positive noise levels in strictly decreasing order followed by a final 0
(`append_zero=False` leaves it out). Conversions to a variance-preserving (VP) model use
alpha_bar = 1 / (1 + sigma^2), i.e. sigma = sqrt((1 - alpha_bar) / alpha_bar).
"""

from __future__ import annotations

import math

import torch

from ..core.validation import Interval

_Positive = Interval(0.0, math.inf, low_closed=False)
_Count = Interval(1, math.inf)


def _check_count(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{name} must be an int >= 1, got {n!r} ({type(n).__name__})")
    if n < 1:
        raise ValueError(f"{name}={n!r} is out of range: {name} must be an int >= 1")
    return n


def _check_bounds(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    _Positive.check("sigma_min", sigma_min)
    _Positive.check("sigma_max", sigma_max)
    if not sigma_max > sigma_min:
        raise ValueError(f"sigma_max={sigma_max!r} must be greater than sigma_min={sigma_min!r}")
    return float(sigma_min), float(sigma_max)


def _finish(sigmas: torch.Tensor, append_zero: bool) -> torch.Tensor:
    sigmas = sigmas.to(torch.float64)
    return torch.cat([sigmas, sigmas.new_zeros(1)]) if append_zero else sigmas


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  append_zero: bool = True) -> torch.Tensor:
    """EDM's schedule: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022,
    arXiv:2206.00364, eq. (5); defaults are the paper's (sigma_min=0.002, sigma_max=80, rho=7).
    """
    _check_count("n", n)
    sigma_min, sigma_max = _check_bounds(sigma_min, sigma_max)
    _Positive.check("rho", rho)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho, append_zero)


def log_snr_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   append_zero: bool = True) -> torch.Tensor:
    """Noise levels uniform in log-SNR: log SNR = -2 log sigma falls linearly from sigma_max to sigma_min.

    This is the spacing DPM-Solver recommends ("logSNR" / time-uniform lambda), Lu et al. 2022, arXiv:2206.00927.
    """
    _check_count("n", n)
    sigma_min, sigma_max = _check_bounds(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    return _finish(torch.exp(math.log(sigma_max) + ramp * (math.log(sigma_min) - math.log(sigma_max))),
                   append_zero)


def uniform_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   append_zero: bool = True) -> torch.Tensor:
    """Noise levels evenly spaced in sigma from sigma_max down to sigma_min (the VE-SDE time grid of
    Song et al. 2021 with sigma(t) = t)."""
    _check_count("n", n)
    sigma_min, sigma_max = _check_bounds(sigma_min, sigma_max)
    if n == 1:
        return _finish(torch.tensor([sigma_max], dtype=torch.float64), append_zero)
    return _finish(torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64), append_zero)


def ddpm_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                        beta_schedule: str = "linear") -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s) of a discrete DDPM; `beta_schedule` is "linear" (Ho et al.
    2020: betas linear from 1e-4 to 0.02 over 1000 steps) or "scaled_linear" (latent diffusion: sqrt(beta)
    linear)."""
    _check_count("num_train_timesteps", num_train_timesteps)
    Interval(0.0, 1.0, low_closed=False, high_closed=False).check("beta_start", beta_start)
    Interval(0.0, 1.0, low_closed=False, high_closed=False).check("beta_end", beta_end)
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    else:
        raise ValueError(f"beta_schedule={beta_schedule!r} is not one of 'linear', 'scaled_linear'")
    return torch.cumprod(1.0 - betas, dim=0)


def vp_timesteps(n: int, num_train_timesteps: int = 1000, spacing: str = "leading") -> torch.Tensor:
    """The `n` integer timesteps (decreasing) a DDIM/PNDM-style sampler visits out of `num_train_timesteps`.

    "leading": k * (T // n) for k = n-1..0 (DDIM's uniform skip); "trailing": round(T - k T / n) - 1;
    "linspace": round(linspace(T - 1, 0, n)). Lin et al. 2023 (arXiv:2305.08891) compare the three.
    """
    _check_count("n", n)
    _check_count("num_train_timesteps", num_train_timesteps)
    if n > num_train_timesteps:
        raise ValueError(f"n={n} must be <= num_train_timesteps={num_train_timesteps}")
    if spacing == "leading":
        steps = torch.arange(n - 1, -1, -1, dtype=torch.int64) * (num_train_timesteps // n)
    elif spacing == "trailing":
        steps = torch.round(num_train_timesteps - torch.arange(n, dtype=torch.float64) * num_train_timesteps / n)
        steps = steps.to(torch.int64) - 1
    elif spacing == "linspace":
        steps = torch.round(torch.linspace(num_train_timesteps - 1, 0, n, dtype=torch.float64)).to(torch.int64)
    else:
        raise ValueError(f"spacing={spacing!r} is not one of 'leading', 'trailing', 'linspace'")
    return steps


def vp_sigmas(n: int, alphas_cumprod: torch.Tensor | None = None, spacing: str = "leading",
              append_zero: bool = True) -> torch.Tensor:
    """The EDM sigmas of a discrete VP (DDPM) model at the timesteps `vp_timesteps(n, T, spacing)`:
    sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t). `alphas_cumprod` defaults to `ddpm_alphas_cumprod()`.
    """
    if alphas_cumprod is None:
        alphas_cumprod = ddpm_alphas_cumprod()
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if alphas_cumprod.ndim != 1 or not bool(((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()):
        raise ValueError("alphas_cumprod must be a 1-D tensor with values in (0, 1)")
    steps = vp_timesteps(n, alphas_cumprod.numel(), spacing)
    a = alphas_cumprod[steps]
    sigmas = ((1 - a) / a).sqrt()
    if not bool((sigmas[:-1] > sigmas[1:]).all()):
        raise ValueError("alphas_cumprod must be strictly decreasing so that sigmas decrease")
    return _finish(sigmas, append_zero)
