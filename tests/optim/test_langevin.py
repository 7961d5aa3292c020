"""SGLD, pSGLD and SGHMC: paper-rule oracles, posterior moments on Bayesian linear regression, two modes."""

from __future__ import annotations

import math

import pytest
import torch

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.sampling.collect import SampleCollector, gaussian_neg_log_prior, neg_log_posterior

SEED = 1234


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# -- oracles: the papers' update rules, with the same noise stream ------------------------------------
def problem_params():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in [(3, 4), (5,)]]


def objective(params, k):
    """Non-convex, and different at every step k, as a stochastic gradient is."""
    return sum((torch.sin(p * (1.0 + 0.3 * k + i)) * p).sum() + 0.2 * (p**2).sum() for i, p in enumerate(params))


def sgld_reference(lr, temperature):
    eps = 2 * lr  # Welling & Teh's step: theta += eps/2 * grad log p + N(0, eps)

    def step(theta, grad, state, xi):
        return theta + eps / 2 * (-grad) + math.sqrt(eps * temperature) * xi

    return step


def psgld_reference(lr, alpha, lam, temperature):
    eps = 2 * lr  # Li et al., Algorithm 1, without Gamma

    def step(theta, grad, state, xi):
        state["V"] = alpha * state.get("V", torch.zeros_like(theta)) + (1 - alpha) * grad * grad
        G = 1.0 / (lam + torch.sqrt(state["V"]))
        return theta + eps / 2 * G * (-grad) + torch.sqrt(eps * G * temperature) * xi

    return step


def sghmc_reference(eta, alpha, temperature, decay=None):
    # Chen et al. eq. (15): v <- v - eta grad U - alpha v + N(0, 2 (alpha - beta_hat) eta); theta <- theta + v

    def step(theta, grad, state, xi):
        v = state.get("v", torch.zeros_like(theta))
        beta_hat = torch.zeros_like(theta)
        if decay is not None:
            state["t"] = state.get("t", 0) + 1
            state["m1"] = decay * state.get("m1", torch.zeros_like(theta)) + (1 - decay) * grad
            state["m2"] = decay * state.get("m2", torch.zeros_like(theta)) + (1 - decay) * grad**2
            c = 1 - decay ** state["t"]
            variance = torch.clamp(state["m2"] / c - (state["m1"] / c) ** 2, min=0.0)
            beta_hat = 0.5 * eta * variance
        injected = torch.clamp(alpha * temperature - beta_hat, min=0.0)
        v = v - eta * grad - alpha * v + torch.sqrt(2 * injected * eta) * xi
        state["v"] = v
        return theta + v

    return step


ORACLES = [
    ("sgld", dict(lr=1e-2, temperature=1.0), lambda h: sgld_reference(h["lr"], h["temperature"])),
    ("sgld", dict(lr=3e-3, temperature=0.3), lambda h: sgld_reference(h["lr"], h["temperature"])),
    ("psgld", dict(lr=1e-2, alpha=0.99, eps=1e-5, temperature=1.0),
     lambda h: psgld_reference(h["lr"], h["alpha"], h["eps"], h["temperature"])),
    ("psgld", dict(lr=3e-3, alpha=0.9, eps=1e-3, temperature=2.0),
     lambda h: psgld_reference(h["lr"], h["alpha"], h["eps"], h["temperature"])),
    ("sghmc", dict(lr=1e-2, friction=0.1, temperature=1.0),
     lambda h: sghmc_reference(h["lr"], h["friction"], h["temperature"])),
    ("sghmc", dict(lr=1e-2, friction=0.3, temperature=1.0, estimate_noise=True, noise_decay=0.9),
     lambda h: sghmc_reference(h["lr"], h["friction"], h["temperature"], decay=h["noise_decay"])),
]


@pytest.mark.parametrize("name,hyper,reference", ORACLES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(ORACLES)])
def test_matches_the_papers_update_rule_at_every_step(name, hyper, reference):
    params = problem_params()
    theta = [p.detach().clone() for p in params]
    opt = gw.create(name, params, generator=torch.Generator().manual_seed(SEED), **hyper)
    noise = torch.Generator().manual_seed(SEED)
    rules = [reference(hyper) for _ in theta]
    states = [{} for _ in theta]
    for k in range(50):
        opt.zero_grad()
        objective(params, k).backward()
        opt.step()
        copies = [t.clone().requires_grad_() for t in theta]
        grads = torch.autograd.grad(objective(copies, k), copies)
        for i, (t, g) in enumerate(zip(theta, grads, strict=True)):
            xi = torch.randn(t.shape, generator=noise, dtype=torch.float64)
            theta[i] = rules[i](t, g, states[i], xi)
        for p, t in zip(params, theta, strict=True):
            assert ((p.detach() - t).norm() / t.norm()).item() < 1e-4, f"step {k}"
    assert any(not torch.equal(p.detach(), q) for p, q in zip(params, problem_params(), strict=True))


