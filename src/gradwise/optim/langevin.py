"""Stochastic-gradient MCMC: SGLD, preconditioned SGLD and SGHMC as drop-in `torch.optim.Optimizer`s.

A sampler is stepped exactly like an optimizer, but its iterates are draws from the posterior
p(theta | data)^(1 / temperature) instead of converging to a minimum. Three things differ from training:

- The gradient must be that of the FULL-DATA negative log posterior
  U(theta) = -log p(theta) - sum_{i=1..N} log p(x_i | theta),
  not of a mini-batch mean: multiply the mean mini-batch negative log likelihood by the data-set size N
  and add the negative log prior. `gradwise.sampling.collect.neg_log_posterior(batch_mean_loss, N,
  neg_log_prior)` does exactly that. With a mean loss the chain samples a posterior N times too wide.
- The step size sets the discretisation error: each docstring says how to choose `lr` from L, the
  largest curvature (Hessian eigenvalue) of U. For a mean loss whose per-example curvature is about
  c, L is about N c plus the prior precision. `lr` has no default: no value fits every posterior.
- Iterates are kept with a burn-in and thinning: `gradwise.sampling.collect.SampleCollector`.

Noise and reproducibility: noise is drawn from torch's global generator unless the keyword-only option
`generator` (a `torch.Generator` on the parameters' device) is given. With a generator, seed it once
(`torch.Generator().manual_seed(0)`) for a reproducible chain; its state is saved in `state_dict()` under
"gradwise" and restored by `load_state_dict()`, so a resumed chain continues the uninterrupted one
exactly. With the global generator, a resumed chain equals the uninterrupted one only if the caller
saves and restores `torch.get_rng_state()` (and the CUDA states) alongside the sampler's state, and
nothing else draws from it in between: the sampler never touches the global RNG state on load.

Under compile (`compile=True`): with the global generator, inductor draws the noise inside its graph, a stream
of its own (seeded by torch.manual_seed, so still reproducible, but not eager's numbers); with a generator,
the noise is drawn from it before each step in the eager order, so the compiled chain consumes exactly the
eager chain's draws (`LangevinSampler`) and its state_dict and resumption behave as eager's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import required

from ..core import Beta, ChainOptimizer, Flag, NonNegative, Positive, Transform, UnitInterval, register
from ..core.engine import engine_options, hyper_parameters
from ..transforms.moments import first_moment, second_moment
from ..transforms.noise import langevin_step, preconditioned_langevin_step, sghmc_friction
from ..transforms.steps import sgd_step

DRAWN = "langevin_noise"  # the state key of a step's noise drawn ahead under compile (never saved)


class LangevinSampler(ChainOptimizer):
    """Base of the samplers: adds the keyword-only `generator` option and saves its state.

    Under compile with a generator, the kernels cannot draw (a graph cannot capture a torch.Generator), so
    `prepare` draws each parameter's noise from the generator before the step, in the order the eager step
    draws it (param groups, then parameters, one draw of the parameter's shape each), into state[DRAWN],
    which the kernels read: the compiled chain then follows the eager chain's noise stream exactly. That
    buffer is working memory (one parameter-sized tensor per parameter), left out of `state_dict`. A group
    whose state has a storage (state_dtype, state_bits, ...) keeps drawing in its kernels, eagerly.
    """

    keyword_only = {**ChainOptimizer.keyword_only, "generator": None}

    def __init__(
        self,
        params: Iterable[Any],
        *args: Any,
        generator: torch.Generator | None = None,
        nonfinite: str = "skip",
        **hyper: Any,
    ) -> None:
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"generator must be None or a torch.Generator, got {generator!r} ({type(generator).__name__})"
            )
        self.generator = generator
        super().__init__(params, *args, nonfinite=nonfinite, **hyper)

    def draws_ahead(self, h: SimpleNamespace) -> bool:
        """Whether a group's noise is drawn by `prepare` (compiled, with a generator, plain state)."""
        if self.generator is None or getattr(self, "_compiled", None) is None:
            return False
        return all(option.storage is None or option.storage(h) is None for option in engine_options())

    def noise_source(self, h: SimpleNamespace) -> dict[str, Any]:
        """The noise arguments of a group's transforms: a generator to draw from, or the key drawn into."""
        return dict(generator=None, drawn=DRAWN) if self.draws_ahead(h) else dict(generator=self.generator)

    def prepare(self, work: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        if self.generator is None or getattr(self, "_compiled", None) is None:
            return
        for group, params in work:
            if not params or not self.draws_ahead(hyper_parameters(group)):
                continue
            for p in params:
                state = self.state[p]
                noise = state.get(DRAWN)
                if noise is None or noise.shape != p.shape or noise.dtype != p.dtype or noise.device != p.device:
                    noise = state[DRAWN] = torch.empty(p.shape, dtype=p.dtype, device=p.device)
                noise.normal_(generator=self.generator)  # in place: under compile, a view of a flat buffer

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["state"] = {
            index: {k: v for k, v in state.items() if k != DRAWN} if DRAWN in state else state
            for index, state in sd["state"].items()
        }
        if self.generator is not None:
            sd["gradwise"]["generator_state"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("gradwise", {}).get("generator_state")
        if saved is None:
            return
        if self.generator is None:
            warnings.warn(
                f"{type(self).__name__}: the state_dict holds the state of a torch.Generator but this sampler "
                "draws from torch's global generator; the saved noise stream is not continued",
                stacklevel=2,
            )
            return
        self.generator.set_state(saved.detach().clone().to(torch.uint8))


@register("sgld", paper="Welling & Teh, Bayesian Learning via Stochastic Gradient Langevin Dynamics", year=2011,
          oracle="reference transcribed from the paper's update rule (tests/optim/test_langevin.py)",
          kind="sampler")
class SGLD(LangevinSampler):
    """SGLD: gradient descent on the full-data negative log posterior plus Gaussian noise.

    theta <- theta - lr g + N(0, 2 lr T),  g the stochastic gradient of U (module docstring), T = temperature.
    This is Welling & Teh's Delta theta = eps/2 (grad log p(theta) + N/n sum grad log p(x|theta)) + N(0, eps)
    with eps = 2 lr. At T = 1 the chain samples the posterior; T < 1 samples the sharpened ("cold")
    posterior p^(1/T), T = 0 is plain SGD.

    Choosing lr: the stationary variance along a direction of curvature h is about
    (1 / h)(1 + lr h / 2 + lr V / 2), V the variance of the stochastic gradient there, while the chain
    needs about 1 / (lr h) steps to decorrelate. lr = 0.05 / L (L the largest curvature of U) keeps the
    first bias near 2.5%; the test on Bayesian linear regression uses exactly that rule. The paper decays
    lr to zero to remove the bias; pass a torch.optim.lr_scheduler for that.

    Defaults: temperature = 1 (the posterior). lr has no default (it scales with 1 / L).
    Welling & Teh, "Bayesian Learning via Stochastic Gradient Langevin Dynamics", ICML 2011.
    """

    defaults = dict(lr=required, temperature=1.0)
    ranges = dict(lr=NonNegative, temperature=NonNegative)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        return (langevin_step(h.lr, h.temperature, **self.noise_source(h)),)


@register("psgld", paper="Li, Chen, Carlson & Carin, Preconditioned Stochastic Gradient Langevin Dynamics for "
          "Deep Neural Networks", year=2016,
          oracle="reference transcribed from the paper's Algorithm 1 (tests/optim/test_langevin.py)",
          kind="sampler")
class PSGLD(LangevinSampler):
    """pSGLD: SGLD preconditioned by RMSprop's diagonal metric.

    v <- alpha v + (1 - alpha) g^2;  G = 1 / (eps + sqrt(v));  theta <- theta - lr G g + N(0, 2 lr T G)
    with g the stochastic gradient of the full-data U (module docstring). This is Li et al.'s Algorithm 1
    with eps_paper = 2 lr and lambda = eps, except that their moving average reads the mini-batch MEAN
    gradient g / N: ours reads g itself, which is the paper's rule with lr and eps multiplied by N.
    The Gamma(theta) correction term (sum_j dG_ij / dtheta_j) is DROPPED, as in most implementations:
    the paper shows the bias it leaves is small when alpha is close to 1 and the preconditioner changes
    slowly.

    Choosing lr: the preconditioned steps are about lr in size where gradients have their typical size,
    so take lr a small fraction of the posterior's standard deviations: lr = 0.05 / sqrt(L) (L the
    largest curvature of U), the setting the Bayesian linear regression test uses. The average v starts
    at zero, so the first several 1 / (1 - alpha) steps are burn-in; and while v follows the chain's
    own moves (alpha too small for the chain's decorrelation time) the dropped Gamma term shows as
    inflated variances: on the test's regression, about 15% with alpha = 0.99 and 5% with 0.999.

    Defaults: alpha = 0.99 (RMSprop's customary value) and eps (the paper's lambda) = 1e-5, as commonly
    used with this method; temperature = 1. lr has no default.
    Li, Chen, Carlson & Carin, "Preconditioned Stochastic Gradient Langevin Dynamics for Deep Neural
    Networks", AAAI 2016, arXiv:1512.07666.
    """

    defaults = dict(lr=required, alpha=0.99, eps=1e-5, temperature=1.0)
    ranges = dict(lr=NonNegative, alpha=Beta, eps=Positive, temperature=NonNegative)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        return (
            second_moment(h.alpha, key="square_avg"),
            preconditioned_langevin_step(h.lr, h.temperature, h.eps, second="square_avg", **self.noise_source(h)),
        )


@register("sghmc", paper="Chen, Fox & Guestrin, Stochastic Gradient Hamiltonian Monte Carlo", year=2014,
          oracle="reference transcribed from the paper's update rule, eq. (15) (tests/optim/test_langevin.py)",
          kind="sampler")
class SGHMC(LangevinSampler):
    """SGHMC: Hamiltonian dynamics with friction that cancels the stochastic gradient's noise.

    In the paper's SGD-with-momentum form (eta = lr, alpha = friction):
      v <- (1 - friction) v - lr g + N(0, 2 lr (friction T - beta_hat));  theta <- theta + v
    with g the stochastic gradient of the full-data U (module docstring). beta_hat = lr V / 2 accounts
    for the noise the stochastic gradient already brings, V its variance. With estimate_noise=False
    (default) beta_hat = 0, as in the paper's experiments. With estimate_noise=True, V is estimated per
    coordinate from exponential moving averages (coefficient noise_decay, bias-corrected) of g and g^2,
    and the injected variance is clamped at 0. That estimate also counts the drift of the true gradient
    as the chain moves, so it overestimates V and errs towards a colder chain.

    Choosing lr: the stochastic gradient adds about lr V / (2 friction) to the relative variance, V the
    variance of g (roughly L times N / batch size for a mean loss), and the position decorrelates in
    about 1 / friction steps when lr h > friction^2 / 4, or 2 friction / (lr h) otherwise. With the
    default friction, lr = 0.005 / L is the setting the Bayesian linear regression test uses (batch of
    half the data).

    Defaults: friction = 0.1 (the paper's alpha suggestion is 0.1 or 0.01), temperature = 1, no noise
    estimate (noise_decay = 0.99 when enabled). lr has no default.
    Chen, Fox & Guestrin, "Stochastic Gradient Hamiltonian Monte Carlo", ICML 2014, arXiv:1402.4102.
    """

    defaults = dict(lr=required, friction=0.1, temperature=1.0, estimate_noise=False, noise_decay=0.99)
    ranges = dict(lr=NonNegative, friction=UnitInterval, temperature=NonNegative, estimate_noise=Flag(),
                  noise_decay=Beta)

    def chain(self, h: SimpleNamespace) -> tuple[Transform, ...]:
        estimate: tuple[Transform, ...] = ()
        noise_estimate = None
        if h.estimate_noise:
            estimate = (first_moment(h.noise_decay, key="grad_avg"), second_moment(h.noise_decay, key="grad_sq_avg"))
            noise_estimate = ("grad_avg", "grad_sq_avg", h.noise_decay)
        return (
            *estimate,
            sghmc_friction(h.lr, h.friction, h.temperature, noise_estimate=noise_estimate, **self.noise_source(h)),
            sgd_step(1.0),
        )
