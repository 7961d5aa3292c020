"""The sampling contract: schedules, adapters, bad input, NFE counting, trajectories, determinism, dtypes."""

import math

import pytest
import torch

from gradwise.sampling import (
    DenoiserError,
    GaussianMixture,
    ddpm_alphas_cumprod,
    easy_mixture,
    karras_sigmas,
    log_snr_sigmas,
    methods,
    prediction_denoiser,
    sample,
    sigma_to_timestep,
    uniform_sigmas,
    vp_discrete_denoiser,
    vp_sigmas,
    vp_timesteps,
)

ALL = methods()
STOCHASTIC = ["ddim", "dpmpp_2m_sde", "euler_maruyama", "langevin", "adaptive", "restart"]
STOCHASTIC_OPTIONS = {"ddim": {"eta": 1.0}, "langevin": {"predictor": "euler_maruyama"}}


def _problem(n=10, batch=64, d=2, dtype=torch.float64, seed=0):
    mixture = easy_mixture(d)
    sigmas = karras_sigmas(n, sigma_max=20.0)
    x = sigmas[0] * torch.randn(batch, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return mixture, sigmas, x.to(dtype)


# ---------------------------------------------------------------------------------------------- schedules
def test_karras_sigmas_follow_eq5_and_end_at_zero():
    s = karras_sigmas(7, sigma_min=0.01, sigma_max=50.0, rho=5.0)
    ref = [(50 ** (1 / 5) + i / 6 * (0.01 ** (1 / 5) - 50 ** (1 / 5))) ** 5 for i in range(7)]
    assert s.dtype == torch.float64 and s.shape == (8,) and s[-1] == 0
    torch.testing.assert_close(s[:-1], torch.tensor(ref, dtype=torch.float64))
    assert karras_sigmas(7, append_zero=False).shape == (7,)


def test_log_snr_sigmas_are_geometric_and_uniform_sigmas_are_linear():
    s = log_snr_sigmas(9, sigma_min=0.01, sigma_max=100.0, append_zero=False)
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, (0.01 / 100.0) ** (1 / 8)))
    u = uniform_sigmas(5, sigma_min=1.0, sigma_max=5.0)
    assert u.tolist() == [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]


def test_vp_schedules_match_diffusers_ddim_alphas_and_timesteps():
    diffusers = pytest.importorskip("diffusers")
    for beta_schedule in ("linear", "scaled_linear"):
        sched = diffusers.DDIMScheduler(beta_schedule=beta_schedule, beta_start=0.00085, beta_end=0.012)
        ours = ddpm_alphas_cumprod(1000, 0.00085, 0.012, beta_schedule)
        torch.testing.assert_close(ours.float(), sched.alphas_cumprod, rtol=1e-5, atol=1e-6)
    for spacing in ("leading", "trailing", "linspace"):
        sched = diffusers.DDIMScheduler(timestep_spacing=spacing)
        sched.set_timesteps(25)
        assert vp_timesteps(25, 1000, spacing).tolist() == sched.timesteps.tolist(), spacing
    sched = diffusers.DDIMScheduler()
    sched.set_timesteps(10)
    a = sched.alphas_cumprod.double()[sched.timesteps]
    # diffusers' cumprod is float32: 1 - alpha_bar near t = 0 keeps ~4 digits
    torch.testing.assert_close(vp_sigmas(10, ddpm_alphas_cumprod())[:-1], ((1 - a) / a).sqrt(), rtol=2e-4, atol=0)


@pytest.mark.parametrize("call, name", [
    (lambda: karras_sigmas(0), "n"), (lambda: karras_sigmas(5, sigma_min=-1.0), "sigma_min"),
    (lambda: karras_sigmas(5, sigma_min=2.0, sigma_max=1.0), "sigma_max"),
    (lambda: log_snr_sigmas(5, sigma_max=float("nan")), "sigma_max"), (lambda: uniform_sigmas(2.5), "n"),
    (lambda: vp_timesteps(5, spacing="odd"), "spacing"), (lambda: ddpm_alphas_cumprod(beta_end=1.5), "beta_end"),
])
def test_schedule_errors_name_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("sigmas, pattern", [
    ([10.0, 10.0, 0.0], "strictly decreasing"), ([1.0, 2.0, 0.0], "strictly decreasing"),
    ([5.0, 1.0, -0.5], ">= 0"), ([5.0, float("nan"), 0.0], "finite"), ([5.0], "at least 2"),
    ([[5.0, 0.0]], "1-D"), ("abc", "sigmas"),
])
def test_bad_sigmas_raise_naming_sigmas(sigmas, pattern):
    mixture, _, x = _problem()
    with pytest.raises((ValueError, TypeError), match="sigmas") as err:
        sample(mixture, x, sigmas, method="euler")
    assert pattern in str(err.value)


