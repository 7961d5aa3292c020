"""Momentum, adaptive, restart, Langevin and Euler-Maruyama samplers against references written here from
the papers' formulas (and the momentum paper's official diffusers-based code, re-expressed), plus the
identities that tie the methods together. Trajectories are compared after every step in float64; the
references run in other coordinates (VP, score form), and the round trips through 1 - alpha_bar and
(D - x) / sigma^2 at sigma = 0.01 cost digits, so agreement is ~3e-8 relative (asserted: 1e-7).
The test bed (3 modes in 3-D) is the non-convex problem."""

import math

import numpy
import pytest
import torch

from gradwise.sampling import easy_mixture, high_dim_mixture, karras_sigmas, sample

STEPS = 40


def _setup(steps=STEPS, d=3, batch=16, sigma_max=20.0):
    mixture = easy_mixture(d, seed=1)
    sigmas = karras_sigmas(steps, sigma_min=0.01, sigma_max=sigma_max)
    x = sigmas[0] * torch.randn(batch, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return mixture, sigmas, x


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def _assert_same(ours, theirs, tol=1e-7):
    assert len(ours) == len(theirs)
    worst = max(_rel(a, b) for a, b in zip(ours, theirs, strict=True))
    assert worst < tol, f"max relative difference {worst:.3g}"


# ---------------------------------------------------------------------------------------------------- momentum
# Wizadwongsa et al. 2023 (arXiv:2307.11118). The authors' code wraps diffusers' VP schedulers: with
# alpha_bar_t and g_t = sqrt(1 - alpha_bar_t) / sqrt(alpha_bar_t) (= our sigma), a step is
#   z' = (z / sqrt(alpha_bar_t) + (g_prev - g_t) * update) * sqrt(alpha_bar_prev),
# where `update` mixes the noise predictions eps. The references below run in that VP form.
# GHVB coefficients of order k (eq. 14): sum_j (a_j + b_j beta) v_{n-j} / (denominator * beta).
GHVB = {1: ([(0, 1)], 1), 2: ([(2, 1), (-2, 1)], 2), 3: ([(18, 5), (-24, 8), (6, -1)], 12),
        4: ([(46, 9), (-78, 19), (42, -5), (-10, 1)], 24)}
ADAMS_BASHFORTH = {1: ([1], 1), 2: ([3, -1], 2), 3: ([23, -16, 5], 12), 4: ([55, -59, 37, -9], 24)}


def _ghvb_mix(history, beta):
    coeffs, denom = GHVB[len(history)]
    return sum((a + b * beta) * v for (a, b), v in zip(coeffs, reversed(history), strict=True)) / (denom * beta)


def _ab_mix(history):
    coeffs, denom = ADAMS_BASHFORTH[len(history)]
    return sum(c * v for c, v in zip(coeffs, reversed(history), strict=True)) / denom


def _vp_reference(mixture, sigmas, x, update_rule):
    """Drive a momentum rule in the VP coordinates of the official code; returns VE states after each step."""
    alpha_bar = [1 / (1 + float(s) ** 2) for s in sigmas]
    z, states = x / math.sqrt(1 + float(sigmas[0]) ** 2), []
    for i in range(len(sigmas) - 1):
        a_t, a_prev = alpha_bar[i], alpha_bar[i + 1]
        g_t, g_prev = math.sqrt(1 - a_t) / math.sqrt(a_t), math.sqrt(1 - a_prev) / math.sqrt(a_prev)
        x0 = mixture(z / math.sqrt(a_t), g_t)
        eps = (z - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
        update = update_rule(eps)
        z = (z / math.sqrt(a_t) + (g_prev - g_t) * update) * math.sqrt(a_prev)
        states.append(z / math.sqrt(a_prev))
    return states


def _hb_plms_rule(order, beta):
    state = {"ets": [], "vel": None}

    def rule(eps):
        state["ets"] = (state["ets"] + [eps])[-order:]
        prime = _ab_mix(state["ets"])
        state["vel"] = prime if state["vel"] is None else (1 - beta) * state["vel"] + beta * prime
        return state["vel"]
    return rule


def _ghvb_rule(order, beta):
    state = {"ets": [], "vel": None}

    def rule(eps):
        state["vel"] = eps if state["vel"] is None else (1 - beta) * state["vel"] + beta * eps
        state["ets"] = (state["ets"] + [state["vel"]])[-order:]
        return _ghvb_mix(state["ets"], beta)
    return rule


@pytest.mark.parametrize("order, beta", [(1, 0.8), (2, 0.8), (3, 0.6), (4, 0.9), (4, 1.0)])
def test_ghvb_matches_the_official_vp_form(order, beta):
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="ghvb", order=order, beta=beta, return_trajectory=True)
    assert ours.nfe == STEPS
    _assert_same(ours.trajectory[1:], _vp_reference(mixture, sigmas, x, _ghvb_rule(order, beta)))


@pytest.mark.parametrize("order, beta", [(1, 0.5), (2, 0.8), (4, 0.8)])
def test_hb_on_plms_matches_the_official_vp_form(order, beta):
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="hb", base="plms", order=order, beta=beta, return_trajectory=True)
    _assert_same(ours.trajectory[1:], _vp_reference(mixture, sigmas, x, _hb_plms_rule(order, beta)))


