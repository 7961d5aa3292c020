"""compile= on the samplers (SGLD, pSGLD, SGHMC): what the compiled noise must satisfy, since compiled and eager
draw different random streams (inductor generates the noise inside its graph).

On a Gaussian target the chains are linear, so the distribution of the iterate after K steps is known exactly:
the tolerances below are z standard errors of C independent chains (their last iterates), plus nothing else.
"""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch

import gradwise as gw
from checkpoint_io import roundtrip

CHAINS = 20000  # independent chains: the effective sample size of one snapshot of the last iterates
Z = 4.5  # standard errors: a correct sampler fails a check with probability below 1e-5
MEAN = torch.tensor([1.0, -0.5], dtype=torch.float64)  # the target N(MEAN, diag(STD^2)), per chain
STD = torch.tensor([1.0, 0.5], dtype=torch.float64)
CURVATURE = 1.0 / STD**2  # h: the Hessian of U(x) = sum (x - MEAN)^2 / (2 STD^2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(opt, x, steps, grad=None):
    """`steps` sampler steps on the Gaussian target (or with the gradient `grad(x)`), the iterates after each."""
    grad = grad or (lambda x: (x - MEAN) * CURVATURE)
    trajectory = []
    for _ in range(steps):
        g = grad(x.detach())
        if x.grad is None:
            x.grad = g
        else:
            x.grad.copy_(g)  # in place: under compile, x.grad is a view of the flat gradient buffer
        opt.step()
        trajectory.append(x.detach().clone())
    return torch.stack(trajectory)


@contextlib.contextmanager
def no_fallback():
    """Fails if the compiled step falls back to eager (it warns: "... runs eagerly: ...")."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eagerly", category=UserWarning)
        yield


def start():
    return MEAN.expand(CHAINS, 2).clone().requires_grad_()  # every chain starts at the mean


def exact_variance(transition, noise, steps):
    """Variance of the position after `steps` steps of z' = A z + B xi from z = 0, per coordinate."""
    variances = []
    for h in CURVATURE.tolist():
        A, B = transition(h), noise
        sigma = torch.zeros_like(A)
        for _ in range(steps):
            sigma = A @ sigma @ A.T + B @ B.T
        variances.append(sigma[0, 0])
    return torch.stack(variances)


def sgld_variance(lr, steps):
    # e = x - mean: e' = (1 - lr h) e + sqrt(2 lr) xi
    return exact_variance(lambda h: torch.tensor([[1.0 - lr * h]], dtype=torch.float64),
                          torch.tensor([[math.sqrt(2 * lr)]], dtype=torch.float64), steps)


def sghmc_variance(lr, friction, steps):
    # v' = (1 - friction) v - lr h e + sqrt(2 lr friction) xi;  e' = e + v'  (z = (e, v))
    s = math.sqrt(2 * lr * friction)
    return exact_variance(
        lambda h: torch.tensor([[1.0 - lr * h, 1.0 - friction], [-lr * h, 1.0 - friction]], dtype=torch.float64),
        torch.tensor([[s], [s]], dtype=torch.float64), steps)


def assert_moments(samples, mean, variance, other=None):
    """Sample mean and variance of C independent draws against the exact ones, or (other given) two samples from
    the same law against each other; Z standard errors (variance: a Gaussian's, sqrt(2 / (C - 1)) relative)."""
    n = samples.shape[0]
    if other is not None:
        mean, variance = other.mean(0), other.var(0)
        spread = math.sqrt(2.0)  # the reference is an estimate too: the difference's standard error
    else:
        spread = 1.0
    mean_error = ((samples.mean(0) - mean) / (variance / n).sqrt()).abs().max().item()
    assert mean_error < Z * spread, (samples.mean(0), mean)
    variance_error = ((samples.var(0) / variance - 1) / math.sqrt(2.0 / (n - 1))).abs().max().item()
    assert variance_error < Z * spread, (samples.var(0), variance)


def assert_target(variance, tolerance):
    """The chain's exact variance after K steps is the posterior's up to the discretisation bias."""
    assert ((variance / STD**2 - 1).abs() < tolerance).all(), variance / STD**2