def test_nan_from_the_denoiser_raises_with_the_noise_level():
    mixture, sigmas, x = _problem()

    def broken(z, s):
        out = mixture(z, s)
        return out if float(s.min()) > 1.0 else out * float("nan")

    for method in ("euler", "heun", "adaptive"):
        with pytest.raises(DenoiserError, match="denoiser returned non-finite"):
            sample(broken, x, sigmas, method=method, generator=torch.Generator().manual_seed(0))
    out = sample(broken, x, sigmas, method="euler", check_finite=False).sample
    assert torch.isnan(out).all()


def test_mismatched_shapes_and_types_raise():
    mixture, sigmas, x = _problem()
    with pytest.raises(DenoiserError, match=r"denoiser returned shape \(64, 1\) for input shape \(64, 2\)"):
        sample(lambda z, s: mixture(z, s)[:, :1], x, sigmas)
    with pytest.raises(DenoiserError, match="must return a tensor"):
        sample(lambda z, s: 0.0, x, sigmas)
    with pytest.raises(ValueError, match="x must have last dimension 2"):   # the denoiser's own check
        sample(mixture, x[:, :1].clone(), sigmas)
    with pytest.raises(TypeError, match="denoiser must be callable"):
        sample("model", x, sigmas)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        sample(mixture, x.long(), sigmas)
    with pytest.raises(ValueError, match="method='rk45' is not one of"):
        sample(mixture, x, sigmas, method="rk45")
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['eta'\] for method='heun'"):
        sample(mixture, x, sigmas, method="heun", eta=0.5)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sample(mixture, x, sigmas, method="ddim", generator=3)


@pytest.mark.parametrize("method, options, name", [
    ("ddim", {"eta": 1.5}, "eta"), ("ddim", {"eta": -0.1}, "eta"), ("dpmpp_2m_sde", {"eta": -1.0}, "eta"),
    ("hb", {"beta": 0.0}, "beta"), ("hb", {"base": "rk4"}, "base"), ("hb", {"order": 5}, "order"),
    ("ghvb", {"beta": 1.5}, "beta"), ("ghvb", {"order": 0}, "order"),
    ("deis", {"order": 4}, "order"), ("deis", {"order": 0}, "order"),
    ("deis", {"lower_order_final": 1}, "lower_order_final"),
    ("langevin", {"snr": 0.0}, "snr"), ("langevin", {"corrector_steps": 0}, "corrector_steps"),
    ("langevin", {"predictor": "rk"}, "predictor"), ("langevin", {"step_size": -1.0}, "step_size"),
    ("adaptive", {"atol": 0.0}, "atol"), ("adaptive", {"rtol": -1.0}, "rtol"),
    ("adaptive", {"safety": 1.0}, "safety"), ("adaptive", {"h_init": 2.0}, "h_init"),
    ("restart", {"restart_max": 0.01}, "restart_max"), ("restart", {"restart_steps": 0}, "restart_steps"),
])
def test_bad_options_name_the_option(method, options, name):
    mixture, sigmas, x = _problem()
    with pytest.raises((ValueError, TypeError), match=name):
        sample(mixture, x, sigmas, method=method, **options)


# ---------------------------------------------------------------------------------------------- NFE, trajectories
class Counting:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        assert isinstance(sigma, torch.Tensor) and sigma.dtype == x.dtype
        return self.denoiser(x, sigma)


EXPECTED_NFE = {   # 10 steps ending at 0
    "euler": 10, "ddim": 10, "deis": 10, "dpmpp_2m": 10, "dpmpp_2m_sde": 10, "euler_maruyama": 10, "hb": 10, "ghvb": 10,
    "heun": 19, "plms": 11, "langevin": 11, "restart": 19 + 2 * 2 * 3,
}


@pytest.mark.parametrize("method", ALL)
def test_nfe_counts_every_denoiser_call(method):
    mixture, sigmas, x = _problem()
    counting = Counting(mixture)
    result = sample(counting, x, sigmas, method=method, generator=torch.Generator().manual_seed(1))
    assert result.nfe == counting.calls
    if method in EXPECTED_NFE:
        assert result.nfe == EXPECTED_NFE[method]
    else:   # adaptive: 2 per attempt plus the final denoising
        assert result.nfe % 2 == 1 and result.nfe > 3


@pytest.mark.parametrize("method", ALL)
def test_trajectory_records_states_and_levels(method):
    mixture, sigmas, x = _problem()
    result = sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(1),
                    return_trajectory=True)
    assert len(result.trajectory) == len(result.sigmas)
    assert torch.equal(result.trajectory[0], x) and torch.equal(result.trajectory[-1], result.sample)
    assert result.sigmas[0] == sigmas[0] and result.sigmas[-1] == 0
    if method not in ("restart", "langevin", "adaptive"):
        assert torch.equal(result.sigmas, sigmas)
    no_traj = sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(1))
    assert no_traj.trajectory is None and torch.equal(no_traj.sample, result.sample)


