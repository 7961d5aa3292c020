"""Deterministic (and two stochastic) samplers against diffusers' schedulers, same denoiser, same noise levels.

Mapping between our EDM parametrisation and diffusers (documented once here):
* Our state is x = x0 + sigma * eps ("VE"). diffusers' VP schedulers (DDIM, PNDM, DPMSolverMultistep) carry
  z = x / sqrt(1 + sigma^2) and define sigma through alpha_bar = 1 / (1 + sigma^2).
* DDIM and PNDM look their noise levels up in `alphas_cumprod[timestep]` (and `prev_timestep = t - T // n`,
  with `final_alpha_cumprod = 1`, i.e. sigma = 0, below 0). With "leading" spacing the n timesteps are
  k * (T // n); we overwrite `alphas_cumprod` at those entries so that timestep k * (T // n) carries our
  sigma_{n-1-k}: any schedule (here Karras) can then be driven through them, in float64.
* DPMSolverMultistep, Euler and Heun keep EDM sigmas in `scheduler.sigmas` and only use timesteps to find
  the step index, so we overwrite `scheduler.sigmas` (float64) with ours.
* The model handed to each scheduler is our denoiser seen through the scheduler's `prediction_type`:
  "sample" (x0) where supported, "epsilon" = (x - D) / sigma for PNDM.
* DEISMultistep keeps EDM sigmas too (overwritten likewise) and works in float64; its "deis" algorithm
  integrates polynomials in log sigma, which cannot reach sigma = 0, so its schedules end at sigma_min.
* Euler's and DPMSolverMultistep's `step` upcast the sample to float32 internally, so those trajectories
  agree to float32 accuracy (we assert relative 1e-5). The others agree to 1e-7: float64, but DDIM and
  PNDM go through alpha_bar = 1 / (1 + sigma^2) and back through 1 - alpha_bar, which loses about
  log10(1 / sigma_min^2) = 4 digits at sigma = 0.01 (observed: ~2e-8).
Every comparison runs >= 40 steps on a 3-mode mixture in 3-D (a non-convex log-density) and compares the
whole trajectory, step by step.
"""

import pytest
import torch

pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    PNDMScheduler,
)

from gradwise.sampling import easy_mixture, karras_sigmas, sample  # noqa: E402

STEPS = 40
T = 1000


def _setup(steps=STEPS, sigma_max=20.0):
    mixture = easy_mixture(3, seed=1)
    sigmas = karras_sigmas(steps, sigma_min=0.01, sigma_max=sigma_max)
    x = sigmas[0] * torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return mixture, sigmas, x


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _assert_same(ours, theirs, tol):
    assert len(ours) == len(theirs)
    worst = max(_rel(a, b) for a, b in zip(ours, theirs, strict=True))
    assert worst < tol, f"trajectories differ: max relative difference {worst:.3g}"


def _vp_lookup(scheduler, sigmas):
    """Make timestep k * (T // n) carry sigma_{n-1-k} in a DDIM/PNDM scheduler; return {timestep: sigma}."""
    n = len(sigmas) - 1
    ratio = T // n
    acp = scheduler.alphas_cumprod.to(torch.float64).clone()
    table = {}
    for i in range(n):
        t = (n - 1 - i) * ratio
        acp[t] = 1.0 / (1.0 + sigmas[i] ** 2)
        table[t] = float(sigmas[i])
    scheduler.alphas_cumprod = acp
    scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return table


def test_euler_matches_diffusers_euler_discrete():
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="euler", return_trajectory=True).trajectory[1:]
    sched = EulerDiscreteScheduler(prediction_type="sample", final_sigmas_type="zero")
    sched.set_timesteps(sigmas=sigmas.tolist())
    sched.sigmas = sigmas.clone()
    z, theirs = x.clone(), []
    for i, t in enumerate(sched.timesteps):
        z = sched.step(mixture(z, sigmas[i]), t, z).prev_sample
        theirs.append(z)
    _assert_same(ours, theirs, 1e-5)