# -- the posterior moments -----------------------------------------------------------------------------------
def test_sgld_inductor_samples_the_gaussian_target_and_is_seeded_by_manual_seed():
    lr, steps = 0.005, 600  # lr h <= 0.02: the stationary variance is 1 / (h (1 - lr h / 2)), within 1%
    variance = sgld_variance(lr, steps)
    assert_target(variance, 0.015)

    def chain(seed, steps):
        torch.manual_seed(seed)
        x = start()
        opt = gw.SGLD([x], lr=lr, compile="inductor")
        with no_fallback():
            return run(opt, x, steps)

    first = chain(0, steps)
    assert_moments(first[-1], MEAN, variance)
    assert torch.equal(first[:50], chain(0, 50))  # torch.manual_seed makes the compiled chain reproducible
    other = chain(1, 50)
    assert ((first[:50] - other) != 0).all()  # another seed: another draw everywhere


def test_sghmc_compiled_samples_the_gaussian_target():
    lr, friction, steps = 0.002, 0.1, 600
    variance = sghmc_variance(lr, friction, steps)
    assert_target(variance, 0.02)
    torch.manual_seed(0)
    x = start()
    opt = gw.SGHMC([x], lr=lr, friction=friction, compile="aot_eager")
    with no_fallback():
        trajectory = run(opt, x, steps)
    assert_moments(trajectory[-1], MEAN, variance)


def test_psgld_compiled_samples_the_same_law_as_eager():
    # the preconditioner follows the chain, so the law after K steps has no closed form: compare it with the
    # eager sampler's (checked against the paper's rule in tests/optim/test_langevin.py), other seed
    hyper, steps = dict(lr=0.02, alpha=0.99, eps=1.0), 600
    samples = {}
    for backend in (False, "aot_eager"):
        torch.manual_seed(0 if backend else 1)
        x = (MEAN + STD * torch.randn(CHAINS, 2, dtype=torch.float64)).requires_grad_()  # posterior draws
        opt = gw.PSGLD([x], compile=backend, **hyper)
        with no_fallback():
            samples[backend] = run(opt, x, steps)[-1]
    assert_moments(samples["aot_eager"], None, None, other=samples[False])
    # and near the posterior: the dropped Gamma term inflates the variance, about 15% at alpha = 0.99 (PSGLD's
    # docstring)
    assert_target(samples["aot_eager"].var(0), 0.25)


# -- the noise itself ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,backend", [("sgld", "inductor"), ("psgld", "aot_eager"), ("sghmc", "aot_eager")])
def test_compiled_noise_is_fresh_at_every_step_and_coordinate(name, backend):
    # zero gradient, lr fixed: each step's increment of the position (SGLD, pSGLD) or of the momentum (SGHMC) is
    # the injected noise; two parameters share one flat buffer under compile, and must not share draws
    n, steps = 4096, 6
    torch.manual_seed(0)
    params = [torch.zeros(n, dtype=torch.float64, requires_grad=True),
              torch.zeros(64, n // 64, dtype=torch.float64, requires_grad=True)]
    opt = gw.create(name, params, lr=0.01, compile=backend, **({"eps": 1.0} if name == "psgld" else {}))
    paths = []
    with no_fallback():
        for _ in range(steps + 1):
            for p in params:
                p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
            opt.step()
            tracked = [opt.state[p]["momentum_buffer"] for p in params] if name == "sghmc" else params
            paths.append(torch.cat([t.detach().reshape(-1) for t in tracked]))
    (layout,) = opt._compiled.layouts.values()  # the two parameters in one flat buffer
    assert len(layout.members) == 2
    paths = torch.stack(paths)
    if name == "sghmc":  # b' = (1 - friction) b - noise
        noise = -(paths[1:] - 0.9 * paths[:-1])
    else:
        noise = paths[1:] - paths[:-1]
    noise = noise / noise.std()
    bound = Z / math.sqrt(n)  # the standard error of a correlation of n independent pairs
    halves = noise[:, :n], noise[:, n:]
    # no draw repeated (inductor draws float32 numbers for float64 noise: a few coincide by chance)
    assert noise.unique().numel() > 0.999 * noise.numel()
    assert noise.std(1).min() > 0.9 and noise.mean(1).abs().max() < bound
    for k in range(steps - 1):  # lag-1 autocorrelation in time: each step draws afresh
        assert torch.corrcoef(noise[k : k + 2])[0, 1].abs() < bound
    for a in halves:  # neighbouring coordinates, and the two parameters
        assert torch.corrcoef(torch.stack([a[:, :-1].reshape(-1), a[:, 1:].reshape(-1)]))[0, 1].abs() < bound
    assert torch.corrcoef(torch.stack([halves[0].reshape(-1), halves[1].reshape(-1)]))[0, 1].abs() < bound


# -- an explicit generator -------------------------------------------------------------------------------------
# The kernels cannot draw from a torch.Generator inside a graph: the sampler draws each parameter's noise before
# the step, in the eager order, into state[DRAWN], which the compiled kernels read.
def generator_params():
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 2, 3)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_()
            for dtype in (torch.float64, torch.float32) for s in shapes]