# -- reproducibility -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sgld", "psgld", "sghmc"])
def test_generator_makes_chains_reproducible_and_resumable(name):
    def chain(steps, opt=None, params=None):
        params = params or problem_params()
        opt = opt or gw.create(name, params, lr=1e-2, generator=torch.Generator().manual_seed(7))
        for k in range(steps):
            opt.zero_grad()
            objective(params, k).backward()
            torch.randn(3)  # someone else drawing from the global generator changes nothing
            opt.step()
        return params, opt

    straight, _ = chain(10)
    again, _ = chain(10)
    assert all(torch.equal(a, b) for a, b in zip(straight, again, strict=True))

    first, opt = chain(5)
    saved = roundtrip(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in first]
    other = gw.create(name, resumed, lr=1e-2, generator=torch.Generator().manual_seed(999))
    other.load_state_dict(saved)
    for k in range(5, 10):
        other.zero_grad()
        objective(resumed, k).backward()
        other.step()
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))


def test_generator_must_be_a_torch_generator():
    with pytest.raises(TypeError, match="generator"):
        gw.SGLD(problem_params(), lr=1e-2, generator=7)


def test_lr_has_no_default():
    with pytest.raises(TypeError, match="lr"):
        gw.SGLD(problem_params())


def test_temperature_scales_the_noise_variance():
    # zero gradient: theta_T - theta_0 ~ N(0, 2 lr T per step)
    for temperature in (0.25, 1.0, 4.0):
        p = torch.zeros(20000, dtype=torch.float64, requires_grad=True)
        opt = gw.SGLD([p], lr=0.01, temperature=temperature, generator=torch.Generator().manual_seed(0))
        for _ in range(5):
            p.grad = torch.zeros_like(p)
            opt.step()
        assert abs(p.detach().var().item() / (2 * 0.01 * temperature * 5) - 1) < 0.05
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = gw.SGLD([p], lr=0.1, temperature=0.0)
    p.grad = torch.ones(4, dtype=torch.float64)
    opt.step()
    assert torch.equal(p.detach(), torch.full((4,), -0.1, dtype=torch.float64))  # T = 0 is SGD


# -- Bayesian linear regression: a Gaussian posterior in closed form -------------------------------------
N, BATCH, SIGMA, PRIOR_STD, CHAINS = 64, 32, 0.5, 1.0, 200


def regression():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N, 3, generator=g, dtype=torch.float64)
    X[:, 1] = 0.6 * X[:, 0] + 0.8 * X[:, 1]  # correlated features: a correlated posterior
    X[:, 2] = 1.0  # intercept
    truth = torch.tensor([0.5, -1.0, 0.3], dtype=torch.float64)
    y = X @ truth + SIGMA * torch.randn(N, generator=g, dtype=torch.float64)
    precision = X.T @ X / SIGMA**2 + torch.eye(3, dtype=torch.float64) / PRIOR_STD**2
    covariance = torch.linalg.inv(precision)
    mean = covariance @ X.T @ y / SIGMA**2
    return X, y, mean, covariance, torch.linalg.eigvalsh(precision).max().item()


def test_neg_log_posterior_gradient_is_the_full_data_gradient_in_expectation():
    X, y, mean, covariance, _ = regression()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    # every mini-batch of a partition, averaged: exactly the full-data gradient
    grads = []
    for batch in torch.arange(N).reshape(-1, BATCH):
        loss = ((X[batch] @ w - y[batch]) ** 2 / (2 * SIGMA**2)).mean()
        U = neg_log_posterior(loss, N, gaussian_neg_log_prior([w], PRIOR_STD))
        grads.append(torch.autograd.grad(U, w)[0])
    exact = torch.linalg.inv(covariance) @ (w.detach() - mean)  # grad U = H (w - mu)
    torch.testing.assert_close(torch.stack(grads).mean(0), exact, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="dataset_size"):
        neg_log_posterior(torch.tensor(1.0), 0)