def test_heun_matches_diffusers_heun_discrete():
    mixture, sigmas, x = _setup()
    result = sample(mixture, x, sigmas, method="heun", return_trajectory=True)
    assert result.nfe == 2 * STEPS - 1
    sched = HeunDiscreteScheduler(prediction_type="sample")
    sched.set_timesteps(STEPS)
    sched.sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
    z, theirs, calls = x.clone(), [], 0
    for t in sched.timesteps:
        first_order = sched.state_in_first_order
        level = sched.sigmas[sched.step_index if sched.step_index is not None else 0]
        z = sched.step(mixture(z, level), t, z).prev_sample
        calls += 1
        if not first_order or calls == len(sched.timesteps):   # a completed step
            theirs.append(z)
    assert calls == result.nfe
    _assert_same(result.trajectory[1:], theirs, 1e-7)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers_ddim(eta):
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="ddim", eta=eta, generator=torch.Generator().manual_seed(9),
                  return_trajectory=True).trajectory[1:]
    sched = DDIMScheduler(prediction_type="sample", clip_sample=False, set_alpha_to_one=True,
                          timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(STEPS)
    table = _vp_lookup(sched, sigmas)
    gen = torch.Generator().manual_seed(9)   # our sampler draws one noise per step with sigma_next > 0
    z, theirs = x / (1 + sigmas[0] ** 2).sqrt(), []
    for i, t in enumerate(sched.timesteps):
        s = table[int(t)]
        noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) if eta > 0 and sigmas[i + 1] > 0 \
            else torch.zeros_like(x)
        x0 = mixture(z * (1 + s ** 2) ** 0.5, s)
        z = sched.step(x0, t, z, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
        theirs.append(z * (1 + sigmas[i + 1] ** 2).sqrt())
    _assert_same(ours, theirs, 1e-7)


def _dpm(algorithm, method, gen_seed=None):
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method=method, return_trajectory=True,
                  generator=torch.Generator().manual_seed(gen_seed) if gen_seed is not None else None)
    sched = DPMSolverMultistepScheduler(algorithm_type=algorithm, solver_order=2, solver_type="midpoint",
                                        prediction_type="sample", final_sigmas_type="zero",
                                        lower_order_final=True, euler_at_final=False)
    sched.set_timesteps(STEPS)
    sched.sigmas = sigmas.clone()
    gen = torch.Generator().manual_seed(gen_seed) if gen_seed is not None else None
    z, theirs = x / (1 + sigmas[0] ** 2).sqrt(), []
    for i, t in enumerate(sched.timesteps):
        s = sigmas[i]
        noise = None
        if gen is not None:
            noise = torch.randn(x.shape, generator=gen, dtype=torch.float64) if sigmas[i + 1] > 0 \
                else torch.zeros_like(x)
        x0 = mixture(z * (1 + s ** 2).sqrt(), s)
        z = sched.step(x0, t, z, variance_noise=noise).prev_sample
        theirs.append(z * (1 + sigmas[i + 1] ** 2).sqrt())
    assert ours.nfe == STEPS
    _assert_same(ours.trajectory[1:], theirs, 1e-5)


def test_dpmpp_2m_matches_diffusers_dpmsolver_multistep():
    _dpm("dpmsolver++", "dpmpp_2m")


def test_dpmpp_2m_sde_matches_diffusers_sde_dpmsolver_multistep_given_the_same_noise():
    _dpm("sde-dpmsolver++", "dpmpp_2m_sde", gen_seed=4)


def test_plms_matches_diffusers_pndm_with_skip_prk_steps():
    mixture, sigmas, x = _setup()
    result = sample(mixture, x, sigmas, method="plms", return_trajectory=True)
    assert result.nfe == STEPS + 1
    sched = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=True, prediction_type="epsilon",
                          timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(STEPS)
    table = _vp_lookup(sched, sigmas)
    z, theirs = x / (1 + sigmas[0] ** 2).sqrt(), []
    for call, t in enumerate(sched.timesteps):
        s = table[int(t)]
        x_ve = z * (1 + s ** 2) ** 0.5
        eps = (x_ve - mixture(x_ve, s)) / s
        z = sched.step(eps, t, z).prev_sample
        if call != 0:   # call 0 is the Euler predictor of the pseudo improved-Euler start
            done = len(theirs) + 1
            theirs.append(z * (1 + sigmas[done] ** 2).sqrt())
    _assert_same(result.trajectory[1:], theirs, 1e-7)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # diffusers' np.log on 0-d tensors
@pytest.mark.parametrize("order, steps", [(1, STEPS), (2, STEPS), (3, STEPS), (3, 9)])
def test_deis_matches_diffusers_deis_multistep(order, steps):
    """Orders 1-3 over 40 steps; 9 steps (< 15) also checks diffusers' lower_order_final on the last two."""
    mixture = easy_mixture(3, seed=1)
    sigmas = karras_sigmas(steps + 1, sigma_min=0.01, sigma_max=20.0, append_zero=False)
    x = sigmas[0] * torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    result = sample(mixture, x, sigmas, method="deis", order=order, return_trajectory=True)
    assert result.nfe == steps
    sched = DEISMultistepScheduler(solver_order=order, algorithm_type="deis", prediction_type="sample",
                                   lower_order_final=True)
    sched.set_timesteps(steps)
    sched.sigmas = sigmas.clone()
    z, theirs = x / (1 + sigmas[0] ** 2).sqrt(), []
    for i, t in enumerate(sched.timesteps):
        s = sigmas[i]
        z = sched.step(mixture(z * (1 + s ** 2).sqrt(), s), t, z).prev_sample
        theirs.append(z * (1 + sigmas[i + 1] ** 2).sqrt())
    _assert_same(result.trajectory[1:], theirs, 1e-9)   # both float64: ~1e-12 observed