def test_partial_schedule_stops_at_the_last_sigma():
    mixture, sigmas, x = _problem()
    head = sample(mixture, x, sigmas[:5], method="dpmpp_2m", return_trajectory=True)
    full = sample(mixture, x, sigmas, method="dpmpp_2m", return_trajectory=True)
    assert head.nfe == 4
    torch.testing.assert_close(head.sample, full.trajectory[4], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("method", STOCHASTIC)
def test_stochastic_methods_are_deterministic_given_the_generator(method):
    mixture, sigmas, x = _problem()
    options = STOCHASTIC_OPTIONS.get(method, {})
    runs = [sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(seed), **options)
            for seed in (5, 5, 6)]
    assert torch.equal(runs[0].sample, runs[1].sample) and runs[0].nfe == runs[1].nfe
    assert not torch.allclose(runs[0].sample, runs[2].sample)


# ---------------------------------------------------------------------------------------------- shapes, dtypes
@pytest.mark.parametrize("method", ALL)
def test_batch_shape_is_free_and_one_sample_works(method):
    mixture, sigmas, x = _problem(batch=12)
    flat = sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(2))
    shaped = sample(mixture, x.reshape(3, 4, 2), sigmas, method=method, generator=torch.Generator().manual_seed(2))
    assert shaped.sample.shape == (3, 4, 2)
    if method not in ("langevin", "adaptive"):   # these two use the leading axis as the batch for norms
        torch.testing.assert_close(shaped.sample.reshape(12, 2), flat.sample, rtol=1e-12, atol=1e-12)
    single = sample(mixture, x[0], sigmas, method=method, generator=torch.Generator().manual_seed(2))
    assert single.sample.shape == (2,) and torch.isfinite(single.sample).all()


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 0.1)])
@pytest.mark.parametrize("method", ["euler", "heun", "ddim", "deis", "dpmpp_2m", "plms", "hb", "ghvb"])
def test_low_precision_inputs_track_float64(method, dtype, tol):
    mixture, sigmas, x = _problem(n=20, batch=256)
    ref = sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(3)).sample
    low = sample(mixture, x.to(dtype), sigmas, method=method, generator=torch.Generator().manual_seed(3))
    assert low.sample.dtype == dtype
    err = (low.sample.double() - ref).norm(dim=1)
    # bfloat16 inputs (8-bit mantissa) can flip the mode of a sample sitting on a basin boundary; the median
    # sample must still land where float64 puts it.
    assert float(err.median()) < tol * float(ref.norm(dim=1).median())


@pytest.mark.parametrize("method", STOCHASTIC)
def test_stochastic_methods_run_in_float32_and_bfloat16(method):
    mixture, sigmas, x = _problem(batch=32)
    for dtype in (torch.float32, torch.bfloat16):
        out = sample(mixture, x.to(dtype), sigmas, method=method, generator=torch.Generator().manual_seed(3),
                     **STOCHASTIC_OPTIONS.get(method, {})).sample
        assert out.dtype == dtype and torch.isfinite(out.float()).all()
        assert float(out.float().abs().max()) < 10   # landed near the data (modes at radius 2.5)


# ---------------------------------------------------------------------------------------------- adapters
def test_prediction_adapters_recover_the_denoiser():
    mixture = easy_mixture(3)
    x = 3 * torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma = torch.tensor(1.7, dtype=torch.float64)
    exact = mixture(x, sigma)
    alpha = 1 / math.sqrt(1 + 1.7 ** 2)

    def eps_model(z, s):   # receives the VP input z = alpha x
        return (z / alpha - mixture(z / alpha, s)) / s

    def v_model(z, s):     # v = alpha eps - (sigma alpha) x0
        x_ve = z / alpha
        return alpha * (x_ve - mixture(x_ve, s)) / s - s * alpha * mixture(x_ve, s)

    torch.testing.assert_close(prediction_denoiser(eps_model, "epsilon")(x, sigma), exact)
    torch.testing.assert_close(prediction_denoiser(v_model, "v")(x, sigma), exact)
    torch.testing.assert_close(prediction_denoiser(lambda z, s: mixture(z, s), "sample", scale_input=False)(x, sigma),
                               exact)
    with pytest.raises(ValueError, match="prediction='x0'"):
        prediction_denoiser(eps_model, "x0")