def test_hb_on_dpmpp_2m_matches_diffusers_with_the_papers_momentum_update():
    diffusers = pytest.importorskip("diffusers")
    beta = 0.7

    class MomentumDPM(diffusers.DPMSolverMultistepScheduler):
        """diffusers' DPM-Solver++(2M) whose second-order direction D0 + D1/2 goes through heavy ball."""

        velocity = None

        def multistep_dpm_solver_second_order_update(self, model_output_list, *args, sample=None, noise=None,
                                                     **kwargs):
            s_t, s_0, s_1 = (self.sigmas[self.step_index + k] for k in (1, 0, -1))
            (a_t, sig_t), (a_0, sig_0), (a_1, sig_1) = (self._sigma_to_alpha_sigma_t(s) for s in (s_t, s_0, s_1))
            lam_t, lam_0, lam_1 = (torch.log(a) - torch.log(s) for a, s in ((a_t, sig_t), (a_0, sig_0), (a_1, sig_1)))
            h, h_0 = lam_t - lam_0, lam_0 - lam_1
            m0, m1 = model_output_list[-1], model_output_list[-2]
            direction = m0 + 0.5 * (h / h_0) * (m0 - m1)
            self.velocity = direction if self.velocity is None else (1 - beta) * self.velocity + beta * direction
            return (sig_t / sig_0) * sample - a_t * (torch.exp(-h) - 1.0) * self.velocity

    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="hb", base="dpmpp_2m", beta=beta, return_trajectory=True)
    sched = MomentumDPM(algorithm_type="dpmsolver++", solver_order=2, prediction_type="sample",
                        final_sigmas_type="zero", lower_order_final=True)
    sched.set_timesteps(STEPS)
    sched.sigmas = sigmas.clone()
    z, theirs = x / (1 + sigmas[0] ** 2).sqrt(), []
    for i, t in enumerate(sched.timesteps):
        z = sched.step(mixture(z * (1 + sigmas[i] ** 2).sqrt(), sigmas[i]), t, z).prev_sample
        theirs.append(z * (1 + sigmas[i + 1] ** 2).sqrt())
    _assert_same(ours.trajectory[1:], theirs, 1e-5)   # diffusers steps in float32
    plain = sample(mixture, x, sigmas, method="dpmpp_2m").sample
    assert _rel(ours.sample, plain) > 1e-4            # the momentum really changes the path


