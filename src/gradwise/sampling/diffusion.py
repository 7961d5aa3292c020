"""Score-based diffusion samplers that borrow optimizer ideas (momentum, adaptive steps, Langevin noise).

Contract
--------
`sample(denoiser, x, sigmas, method="heun", generator=None, return_trajectory=False, **options)`

* `denoiser(x, sigma) -> x0_estimate` is the EDM denoiser of data x_sigma = x_0 + sigma * eps (use
  `adapters` for epsilon-, v- and discrete-time VP models). It receives x in the caller's dtype and sigma as
  a tensor of that dtype and device: 0-d for every method except "adaptive", whose samples carry their own
  noise levels as shape (B, 1, ..., 1). A 0-d tensor keeps a `torch.compile`d denoiser from recompiling.
* `x` is the starting point, already at noise level `sigmas[0]` (typically `sigmas[0] * randn`); it may have
  any shape. The leading axis is the batch axis where a method needs one (per-sample norms of "langevin"
  and "adaptive"); a 1-D x is one sample.
* `sigmas` is a strictly decreasing sequence of noise levels >= 0 (a schedule from `schedules`, usually
  ending in 0). Coefficients are computed in float64 on the host; the state is kept in float64 for float64
  inputs and in float32 otherwise (bfloat16 and float16 inputs are upcast and the result cast back).
* The result is always a `SampleResult`: `.sample` (x's dtype and shape), `.nfe` (the number of denoiser
  calls, each on the whole batch), `.sigmas` (the noise levels the returned trajectory sits at) and
  `.trajectory` (a list of states, `None` unless `return_trajectory=True`).
* Every stochastic method draws its noise with `torch.randn(..., generator=generator)` in a fixed order,
  so a seeded generator makes the result reproducible; the generator must live on x's device (CUDA
  samples need a CUDA generator). Noise is drawn in the state dtype, so float32 and float64 runs with the
  same seed see different noise.
* Sampling runs under `torch.no_grad()`; x itself is never modified.

Methods: "euler", "heun", "ddim", "deis", "dpmpp_2m", "dpmpp_2m_sde", "plms", "euler_maruyama", "langevin", "hb",
"ghvb", "adaptive", "restart"; `methods()` lists them and each function's docstring states its update.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..core.validation import Interval
from .schedules import karras_sigmas

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class DenoiserError(ValueError):
    """The denoiser returned something unusable: a non-tensor, a wrong shape, or non-finite values."""


@dataclass
class SampleResult:
    """What `sample` returns: the final `sample`, `nfe` denoiser evaluations, the `sigmas` the trajectory
    visits (float64, CPU) and the `trajectory` itself (states in x's dtype) when asked for."""

    sample: torch.Tensor
    nfe: int
    sigmas: torch.Tensor
    trajectory: list[torch.Tensor] | None = None


class _Run:
    """Per-call machinery shared by the methods: counted, checked denoiser calls, noise and recording."""

    def __init__(self, denoiser: Denoiser, x: torch.Tensor, generator: torch.Generator | None,
                 record: bool, check_finite: bool):
        self.denoiser, self.generator, self.check_finite = denoiser, generator, check_finite
        self.in_dtype, self.shape, self.device = x.dtype, x.shape, x.device
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.nfe = 0
        self.trajectory: list[torch.Tensor] | None = [] if record else None
        self.levels: list[float] = []

    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        s = torch.as_tensor(sigma, dtype=self.in_dtype, device=self.device)
        out = self.denoiser(x.to(self.in_dtype), s)
        self.nfe += 1
        if not isinstance(out, torch.Tensor):
            raise DenoiserError(f"denoiser must return a tensor, got {type(out).__name__}")
        if out.shape != self.shape:
            raise DenoiserError(f"denoiser returned shape {tuple(out.shape)} for input shape {tuple(self.shape)};"
                                " it must return an x0 estimate of the same shape")
        if self.check_finite and not bool(torch.isfinite(out).all()):
            where = f"sigma={float(sigma):.6g}" if not torch.is_tensor(sigma) or sigma.numel() == 1 else "sigma"
            raise DenoiserError(f"denoiser returned non-finite values (NaN or inf) at {where} "
                                f"(evaluation {self.nfe}); pass check_finite=False to skip this check")
        return out.to(self.dtype)

    def noise(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator, dtype=self.dtype, device=self.device)

    def record(self, x: torch.Tensor, sigma: float) -> None:
        self.levels.append(float(sigma))
        if self.trajectory is not None:
            self.trajectory.append(x.to(self.in_dtype).clone())


_METHODS: dict[str, Callable] = {}


def _method(name: str):
    def deco(fn):
        _METHODS[name] = fn
        return fn
    return deco


def methods() -> list[str]:
    """Names accepted by `sample(method=...)`."""
    return sorted(_METHODS)


def _check_sigmas(sigmas) -> list[float]:
    try:
        s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"sigmas must be a 1-D sequence of numbers, got {type(sigmas).__name__}") from err
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 noise levels, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError(f"sigmas must be finite, got {s.tolist()}")
    if bool((s < 0).any()):
        raise ValueError(f"sigmas must be >= 0, got min {float(s.min()):.6g}: accepted range [0, inf)")
    steps = s[1:] - s[:-1]
    if not bool((steps < 0).all()):
        i = int((steps >= 0).nonzero()[0])
        raise ValueError(f"sigmas must be strictly decreasing, got sigmas[{i}]={float(s[i]):.6g} <= "
                         f"sigmas[{i + 1}]={float(s[i + 1]):.6g}")
    return s.tolist()