def test_vp_discrete_adapter_maps_schedule_sigmas_to_their_timesteps():
    acp = ddpm_alphas_cumprod()
    sigmas = vp_sigmas(20, acp)
    steps = vp_timesteps(20)
    torch.testing.assert_close(sigma_to_timestep(sigmas[:-1], acp), steps.double(), atol=1e-6, rtol=0)
    mixture = easy_mixture(2)
    seen = []

    def eps_model(z, t):   # a discrete-time epsilon model built from the exact denoiser
        seen.append(float(t))
        a = acp[int(round(float(t)))]
        x_ve, s = z / a.sqrt(), ((1 - a) / a).sqrt()
        return (x_ve - mixture(x_ve, s)) / s

    denoiser = vp_discrete_denoiser(eps_model, acp, "epsilon")
    x = sigmas[0] * torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = sample(denoiser, x, sigmas, method="ddim").sample
    direct = sample(mixture, x, sigmas, method="ddim").sample
    torch.testing.assert_close(ours, direct, rtol=1e-6, atol=1e-6)
    assert [round(t) for t in seen] == steps.tolist()


def test_mixture_denoiser_is_the_posterior_mean():
    """Check the closed form against Monte Carlo: E[x0 | x] by importance weighting exact samples."""
    mixture = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0, 0.0], [1.5, 0.5]]),
                              torch.stack([torch.eye(2) * 0.2, torch.tensor([[0.5, 0.2], [0.2, 0.3]])]))
    x0 = mixture.sample(400_000, torch.Generator().manual_seed(0))
    point, sigma = torch.tensor([[0.3, 0.1]], dtype=torch.float64), 0.8
    logw = -((point - x0) ** 2).sum(1) / (2 * sigma ** 2)
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0).sum(0)
    torch.testing.assert_close(mixture(point, sigma)[0], mc, atol=5e-3, rtol=0)
    # the noised density integrates the same way: log p_sigma vs a Monte-Carlo estimate
    mc_p = torch.logsumexp(logw, 0) - math.log(x0.shape[0]) - math.log(2 * math.pi * sigma ** 2)
    assert abs(float(mixture.log_prob(point, sigma)) - float(mc_p)) < 5e-3


# ---------------------------------------------------------------------------------------------- test-bed metrics
def test_metrics_separate_exact_from_wrong_samples():
    from gradwise.sampling import ill_conditioned_mixture, sliced_wasserstein

    mixture = ill_conditioned_mixture(4)
    exact = mixture.sample(4000, torch.Generator().manual_seed(0))
    good = mixture.evaluate(exact, seed=1)
    assert good.weight_error < 0.03 and good.mean_error < 0.1 and good.outlier_rate < 0.02
    assert sliced_wasserstein(exact, exact) == 0.0
    # a sampler that under-disperses the wide mode and over-weights the narrow one
    bad_samples = exact.clone()
    labels = mixture.assign(exact)
    bad_samples[labels == 1] = mixture.means[1] + 0.5 * (exact[labels == 1] - mixture.means[1])
    bad = mixture.evaluate(torch.cat([bad_samples, exact[labels == 0]]), seed=1)
    assert bad.weight_error > 0.05 and bad.cov_error > 0.2 and bad.sliced_wasserstein > good.sliced_wasserstein
    diverged = mixture.evaluate(exact + 0.3 * torch.randn(exact.shape, generator=torch.Generator().manual_seed(2),
                                                          dtype=torch.float64), seed=1)
    assert diverged.outlier_rate > 0.3


def test_steps_for_nfe_fits_the_budget():
    from gradwise.sampling import steps_for_nfe

    mixture, _, x = _problem()
    for method in ALL:
        if method == "adaptive":
            with pytest.raises(ValueError, match="adaptive"):
                steps_for_nfe(method, 50)
            continue
        for budget in (20, 37):
            options = {"predictor": "euler_maruyama"} if method == "langevin" else {}
            steps = steps_for_nfe(method, budget, **options)
            nfe = sample(mixture, x, karras_sigmas(steps), method=method, generator=torch.Generator().manual_seed(0),
                         **options).nfe
            assert budget - 2 * (2 if method == "restart" else 1) < nfe <= budget, (method, budget, nfe)


def test_compiled_denoiser_is_traced_once_for_a_whole_run():
    """sigma reaches the denoiser as a 0-d tensor, so torch.compile does not specialise on its value."""
    mixture, sigmas, x = _problem(n=12)
    compiles = []

    def counting_backend(graph_module, example_inputs):
        compiles.append(1)
        return graph_module.forward

    mixture(x, sigmas[0])   # fill the test bed's parameter cache, which dynamo would otherwise guard on
    torch._dynamo.reset()
    compiled = torch.compile(lambda z, s: mixture.denoise(z, s), backend=counting_backend, fullgraph=True)
    for method in ("heun", "dpmpp_2m"):
        out = sample(compiled, x, sigmas, method=method).sample
        torch.testing.assert_close(out, sample(mixture, x, sigmas, method=method).sample, rtol=1e-12, atol=1e-12)
    assert len(compiles) == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("method", ALL)
def test_input_is_left_untouched(method):
    mixture, sigmas, x = _problem()
    before = x.clone()
    sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, before)