def generator_groups(params):
    # two groups, each with both dtypes: compiled, two buckets per group, drawn in the eager order
    return [{"params": [params[0], params[3], params[1]]}, {"params": [params[4], params[2], params[5]], "lr": 5e-3}]


def objective(params, k):
    return sum((torch.sin(p * (1.0 + 0.3 * k + i)) * p).sum() + 0.2 * (p**2).sum() for i, p in enumerate(params))


def generator_chain(name, backend, steps, seed=3, hyper=None, params=None, opt=None, start_step=0, one=False):
    params = params or generator_params()
    groups = [{"params": params[:3]}] if one else generator_groups(params)  # one: float64 in one group
    opt = opt or gw.create(name, groups, compile=backend,
                           generator=torch.Generator().manual_seed(seed), **{"lr": 1e-2, **(hyper or {})})
    trajectory = []
    for k in range(start_step, start_step + steps):
        opt.zero_grad(set_to_none=False)
        objective(params, k).backward()
        opt.step()
        trajectory.append(torch.cat([p.detach().double().reshape(-1) for p in params]))
    return torch.stack(trajectory), opt, params


GENERATOR_CASES = [
    ("sgld", "inductor", {}),
    ("sgld", "aot_eager", {}),
    ("psgld", "aot_eager", {}),
    ("sghmc", "aot_eager", {}),
    ("sghmc", "aot_eager", {"estimate_noise": True}),
]


@pytest.mark.parametrize("name,backend,hyper", GENERATOR_CASES,
                         ids=[f"{n}-{b}-{i}" for i, (n, b, _) in enumerate(GENERATOR_CASES)])
def test_compiled_with_a_generator_follows_the_eager_chain(name, backend, hyper):
    one = backend == "inductor"  # one graph under inductor: the float64 parameters in one group
    eager, reference, _ = generator_chain(name, False, 20, hyper=hyper, one=one)
    with no_fallback():
        compiled, opt, _ = generator_chain(name, backend, 20, hyper=hyper, one=one)
    # the same draws in the same order: the generators end in the same state ...
    assert torch.equal(opt.generator.get_state(), reference.generator.get_state())
    # ... and the chains agree up to the compiled step's rounding (another stream would be ~0.1 away); inductor's
    # SGLD graph rounds as eager does: bit-equal
    if backend == "inductor":
        assert torch.equal(compiled, eager)
    else:
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-6)  # float32 parameters
        float64 = sum(p.numel() for p in generator_params()[:3])
        torch.testing.assert_close(compiled[:, :float64], eager[:, :float64], rtol=1e-12, atol=1e-12)
    assert opt._compiled.layouts, "the flat path ran"
    # the drawn noise is working memory: not in the state_dict, whose keys are eager's
    saved, expected = opt.state_dict()["state"], reference.state_dict()["state"]
    assert {i: sorted(s) for i, s in saved.items()} == {i: sorted(s) for i, s in expected.items()}


@pytest.mark.parametrize("name", ["sgld", "sghmc"])
def test_compiled_with_a_generator_resumes_the_same_stream(name):
    straight, _, _ = generator_chain(name, "aot_eager", 10)
    first, opt, params = generator_chain(name, "aot_eager", 5)
    saved = roundtrip(opt.state_dict())
    resumed = [p.detach().clone().requires_grad_() for p in params]
    other = gw.create(name, generator_groups(resumed), lr=1e-2, compile="aot_eager",
                      generator=torch.Generator().manual_seed(999))
    other.load_state_dict(saved)
    with no_fallback():
        rest, _, _ = generator_chain(name, "aot_eager", 5, params=resumed, opt=other, start_step=5)
    assert torch.equal(torch.cat([first, rest]), straight)


def test_compiled_with_a_generator_and_a_state_storage_warns_once_and_runs_eagerly():
    # a state storage (here bfloat16 state) converts every state tensor: such a group keeps drawing in its kernel,
    # which captures the generator, so it runs eagerly, exactly as without compile
    hyper = {"state_dtype": torch.bfloat16}
    eager, _, _ = generator_chain("sghmc", False, 10, hyper=hyper)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled, _, _ = generator_chain("sghmc", "aot_eager", 10, hyper=hyper)
    messages = [str(w.message) for w in caught if "runs eagerly" in str(w.message)]
    assert len(messages) == 2 and all("Generator" in m for m in messages), messages  # once per param group
    assert torch.equal(compiled, eager)