# the documented lr rules (see each class's docstring); L = largest curvature of U
DOCUMENTED = {
    "sgld": lambda L: 0.05 / L,
    "psgld": lambda L: 0.05 / math.sqrt(L),
    "sghmc": lambda L: 0.005 / L,
}


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_samples_match_the_closed_form_posterior(name):
    X, y, mean, covariance, L = regression()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(CHAINS, 3, generator=g, dtype=torch.float64).requires_grad_()  # one chain per row
    opt = gw.create(name, [w], lr=DOCUMENTED[name](L), generator=torch.Generator().manual_seed(2))
    collector = SampleCollector([w], burn_in=1500, thin=10, max_samples=200)
    for _ in range(3000):
        batch = torch.rand(CHAINS, N, generator=g).argsort(1)[:, :BATCH]  # each chain its own mini-batch
        Xb, yb = X[batch], y[batch]
        residual = torch.einsum("cbd,cd->cb", Xb, w.detach()) - yb
        # the gradient of neg_log_posterior(mean loss over the batch, N, Gaussian prior), per chain
        w.grad = N * torch.einsum("cbd,cb->cd", Xb, residual) / (BATCH * SIGMA**2) + w.detach() / PRIOR_STD**2
        opt.step()
        collector.step()
    assert len(collector) == 150
    samples = collector.samples()["0"].reshape(-1, 3)
    std = covariance.diag().sqrt()
    mean_error = ((samples.mean(0) - mean) / std).abs().max().item()
    estimate = torch.cov(samples.T)
    cov_error = (torch.linalg.norm(estimate - covariance) / torch.linalg.norm(covariance)).item()
    var_error = (estimate.diag() / covariance.diag() - 1).abs().max().item()
    assert mean_error < 0.2, mean_error
    assert cov_error < 0.25, cov_error
    assert var_error < 0.25, var_error


# -- a two-mode mixture: both modes, in proportion ---------------------------------------------------------
WEIGHTS, MODES, MODE_STD = (0.3, 0.7), (-1.2, 1.2), 0.5


def mixture_grad(x):
    x = x.detach().requires_grad_()
    components = torch.stack([
        math.log(w) - (x - m) ** 2 / (2 * MODE_STD**2) for w, m in zip(WEIGHTS, MODES, strict=True)
    ])
    U = -torch.logsumexp(components, 0).sum()
    return torch.autograd.grad(U, x)[0]


def mixture_cdf(x):
    pairs = zip(WEIGHTS, MODES, strict=True)
    return sum(w * 0.5 * (1 + torch.erf((x - m) / (MODE_STD * math.sqrt(2)))) for w, m in pairs)


MIXTURE = {"sgld": dict(lr=0.01), "psgld": dict(lr=0.02), "sghmc": dict(lr=0.002, friction=0.1)}


@pytest.mark.parametrize("name", sorted(MIXTURE))
def test_visits_both_modes_of_a_mixture_in_proportion(name):
    chains = 2000
    x = torch.full((chains,), MODES[0], dtype=torch.float64, requires_grad=True)  # all start in the small mode
    g = torch.Generator().manual_seed(3)
    opt = gw.create(name, [x], generator=g, **MIXTURE[name])
    collector = SampleCollector([x], burn_in=2000, thin=500, max_samples=10)
    for _ in range(3000):
        x.grad = mixture_grad(x) + 0.5 * torch.randn(chains, generator=g, dtype=torch.float64)  # noisy gradient
        opt.step()
        collector.step()
    samples = collector.samples()["0"]
    assert samples.shape == (2, chains)
    # chi-square goodness of fit on 10 equal-probability bins, each snapshot tested on its own
    grid = torch.linspace(-4, 4, 8001, dtype=torch.float64)
    edges = grid[torch.searchsorted(mixture_cdf(grid), torch.linspace(0.1, 0.9, 9, dtype=torch.float64))]
    for snapshot in samples:
        counts = torch.bincount(torch.bucketize(snapshot, edges), minlength=10).double()
        expected = chains / 10
        chi2 = ((counts - expected) ** 2 / expected).sum()
        p_value = torch.special.gammaincc(torch.tensor(4.5, dtype=torch.float64), chi2 / 2).item()
        assert p_value > 1e-3, (counts.tolist(), p_value)
        right = (snapshot > 0).double().mean().item()
        expected_right = 1.0 - mixture_cdf(torch.tensor(0.0, dtype=torch.float64)).item()
        assert abs(right - expected_right) < 0.05, (right, expected_right)


def test_sghmc_noise_estimate_stops_injecting_noise_the_gradient_already_brings():
    # gradients of variance ~1e4: beta_hat = lr V / 2 >> friction, so no noise is injected after step 1
    # (on step 1 the estimate of V is 0); without the estimate, noise is injected at every step
    for estimate_noise in (True, False):
        p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
        opt = gw.SGHMC([p], lr=0.1, estimate_noise=estimate_noise, generator=torch.Generator().manual_seed(0))
        injected = []
        for k in range(20):
            p.grad = torch.full((6,), 100.0 * (-1) ** k, dtype=torch.float64)
            before = opt.state[p]["momentum_buffer"].clone() if k else torch.zeros(6, dtype=torch.float64)
            opt.step()
            drift = 0.9 * before + 0.1 * p.grad
            injected.append((opt.state[p]["momentum_buffer"] - drift).abs().max().item())
        if estimate_noise:
            assert injected[0] > 0 and max(injected[1:]) < 1e-12
        else:
            assert min(injected) > 0
