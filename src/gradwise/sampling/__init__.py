"""Diffusion sampling as a gradient method: samplers, noise schedules, model adapters and an exact test bed.

`gradwise.sampling.diffusion.sample` is the entry point; see its module docstring for the contract.
"""

from . import adapters, collect, diffusion, schedules, testbed
from .adapters import prediction_denoiser, sigma_to_timestep, vp_discrete_denoiser
from .collect import SampleCollector, gaussian_neg_log_prior, neg_log_posterior
from .diffusion import DenoiserError, SampleResult, methods, sample, steps_for_nfe
from .schedules import (
    ddpm_alphas_cumprod,
    karras_sigmas,
    log_snr_sigmas,
    uniform_sigmas,
    vp_sigmas,
    vp_timesteps,
)
from .testbed import (
    GaussianMixture,
    SampleQuality,
    easy_mixture,
    high_dim_mixture,
    ill_conditioned_mixture,
    sliced_wasserstein,
)

__all__ = [
    "SampleCollector", "collect", "gaussian_neg_log_prior", "neg_log_posterior",
    "DenoiserError", "GaussianMixture", "SampleQuality", "SampleResult", "adapters", "ddpm_alphas_cumprod",
    "diffusion", "easy_mixture", "high_dim_mixture", "ill_conditioned_mixture", "karras_sigmas",
    "log_snr_sigmas", "methods", "prediction_denoiser", "sample", "schedules", "sigma_to_timestep",
    "sliced_wasserstein", "steps_for_nfe", "testbed", "uniform_sigmas", "vp_discrete_denoiser", "vp_sigmas",
    "vp_timesteps",
]