def _check_options(fn: Callable, method: str, options: dict) -> None:
    params = inspect.signature(fn).parameters
    allowed = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for method={method!r}; accepted: {allowed}")


def sample(denoiser: Denoiser, x: torch.Tensor, sigmas: Sequence[float] | torch.Tensor, method: str = "heun",
           generator: torch.Generator | None = None, return_trajectory: bool = False,
           check_finite: bool = True, **options) -> SampleResult:
    """Integrate from noise level `sigmas[0]` down to `sigmas[-1]` with `method`; see the module docstring.

    `check_finite` checks every denoiser output for NaN/inf (one host sync per evaluation) and raises
    `DenoiserError` naming the noise level. `options` are the method's keyword options (its docstring).
    """
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable as denoiser(x, sigma), got {type(denoiser).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not one of {methods()}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    levels = _check_sigmas(sigmas)
    fn = _METHODS[method]
    _check_options(fn, method, options)
    run = _Run(denoiser, x, generator, return_trajectory, check_finite)
    state = x.detach().to(run.dtype)
    run.record(state, levels[0])
    with torch.no_grad():
        out = fn(run, state, levels, **options)
    return SampleResult(sample=out.to(x.dtype), nfe=run.nfe, sigmas=torch.tensor(run.levels, dtype=torch.float64),
                        trajectory=run.trajectory)


def steps_for_nfe(method: str, nfe: int, **options) -> int:
    """The largest number of steps (len(sigmas) - 1, schedule ending at 0) for which `method` with `options`
    uses at most `nfe` denoiser evaluations; for comparing methods at equal cost. Not defined for
    "adaptive", whose cost follows from its tolerances."""
    _check_int("nfe", nfe, 1)
    if method not in _METHODS:
        raise ValueError(f"method={method!r} is not one of {methods()}")
    if method == "adaptive":
        raise ValueError("method='adaptive' chooses its own steps: set atol/rtol instead of a step count")
    if method == "heun":
        steps = (nfe + 1) // 2
    elif method == "plms":
        steps = nfe - 1
    elif method == "restart":
        steps = (nfe + 1 - 2 * options.get("restart_repeats", 2) * options.get("restart_steps", 3)) // 2
    elif method == "langevin":
        per_level = options.get("corrector_steps", 1) + (1 if options.get("predictor") else 0)
        steps = nfe // per_level if options.get("predictor") else (nfe - 1) // per_level
    else:
        steps = nfe
    if steps < 1:
        raise ValueError(f"nfe={nfe} is too small for method={method!r} with {options}")
    return steps


# ----------------------------------------------------------------------------------------------------------
# option checks
_Unit = Interval(0.0, 1.0)
_Positive = Interval(0.0, math.inf, low_closed=False)
_NonNegative = Interval(0.0, math.inf)


def _check_int(name: str, value, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r} must be an int in {span}")
    return value


def _check_choice(name: str, value, choices: tuple) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}")
    return value


# ----------------------------------------------------------------------------------------------------------
# deterministic methods (probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma)