def test_momentum_identities():
    mixture, sigmas, x = _setup()
    run = lambda **kw: sample(mixture, x, sigmas, **kw).sample  # noqa: E731
    torch.testing.assert_close(run(method="hb", base="dpmpp_2m", beta=1.0), run(method="dpmpp_2m"), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(run(method="hb", base="plms", order=1, beta=1.0), run(method="euler"), rtol=1e-12,
                               atol=1e-12)
    torch.testing.assert_close(run(method="ghvb", order=1, beta=0.6), run(method="hb", base="plms", order=1,
                                                                           beta=0.6), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(run(method="ghvb", order=4, beta=1.0), run(method="hb", base="plms", order=4,
                                                                           beta=1.0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------- SDE family
def _song_reference(mixture, sigmas, x, generator, corrector_steps=0, snr=0.16):
    """Song et al. 2021 (arXiv:2011.13456) PC sampler for the VE SDE: Langevin corrector (Algorithm 5's SNR
    step) then the reverse-diffusion predictor; the final predictor step to 0 keeps only its mean."""
    states = []
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        for _ in range(corrector_steps):
            grad = (mixture(x, s) - x) / s ** 2
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            grad_norm = grad.reshape(grad.shape[0], -1).norm(dim=-1).mean()
            noise_norm = noise.reshape(noise.shape[0], -1).norm(dim=-1).mean()
            step = (snr * noise_norm / grad_norm) ** 2 * 2
            x = x + step * grad + torch.sqrt(step * 2) * noise
        score = (mixture(x, s) - x) / s ** 2
        x_mean = x + (s ** 2 - s_next ** 2) * score
        x = x_mean if s_next == 0 else x_mean + math.sqrt(s ** 2 - s_next ** 2) * torch.randn(
            x.shape, generator=generator, dtype=x.dtype)
        states.append(x)
    return states


def test_euler_maruyama_matches_the_reverse_diffusion_predictor():
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="euler_maruyama", generator=torch.Generator().manual_seed(7),
                  return_trajectory=True)
    _assert_same(ours.trajectory[1:], _song_reference(mixture, sigmas, x, torch.Generator().manual_seed(7)))


@pytest.mark.parametrize("corrector_steps, snr", [(1, 0.16), (2, 0.3)])
def test_langevin_predictor_corrector_matches_song_et_al(corrector_steps, snr):
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="langevin", predictor="euler_maruyama", snr=snr,
                  corrector_steps=corrector_steps, generator=torch.Generator().manual_seed(8),
                  return_trajectory=True)
    assert ours.nfe == STEPS * (corrector_steps + 1)
    ref = _song_reference(mixture, sigmas, x, torch.Generator().manual_seed(8), corrector_steps, snr)
    _assert_same(ours.trajectory[1:], ref)


def test_annealed_langevin_with_song_ermon_step_size():
    """Song & Ermon 2019, Algorithm 1: alpha_i = eps sigma_i^2 / sigma_L^2, T steps per level, then (as in
    their follow-up) one denoising step at the end."""
    mixture, sigmas, x = _setup(steps=10)
    eps, steps = 2e-5, 3   # the paper's eps for sigma_L = 0.01: alpha_i / sigma_i^2 = 0.2 at every level
    gen = torch.Generator().manual_seed(9)
    ref = x.clone()
    levels = [float(s) for s in sigmas if s > 0]
    for s in levels:
        alpha = eps * s ** 2 / levels[-1] ** 2
        for _ in range(steps):
            z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
            ref = ref + alpha * (mixture(ref, s) - ref) / s ** 2 + math.sqrt(2 * alpha) * z
    ref = mixture(ref, levels[-1])
    ours = sample(mixture, x, sigmas, method="langevin", step_size=eps, corrector_steps=steps,
                  generator=torch.Generator().manual_seed(9))
    assert ours.nfe == 10 * steps + 1
    torch.testing.assert_close(ours.sample, ref, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------- adaptive
def _ggf_reference(mixture, sigma_max, sigma_min, x, generator, atol, rtol, per_sample, h=0.01, r=0.9, theta=0.9):
    """Jolicoeur-Martineau et al. 2021, Algorithm 1, for the VE SDE sigma(t) = sigma_min (sigma_max /
    sigma_min)^t, with a Python loop over attempts, per sample or with the batch as one sample; returns
    (denoised sample, calls)."""
    c = math.log(sigma_max / sigma_min)
    sig = lambda t: sigma_min * torch.exp(c * t)  # noqa: E731
    batch = x.shape[0]
    t = torch.ones(batch, 1, dtype=torch.float64)
    h = torch.full_like(t, h)
    x_prev, calls = x, 0
    while bool((t > 0).any()):
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        s0, s1 = sig(t), sig((t - h).clamp_min(0))
        f0 = 2 * c * (mixture(x, s0) - x)                  # g^2 * score = 2 c sigma^2 (D - x) / sigma^2
        x1 = x + h * f0 + torch.sqrt(h * 2 * c) * s0 * z
        f1 = 2 * c * (mixture(x1, s1) - x1)
        x_tilde = x + h * f1 + torch.sqrt(h * 2 * c) * s1 * z
        calls += 2
        x2 = 0.5 * (x1 + x_tilde)
        delta = torch.clamp(rtol * torch.maximum(x1.abs(), x_prev.abs()), min=atol)
        err = ((x1 - x2) / delta).pow(2).mean(1, keepdim=True).sqrt()
        if not per_sample:
            err = ((x1 - x2) / delta).pow(2).mean().sqrt().expand_as(t)
        ok = (err <= 1) & (t > 0)
        x, x_prev = torch.where(ok, x2, x), torch.where(ok, x1, x_prev)
        t = torch.where(ok, (t - h).clamp_min(0), t)
        h = torch.minimum(t, theta * h * err.clamp_min(1e-12) ** (-r))
    return mixture(x, sigma_min), calls + 1


@pytest.mark.parametrize("per_sample", [True, False])
@pytest.mark.parametrize("atol, rtol", [(0.0078, 0.05), (0.01, 0.01)])
def test_adaptive_matches_gotta_go_fast_algorithm_1(atol, rtol, per_sample):
    mixture, sigmas, x = _setup()
    ours = sample(mixture, x, sigmas, method="adaptive", atol=atol, rtol=rtol, per_sample=per_sample,
                  generator=torch.Generator().manual_seed(11))
    ref, calls = _ggf_reference(mixture, float(sigmas[0]), float(sigmas[-2]), x, torch.Generator().manual_seed(11),
                                atol, rtol, per_sample)
    assert ours.nfe == calls
    torch.testing.assert_close(ours.sample, ref, rtol=1e-9, atol=1e-9)


def test_adaptive_spends_more_evaluations_for_tighter_tolerances_and_samples_high_dim_data_well():
    mixture = high_dim_mixture(32, seed=2)
    sigmas = karras_sigmas(10, sigma_max=40.0)
    x = 40.0 * torch.randn(400, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    loose = sample(mixture, x, sigmas, method="adaptive", rtol=0.1, atol=0.02,
                   generator=torch.Generator().manual_seed(1))
    tight = sample(mixture, x, sigmas, method="adaptive", rtol=0.02, atol=0.005,
                   generator=torch.Generator().manual_seed(1))
    assert tight.nfe > 1.5 * loose.nfe
    quality = mixture.evaluate(tight.sample)
    assert quality.weight_error < 0.06 and quality.mean_error < 0.3


def test_adaptive_pooled_error_control_keeps_low_dimensional_laws_unbiased():
    """Per-sample control in 2-D selects noise draws (documented caveat); pooling over the batch does not."""
    from gradwise.sampling import GaussianMixture

    gaussian = GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None])
    x = 80.0 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    variances = {}
    for per_sample in (False, True):
        out = sample(gaussian, x, karras_sigmas(10), method="adaptive", per_sample=per_sample,
                     generator=torch.Generator().manual_seed(2)).sample
        variances[per_sample] = float(out.var(0).mean())
    assert abs(variances[False] - 1.0) < 0.1 and variances[True] > 1.5, variances


def test_adaptive_stops_at_max_nfe_with_a_warning():
    mixture, sigmas, x = _setup()
    with pytest.warns(UserWarning, match="max_nfe=20"):
        result = sample(mixture, x, sigmas, method="adaptive", max_nfe=20, generator=torch.Generator().manual_seed(0))
    assert result.nfe <= 21


# ---------------------------------------------------------------------------------------------------- restart
def test_restart_is_heun_composed_with_noise_injections():
    mixture, sigmas, x = _setup(steps=20)
    options = dict(restart_min=0.1, restart_max=1.0, restart_steps=4, restart_repeats=2)
    ours = sample(mixture, x, sigmas, method="restart", generator=torch.Generator().manual_seed(12), **options)
    i_min = int((sigmas[:-1] - 0.1).abs().argmin())
    t_min = float(sigmas[i_min])
    gen = torch.Generator().manual_seed(12)
    y = sample(mixture, x, sigmas[: i_min + 1], method="heun").sample
    inner = karras_sigmas(5, t_min, 1.0, append_zero=False)
    inner[0], inner[-1] = 1.0, t_min
    for _ in range(2):
        y = y + math.sqrt(1.0 - t_min ** 2) * torch.randn(y.shape, generator=gen, dtype=y.dtype)
        y = sample(mixture, y, inner, method="heun").sample
    y = sample(mixture, y, sigmas[i_min:], method="heun").sample
    torch.testing.assert_close(ours.sample, y, rtol=1e-12, atol=1e-12)
    assert ours.nfe == (2 * 20 - 1) + 2 * 2 * 4
    no_restart = sample(mixture, x, sigmas, method="restart", restart_repeats=0).sample
    torch.testing.assert_close(no_restart, sample(mixture, x, sigmas, method="heun").sample, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------- DEIS
# Zhang & Chen 2022 (arXiv:2204.13902), the multistep exponential integrator: the ODE dx/dsigma = e, e = (x - D)
# / sigma, integrated over the polynomial in log(sigma) through the last k values of e. The reference
# integrates that interpolant by 32-point Gauss-Legendre quadrature instead of the closed form.
def _deis_reference(mixture, sigmas, x, order):
    nodes, gauss = (torch.tensor(a, dtype=torch.float64) for a in numpy.polynomial.legendre.leggauss(32))
    levels = [float(s) for s in sigmas]
    steps = len(levels) - 1
    past, states = [], []
    for i in range(steps):
        s, s_next = levels[i], levels[i + 1]
        e = (x - mixture(x, torch.tensor(s, dtype=torch.float64))) / s
        past = [(math.log(s), e)] + past
        k = min(order, i + 1, steps - i) if steps < 15 else min(order, i + 1)
        points = past[:k]
        quad = 0.5 * (s_next - s) * nodes + 0.5 * (s_next + s)     # quadrature points in sigma
        interpolant = torch.zeros_like(x)
        for j, (log_j, e_j) in enumerate(points):
            basis = torch.ones_like(quad)
            for m, (log_m, _) in enumerate(points):
                if m != j:
                    basis = basis * (quad.log() - log_m) / (log_j - log_m)
            interpolant = interpolant + float((gauss * basis).sum() * 0.5 * (s_next - s)) * e_j
        x = x + interpolant
        states.append(x)
    return states


@pytest.mark.parametrize("order, steps", [(2, STEPS), (3, STEPS), (3, 10)])
def test_deis_integrates_the_log_sigma_interpolant_exactly(order, steps):
    mixture = easy_mixture(3, seed=1)
    sigmas = karras_sigmas(steps + 1, sigma_min=0.01, sigma_max=20.0, append_zero=False)
    x = sigmas[0] * torch.randn(16, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = sample(mixture, x, sigmas, method="deis", order=order, return_trajectory=True).trajectory[1:]
    _assert_same(ours, _deis_reference(mixture, sigmas, x, order), 1e-10)


def test_deis_order_one_is_ddim():
    mixture, sigmas, x = _setup()
    deis = sample(mixture, x, sigmas, method="deis", order=1, return_trajectory=True).trajectory
    ddim = sample(mixture, x, sigmas, method="ddim", return_trajectory=True).trajectory
    _assert_same(deis, ddim, 1e-12)


def test_deis_higher_orders_are_more_accurate_and_the_step_to_zero_returns_the_denoiser():
    """At 12 steps (lower-order final steps on) the error to a fine Heun flow falls with the order."""
    mixture = easy_mixture(3, seed=1)
    x = 20.0 * torch.randn(256, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = sample(mixture, x, karras_sigmas(400, sigma_max=20.0), method="heun").sample
    sigmas = karras_sigmas(12, sigma_max=20.0)
    errors = []
    for order in (1, 2, 3):
        result = sample(mixture, x, sigmas, method="deis", order=order, return_trajectory=True)
        before_last = result.trajectory[-2]
        torch.testing.assert_close(result.sample, mixture(before_last, sigmas[-2]), rtol=0, atol=0)
        errors.append(float((result.sample - exact).norm(dim=1).pow(2).mean().sqrt()))
    assert errors[2] < errors[1] < 0.5 * errors[0], errors