def _heun_step(run: _Run, x: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    d = (x - run.denoise(x, s)) / s
    x_euler = x + (s_next - s) * d
    if s_next == 0:
        return x_euler
    d_next = (x_euler - run.denoise(x_euler, s_next)) / s_next
    return x + (s_next - s) * 0.5 * (d + d_next)


@_method("euler")
def _euler(run: _Run, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Euler on the probability-flow ODE: x <- x + (sigma' - sigma) (x - D(x, sigma)) / sigma. 1 NFE/step.
    Karras et al. 2022 (arXiv:2206.00364), Algorithm 1 without the correction."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + (s_next - s) * ((x - run.denoise(x, s)) / s)
        run.record(x, s_next)
    return x


@_method("heun")
def _heun(run: _Run, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """EDM's 2nd-order Heun: an Euler predictor to sigma', then the trapezoidal average of the two slopes;
    the last step to sigma' = 0 is plain Euler. 2 NFE/step (1 on that last step).
    Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models", Algorithm 1."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = _heun_step(run, x, s, s_next)
        run.record(x, s_next)
    return x


def _ancestral_split(s: float, s_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 = s_next^2 and DDIM's
    sigma_up = eta * s_next * sqrt(s^2 - s_next^2) / s (Song et al. 2021, eq. 16, written in EDM sigmas)."""
    up = eta * s_next * math.sqrt(max(s * s - s_next * s_next, 0.0)) / s
    up = min(up, s_next)
    return math.sqrt(max(s_next * s_next - up * up, 0.0)), up


@_method("ddim")
def _ddim(run: _Run, x: torch.Tensor, sigmas: list[float], *, eta: float = 0.0) -> torch.Tensor:
    """DDIM: x <- D + sigma_down (x - D) / sigma + sigma_up z, with (sigma_down, sigma_up) from `eta` in
    [0, 1] (0: deterministic, the exact probability-flow step in the data-prediction form; 1: DDPM's
    ancestral variance). Song, Meng, Ermon, "Denoising Diffusion Implicit Models", ICLR 2021,
    arXiv:2010.02502, eq. (12) with alpha_bar = 1 / (1 + sigma^2). 1 NFE/step."""
    _Unit.check("eta", eta)
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = run.denoise(x, s)
        down, up = _ancestral_split(s, s_next, eta)
        x = denoised + (down / s) * (x - denoised)
        if up > 0:
            x = x + up * run.noise()
        run.record(x, s_next)
    return x


@_method("dpmpp_2m")
def _dpmpp_2m(run: _Run, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """DPM-Solver++(2M): exponential integrator in lambda = -log sigma on the data prediction, with a
    two-step (midpoint) correction D_2 = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}, r = h_{i-1} / h_i:
    x <- (sigma'/sigma) x + (1 - sigma'/sigma) D_2. First step and the final step to 0 are first order.
    Lu et al., "DPM-Solver++", 2022, arXiv:2211.01095, Algorithm 2. 1 NFE/step."""
    old: torch.Tensor | None = None
    h_last: float | None = None
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = run.denoise(x, s)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            target = denoised
            if old is not None:
                assert h_last is not None  # set on the step that set `old`
                r = h_last / h
                target = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
            x = (s_next / s) * x + (1 - s_next / s) * target
            h_last = h
        old = denoised
        run.record(x, s_next)
    return x


def _deis_weights(sigma: float, sigma_next: float, past: list[float]) -> list[float]:
    """Weights w_j with sum_j w_j e_j = integral from sigma to sigma_next of the polynomial in log(sigma)
    through (past[j], e_j), past[0] = sigma: the Lagrange basis in tau = log(s / sigma), integrated exactly
    against d s = sigma e^tau d tau with the moments M_k = int_0^{-h} tau^k e^tau d tau, h = log(sigma/sigma_next),
    M_0 = e^{-h} - 1, M_k = (-h)^k e^{-h} - k M_{k-1}."""
    h = math.log(sigma / sigma_next)
    nodes = [math.log(s / sigma) for s in past]
    moments = [math.expm1(-h)]
    for k in range(1, len(nodes)):
        moments.append((-h) ** k * math.exp(-h) - k * moments[-1])
    weights = []
    for j, node in enumerate(nodes):
        basis = [1.0]                    # coefficients of L_j(tau), lowest power first
        for m, other in enumerate(nodes):
            if m != j:
                scale = node - other
                basis = [(a - other * b) / scale for a, b in zip([0.0, *basis], [*basis, 0.0], strict=True)]
        weights.append(sigma * sum(c * moment for c, moment in zip(basis, moments, strict=True)))
    return weights


@_method("deis")
def _deis(run: _Run, x: torch.Tensor, sigmas: list[float], *, order: int = 3,
          lower_order_final: bool = True) -> torch.Tensor:
    """DEIS, the multistep exponential integrator in its "log-rho" form (diffusers' algorithm_type="deis"):
    the probability-flow ODE dx/dsigma = e(x, sigma), e = (x - D) / sigma, is integrated exactly over a
    polynomial in log(sigma) that extrapolates the last k noise predictions:
    x <- x + sum_j w_j e_{i-j},  w_j = int_sigma^sigma' L_j(log s) ds,  L_j the Lagrange basis on
    log sigma_i, ..., log sigma_{i-k+1}; k = min(order, steps taken + 1). Order 1 is DDIM (eta = 0):
    x <- x + (sigma' - sigma) e. As in diffusers, with lower_order_final and fewer than 15 steps the last
    step is first order and the one before at most second order. The step to sigma' = 0 returns D (the
    order-1 step; polynomials in log sigma cannot reach 0). Zhang & Chen, "Fast Sampling of Diffusion
    Models with Exponential Integrator", ICLR 2023, arXiv:2204.13902: the multistep AB-DEIS family with
    polynomial degree k - 1, extrapolated in log rho (rho = sigma) as in diffusers. 1 NFE/step."""
    _check_int("order", order, 1, 3)
    if not isinstance(lower_order_final, bool):
        raise ValueError(f"lower_order_final={lower_order_final!r} must be a bool")
    steps = len(sigmas) - 1
    history: list[torch.Tensor] = []
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        denoised = run.denoise(x, s)
        history = ([(x - denoised) / s] + history)[:order]    # newest first
        if s_next == 0:
            x = denoised
        else:
            k = min(order, i + 1)
            if lower_order_final and steps < 15:
                k = min(k, steps - i)
            weights = _deis_weights(s, s_next, sigmas[i::-1][:k])
            for w, e in zip(weights, history, strict=False):
                x = x + w * e
        run.record(x, s_next)
    return x


@_method("plms")
def _plms(run: _Run, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """PNDM's pseudo linear multistep (PLMS): the DDIM transfer x <- x + (sigma' - sigma) e' with e' an
    Adams-Bashforth combination of past noise predictions e = (x - D) / sigma:
    (3e_0 - e_1)/2, (23e_0 - 16e_1 + 5e_2)/12, (55e_0 - 59e_1 + 37e_2 - 9e_3)/24. The first step is a
    pseudo improved-Euler step (average of e at x and at the Euler predictor), as in the diffusers
    implementation with skip_prk_steps. Liu et al., "Pseudo Numerical Methods for Diffusion Models on
    Manifolds", ICLR 2022, arXiv:2202.09778, eq. (12). 1 NFE/step plus 1."""
    history: list[torch.Tensor] = []
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        e = (x - run.denoise(x, s)) / s
        history = (history + [e])[-4:]
        if i == 0 and s_next > 0:
            x_pred = x + (s_next - s) * e
            e = 0.5 * (e + (x_pred - run.denoise(x_pred, s_next)) / s_next)
        else:
            e = _adams_bashforth(history, 1.0)
        x = x + (s_next - s) * e
        run.record(x, s_next)
    return x


def _adams_bashforth(history: list[torch.Tensor], beta: float) -> torch.Tensor:
    """GHVB's combination of the last k velocities (Wizadwongsa et al. 2023, eq. 14), divided by beta; with
    beta = 1 these are the Adams-Bashforth coefficients of order k = len(history) (1 to 4)."""
    b = beta
    v = history[::-1]   # v[0] newest
    k = len(v)
    if k == 1:
        return v[0]
    if k == 2:
        out = ((2 + b) * v[0] - (2 - b) * v[1]) / 2
    elif k == 3:
        out = ((18 + 5 * b) * v[0] - (24 - 8 * b) * v[1] + (6 - b) * v[2]) / 12
    else:
        out = ((46 + 9 * b) * v[0] - (78 - 19 * b) * v[1] + (42 - 5 * b) * v[2] - (10 - b) * v[3]) / 24
    return out / b


# ----------------------------------------------------------------------------------------------------------
# stochastic methods


@_method("dpmpp_2m_sde")
def _dpmpp_2m_sde(run: _Run, x: torch.Tensor, sigmas: list[float], *, eta: float = 1.0) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (midpoint): with h = log(sigma/sigma'),
    x <- (sigma'/sigma) e^{-eta h} x + (1 - e^{-(1+eta)h}) (D + (D - D_prev) / (2r)) + sigma' sqrt(1 - e^{-2 eta h}) z,
    r = h_prev / h (no correction on the first step); the final step to 0 returns D. eta = 1 is the paper's
    SDE solver; eta = 0 recovers dpmpp_2m. Lu et al. 2022, arXiv:2211.01095, Appendix (SDE-DPM-Solver++2M).
    1 NFE/step."""
    _NonNegative.check("eta", eta)
    old: torch.Tensor | None = None
    h_last: float | None = None
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = run.denoise(x, s)
        if s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            decay = -math.expm1(-(1 + eta) * h)
            x = (s_next / s) * math.exp(-eta * h) * x + decay * denoised
            if old is not None:
                assert h_last is not None  # set on the step that set `old`
                x = x + (0.5 * decay * h / h_last) * (denoised - old)
            if eta > 0:
                x = x + s_next * math.sqrt(-math.expm1(-2 * eta * h)) * run.noise()
            h_last = h
        old = denoised
        run.record(x, s_next)
    return x


def _reverse_diffusion_step(run: _Run, x: torch.Tensor, s: float, s_next: float) -> torch.Tensor:
    denoised = run.denoise(x, s)
    x_mean = x + (1 - (s_next / s) ** 2) * (denoised - x)     # x + (s^2 - s'^2) score
    if s_next == 0:
        return x_mean
    return x_mean + math.sqrt(s * s - s_next * s_next) * run.noise()


@_method("euler_maruyama")
def _euler_maruyama(run: _Run, x: torch.Tensor, sigmas: list[float]) -> torch.Tensor:
    """Euler-Maruyama on the reverse VE SDE dx = -d[sigma^2] grad log p_sigma(x) + dw (time = sigma^2):
    x <- x + (sigma^2 - sigma'^2) score + sqrt(sigma^2 - sigma'^2) z, score = (D - x) / sigma^2; the final
    step to 0 adds no noise (it returns D). Song et al., "Score-Based Generative Modeling through SDEs",
    ICLR 2021, arXiv:2011.13456 (the reverse-diffusion predictor for the VE SDE). 1 NFE/step."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = _reverse_diffusion_step(run, x, s, s_next)
        run.record(x, s_next)
    return x


def _sample_norms(t: torch.Tensor) -> torch.Tensor:
    flat = t.reshape(t.shape[0], -1) if t.ndim >= 2 else t.reshape(1, -1)
    return flat.norm(dim=1)


def _langevin_step(run: _Run, x: torch.Tensor, s: float, snr: float, step_size: float | None,
                   sigma_last: float) -> torch.Tensor:
    score = (run.denoise(x, s) - x) / (s * s)
    z = run.noise()
    if step_size is None:   # Song et al. 2021: eps = 2 (snr ||z|| / ||score||)^2, norms averaged over the batch
        eps = 2 * (snr * _sample_norms(z).mean() / _sample_norms(score).mean().clamp_min(1e-30)) ** 2
    else:                   # Song & Ermon 2019: eps_i = step_size * sigma_i^2 / sigma_L^2
        eps = torch.as_tensor(step_size * (s / sigma_last) ** 2, dtype=x.dtype, device=x.device)
    return x + eps * score + torch.sqrt(2 * eps) * z


@_method("langevin")
def _langevin(run: _Run, x: torch.Tensor, sigmas: list[float], *, corrector_steps: int = 1,
              snr: float = 0.16, step_size: float | None = None, predictor: str | None = None) -> torch.Tensor:
    """Annealed Langevin dynamics (SGLD on the noised data): at each level sigma, `corrector_steps` of
    x <- x + eps score + sqrt(2 eps) z, score = (D - x) / sigma^2.
    Step size eps:
      * `step_size` given: Song & Ermon's rule eps_i = step_size * sigma_i^2 / sigma_min^2 ("Generative Modeling
        by Estimating Gradients of the Data Distribution", NeurIPS 2019, arXiv:1907.05600, Algorithm 1; stable
        for step_size / sigma_min^2 < 1, the paper uses 2e-5 at sigma_min = 0.01, a ratio of 0.2).
      * otherwise, with a predictor: the signal-to-noise rule eps = 2 (snr ||z|| / ||score||)^2, norms averaged
        over the batch (Song et al. 2021, arXiv:2011.13456, Algorithm 5; snr=0.16 is their CIFAR-10 VE value).
      * otherwise (pure annealed Langevin): Song & Ermon's rule with the paper's ratio, step_size = 0.2 sigma_min^2.
        The SNR rule is not used here because it scales eps by the current score, so a chain that lags behind
        the annealing (|x| >> sigma) takes vanishing steps and never catches up (measured on the test bed).
    `predictor="euler_maruyama"` makes it a predictor-corrector sampler (corrector at sigma, then a
    reverse-diffusion predictor step to sigma'); without a predictor the chain visits every positive level
    and, when the schedule ends at 0, finishes with one denoising step x <- D(x, sigma_min); the trajectory
    then holds the state after each level's corrector steps.
    NFE: corrector_steps per level, plus 1 per predictor step or for the final denoising."""
    _check_int("corrector_steps", corrector_steps, 0 if predictor else 1)
    _Positive.check("snr", snr)
    if step_size is not None:
        _Positive.check("step_size", step_size)
    _check_choice("predictor", predictor, (None, "euler_maruyama"))
    positive = [s for s in sigmas if s > 0]
    sigma_last = positive[-1]
    if predictor is None and step_size is None:
        step_size = 0.2 * sigma_last ** 2
    if predictor is None:
        for s in positive:
            for _ in range(corrector_steps):
                x = _langevin_step(run, x, s, snr, step_size, sigma_last)
            run.record(x, s)
        if sigmas[-1] == 0:
            x = run.denoise(x, sigma_last)
            run.record(x, 0.0)
        return x
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        for _ in range(corrector_steps):
            x = _langevin_step(run, x, s, snr, step_size, sigma_last)
        x = _reverse_diffusion_step(run, x, s, s_next)
        run.record(x, s_next)
    return x


# ----------------------------------------------------------------------------------------------------------
# momentum, adaptivity, restart


@_method("hb")
def _heavy_ball(run: _Run, x: torch.Tensor, sigmas: list[float], *, beta: float = 0.8,
                base: str = "dpmpp_2m", order: int = 4) -> torch.Tensor:
    """Polyak heavy-ball momentum on a multistep solver's update direction (Wizadwongsa et al., "Diffusion
    Sampling with Momentum for Mitigating Divergence Artifacts", ICLR 2024, arXiv:2307.11118):
    v <- (1 - beta) v + beta u, where u is the base solver's direction and the step uses v; beta = 1 is the
    base solver, smaller beta damps it (a larger stability region, first-order accuracy).
      base="plms": u = Adams-Bashforth combination of order `order` (1-4, lower while history is short) of
        e = (x - D) / sigma; x <- x + (sigma' - sigma) v (the authors' PLMS-with-HB, no pseudo start).
      base="dpmpp_2m": u = D + (D - D_prev) / (2r) on second-order steps;
        x <- (sigma'/sigma) x + (1 - sigma'/sigma) v; first and final steps are the plain first-order ones.
    v starts at the first u. 1 NFE/step."""
    Interval(0.0, 1.0, low_closed=False).check("beta", beta)
    _check_choice("base", base, ("plms", "dpmpp_2m"))
    _check_int("order", order, 1, 4)
    velocity: torch.Tensor | None = None
    history: list[torch.Tensor] = []
    old: torch.Tensor | None = None
    h_last: float | None = None
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = run.denoise(x, s)
        if base == "plms":
            history = (history + [(x - denoised) / s])[-order:]
            direction = _adams_bashforth(history, 1.0)
            velocity = direction if velocity is None else (1 - beta) * velocity + beta * direction
            x = x + (s_next - s) * velocity
        elif s_next == 0:
            x = denoised
        else:
            h = math.log(s / s_next)
            if old is None:
                x = (s_next / s) * x + (1 - s_next / s) * denoised
            else:
                assert h_last is not None  # set on the step that set `old`
                direction = denoised + (h / h_last) * 0.5 * (denoised - old)
                velocity = direction if velocity is None else (1 - beta) * velocity + beta * direction
                x = (s_next / s) * x + (1 - s_next / s) * velocity
            h_last = h
        old = denoised
        run.record(x, s_next)
    return x


@_method("ghvb")
def _ghvb(run: _Run, x: torch.Tensor, sigmas: list[float], *, beta: float = 0.8, order: int = 2) -> torch.Tensor:
    """Generalized heavy ball (GHVB): momentum inside the multistep formula. With e = (x - D) / sigma,
    v <- (1 - beta) v + beta e (v starts at e), then x <- x + (sigma' - sigma) AB_beta(v_i, ..., v_{i-k+1}),
    the order-k combination of eq. (14) of Wizadwongsa et al. 2023 (arXiv:2307.11118) divided by beta;
    beta = 1 is Adams-Bashforth/PLMS of order k, order=1 is heavy ball on DDIM. The paper's "GHVB 1.8" is
    order=2, beta=0.8 (its default here). 1 NFE/step."""
    Interval(0.0, 1.0, low_closed=False).check("beta", beta)
    _check_int("order", order, 1, 4)
    velocity: torch.Tensor | None = None
    history: list[torch.Tensor] = []
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        e = (x - run.denoise(x, s)) / s
        velocity = e if velocity is None else (1 - beta) * velocity + beta * e
        history = (history + [velocity])[-order:]
        x = x + (s_next - s) * _adams_bashforth(history, beta)
        run.record(x, s_next)
    return x


@_method("restart")
def _restart(run: _Run, x: torch.Tensor, sigmas: list[float], *, restart_min: float = 0.06,
             restart_max: float = 0.3, restart_steps: int = 3, restart_repeats: int = 2) -> torch.Tensor:
    """Restart sampling: Heun on the given schedule; on reaching the level closest to `restart_min`
    (t_min), `restart_repeats` times (K) jump back to t_max = `restart_max` by adding fresh noise,
    x <- x + sqrt(t_max^2 - t_min^2) z, and integrate back to t_min with `restart_steps` Heun steps on a
    Karras (rho=7) schedule; then finish the schedule. The forward noise contracts the accumulated ODE
    error while the ODE keeps discretisation error small. Xu et al., "Restart Sampling for Improving
    Generative Processes", NeurIPS 2023, arXiv:2306.14878, Algorithm 1. NFE: Heun's plus
    restart_repeats * (2 restart_steps)."""
    _Positive.check("restart_min", restart_min)
    _Positive.check("restart_max", restart_max)
    _check_int("restart_steps", restart_steps, 1)
    _check_int("restart_repeats", restart_repeats, 0)
    if not restart_max > restart_min:
        raise ValueError(f"restart_max={restart_max!r} must be greater than restart_min={restart_min!r}")
    positive = [i for i, s in enumerate(sigmas) if s > 0]
    i_min = min(positive, key=lambda i: abs(sigmas[i] - restart_min))
    t_min = sigmas[i_min]
    if restart_max <= t_min:
        raise ValueError(f"restart_max={restart_max!r} must exceed the restart level t_min={t_min:.6g} "
                         f"(the level of sigmas closest to restart_min={restart_min!r})")
    inner = karras_sigmas(restart_steps + 1, t_min, restart_max, append_zero=False).tolist()
    inner[0], inner[-1] = restart_max, t_min
    for i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        if i == i_min:
            for _ in range(restart_repeats):
                x = x + math.sqrt(restart_max ** 2 - t_min ** 2) * run.noise()
                run.record(x, restart_max)
                for a, b in zip(inner[:-1], inner[1:], strict=True):
                    x = _heun_step(run, x, a, b)
                    run.record(x, b)
        x = _heun_step(run, x, s, s_next)
        run.record(x, s_next)
    return x


@_method("adaptive")
def _adaptive(run: _Run, x: torch.Tensor, sigmas: list[float], *, atol: float = 0.0078, rtol: float = 0.05,
              h_init: float = 0.01, safety: float = 0.9, exponent: float = 0.9,
              max_nfe: int = 10_000, per_sample: bool = False) -> torch.Tensor:
    """"Gotta Go Fast": reverse VE SDE with adaptive steps and error control, each sample with its own step.

    Time t in [0, 1] with sigma(t) = sigma_min (sigma_max / sigma_min)^t (sigma_max = sigmas[0],
    sigma_min = the smallest positive level; the levels in between are not used), g(t)^2 = d sigma^2/dt.
    From t, with step h and one z:
      x'  = x + h g(t)^2 s(x, t) + sqrt(h) g(t) z                       (Euler-Maruyama)
      x~  = x + h g(t-h)^2 s(x', t-h) + sqrt(h) g(t-h) z
      x'' = (x' + x~) / 2                                               (improved Euler)
      delta = max(atol, rtol max(|x'|, |x'_prev|)),  E = ||(x' - x'') / delta||_2 / sqrt(n)  per sample
    accept (x <- x'', t <- t - h, x'_prev <- x') when E <= 1; then h <- min(t, safety h E^-exponent).
    If the schedule ends at 0 the result is denoised once, x <- D(x, sigma_min).
    Jolicoeur-Martineau et al., "Gotta Go Fast When Generating Data with Score-Based Models", 2021,
    arXiv:2105.14080, Algorithm 1; defaults are the paper's (atol 0.0078, rtol 0.05, h_init 0.01, r 0.9,
    theta 0.9). NFE: 2 per attempted step (the batch's slowest sample sets the count) plus the final 1.
    `max_nfe` stops a run that has not finished (with a warning). `.sigmas` of the result holds the largest
    per-sample sigma after each attempt.
    Batch: by default (`per_sample=False`) the whole batch shares t and h, and E is the RMS over every
    element (the formula above with the batch as one sample); `per_sample=True` gives each sample (leading
    axis) its own t and h, with sigma reaching the denoiser as shape (B, 1, ..., 1).
    Why the default pools (measured on the test bed): the accept/reject test sees the noise draw, and a
    rejected draw is replaced by a fresh one, so when n is a few coordinates acceptance selects noise and
    biases the law: per sample, a unit Gaussian in 2-D comes out with variance ~2.3 (rtol 0.05) and worse
    for tighter tolerances; pooled over a batch of 4000 it comes out at 1.00 with half the NFE. With n in
    the thousands (the paper's images; d=64 here) the two agree."""
    _Positive.check("atol", atol)
    _NonNegative.check("rtol", rtol)
    Interval(0.0, 1.0, low_closed=False).check("h_init", h_init)
    Interval(0.0, 1.0, low_closed=False, high_closed=False).check("safety", safety)
    _Positive.check("exponent", exponent)
    _check_int("max_nfe", max_nfe, 2)
    sigma_max = sigmas[0]
    sigma_min = min(s for s in sigmas if s > 0)
    if sigma_min == sigma_max:
        raise ValueError("sigmas must contain at least two positive levels for method='adaptive'")
    log_ratio = math.log(sigma_max / sigma_min)
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be a bool, got {per_sample!r}")
    per_sample = per_sample and x.ndim >= 2
    batch = x.shape[0] if per_sample else 1
    view = (batch,) + (1,) * (x.ndim - 1) if per_sample else ()
    t = torch.ones(batch, dtype=torch.float64, device=x.device)
    h = torch.full_like(t, h_init)
    x_prev = x
    n = x[0].numel() if per_sample else x.numel()

    def sigma_of(time: torch.Tensor) -> torch.Tensor:
        return sigma_min * torch.exp(log_ratio * time)

    def drift_and_diffusion(state: torch.Tensor, time: torch.Tensor, step: torch.Tensor):
        sig = sigma_of(time)
        g2 = 2 * sig * sig * log_ratio
        sig_v, g2_v, step_v = (v.reshape(view).to(x.dtype) for v in (sig, g2, step))
        score = (run.denoise(state, sig_v) - state) / (sig_v * sig_v)
        return step_v * g2_v * score, torch.sqrt(step_v * g2_v)

    while bool((t > 0).any()):
        if run.nfe + 2 > max_nfe:
            warnings.warn(f"adaptive sampler stopped at max_nfe={max_nfe} before reaching sigma_min "
                          f"(largest remaining sigma {float(sigma_of(t).max()):.4g})", stacklevel=3)
            break
        z = run.noise()
        drift, diff = drift_and_diffusion(x, t, h)
        x_low = x + drift + diff * z
        drift2, diff2 = drift_and_diffusion(x_low, (t - h).clamp_min(0), h)
        x_high = 0.5 * (x_low + x + drift2 + diff2 * z)
        delta = torch.maximum(torch.maximum(x_low.abs(), x_prev.abs()) * rtol,
                              torch.full_like(x_low, atol))
        ratio = (x_low - x_high) / delta
        norms = _sample_norms(ratio) if per_sample else ratio.reshape(1, -1).norm(dim=1)
        err = (norms / math.sqrt(n)).to(torch.float64)
        accept = (err <= 1) & (t > 0)
        acc_v = accept.reshape(view) if view else accept.reshape(())
        x = torch.where(acc_v, x_high, x)
        x_prev = torch.where(acc_v, x_low, x_prev)
        t = torch.where(accept, (t - h).clamp_min(0), t)
        h = torch.minimum(t, safety * h * err.clamp_min(1e-12) ** (-exponent))
        run.record(x, float(sigma_of(t).max()) if bool((t > 0).any()) else sigma_min)
    if sigmas[-1] == 0:
        x = run.denoise(x, sigma_min)
        run.record(x, 0.0)
    return x
