"""AdEMAMix against a reference transcribed from Algorithm 1 of Pagliardini, Ablin & Grangier (2024), with the
warm-up schedulers of the authors' code, float64, every step."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from oracle_problem import make_problem, trajectory, worst_relative_difference
from oracle_references import cautious_scale

import gradwise as gw
from gradwise.optim.ademamix import AdEMAMix, alpha_schedule, beta3_schedule

DT = torch.float64
STEPS = 40


class ReferenceAdEMAMix:
    """Algorithm 1 of the paper, one line per line, with the schedulers of section 3 of the paper.

    alpha_t = min(t alpha / T_alpha, alpha); beta3_t = f_inv((1 - t/T) f(beta1) + (t/T) f(beta3)) for t < T,
    with f(b) = ln(0.5) / ln(b + 1e-8) - 1 (the half-life less one) and f_inv(x) = 0.5^(1 / (x + 1)).
    """

    def __init__(self, params, lr, betas, alpha, beta3_warmup, alpha_warmup, eps, weight_decay,
                 correct_slow=False, warm_from_zero=False, decay_after=False, cautious=False):
        self.params, self.lr, self.betas, self.alpha = list(params), lr, betas, alpha
        self.t_beta3, self.t_alpha, self.eps, self.wd = beta3_warmup, alpha_warmup, eps, weight_decay
        # switches that each break one convention, to show that the oracle test notices
        self.correct_slow, self.warm_from_zero, self.decay_after = correct_slow, warm_from_zero, decay_after
        # the cautious rule of Liang et al. (2024): the update u (what the step subtracts lr times) only where
        # u g > 0, scaled by numel / (number kept + 1)
        self.cautious, self.masked_out = cautious, 0
        self.m1 = [torch.zeros_like(p) for p in self.params]
        self.m2 = [torch.zeros_like(p) for p in self.params]
        self.nu = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def schedules(self, t):
        b1, _, b3 = self.betas
        alpha = self.alpha if self.t_alpha is None else min(t * self.alpha / self.t_alpha, self.alpha)
        if self.t_beta3 is None or t >= self.t_beta3:
            beta3 = b3
        else:
            start = 0.0 if self.warm_from_zero else b1
            f = lambda b: math.log(0.5) / math.log(b + 1e-8) - 1  # noqa: E731
            x = (1 - t / self.t_beta3) * f(start) + (t / self.t_beta3) * f(b3)
            beta3 = 0.5 ** (1 / (x + 1))
        return alpha, beta3

    @torch.no_grad()
    def step(self):
        self.t += 1
        t = self.t
        b1, b2, _ = self.betas
        alpha, b3 = self.schedules(t)
        for i, p in enumerate(self.params):
            g = p.grad
            self.m1[i] = b1 * self.m1[i] + (1 - b1) * g
            self.m2[i] = b3 * self.m2[i] + (1 - b3) * g
            self.nu[i] = b2 * self.nu[i] + (1 - b2) * g * g
            m1_hat = self.m1[i] / (1 - b1**t)
            m2 = self.m2[i] / (1 - b3**t) if self.correct_slow else self.m2[i]
            nu_hat = self.nu[i] / (1 - b2**t)
            direction = (m1_hat + alpha * m2) / (torch.sqrt(nu_hat) + self.eps)
            if self.decay_after:
                p.copy_((p - self.lr * direction) * (1 - self.lr * self.wd))
                continue
            update = direction + self.wd * p
            if self.cautious:
                self.masked_out += int((update * g <= 0).sum())
                update = update * cautious_scale(update, g)
            p.copy_(p - self.lr * update)


BASE = dict(lr=1e-2, betas=(0.9, 0.999, 0.9999), alpha=5.0, beta3_warmup=None, alpha_warmup=None, eps=1e-8,
            weight_decay=0.0)
CASES = {
    "plain": BASE,
    "weight_decay": dict(BASE, weight_decay=0.2, alpha=8.0),
    "warmups_within_the_run": dict(BASE, beta3_warmup=25, alpha_warmup=15, weight_decay=0.1),
    "warmups_longer_than_the_run": dict(BASE, betas=(0.8, 0.99, 0.999), beta3_warmup=100, alpha_warmup=60),
    "no_fast_momentum": dict(BASE, betas=(0.0, 0.99, 0.99), alpha=2.0, beta3_warmup=30),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_the_papers_algorithm_every_step(case):
    hyper = CASES[case]
    ours, init = trajectory(lambda ps: AdEMAMix(ps, **hyper), STEPS)
    theirs, _ = trajectory(lambda ps: ReferenceAdEMAMix(ps, **hyper), STEPS)
    assert worst_relative_difference(ours, theirs) < 1e-9
    moved = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 0.05


@pytest.mark.parametrize("case", ["plain", "weight_decay", "warmups_within_the_run"])
def test_cautious_matches_the_rule_of_liang_et_al_every_step(case):
    # gw.CAdEMAMix (AdEMAMix with cautious=True) masks the update u, weight decay included, by u g > 0
    hyper = CASES[case]
    ours, init = trajectory(lambda ps: gw.create("cademamix", ps, **hyper), STEPS)
    references = []
    theirs, _ = trajectory(lambda ps: references.append(ReferenceAdEMAMix(ps, **hyper, cautious=True))
                           or references[-1], STEPS)
    plain, _ = trajectory(lambda ps: AdEMAMix(ps, **hyper), STEPS)
    assert worst_relative_difference(ours, theirs) < 1e-9
    assert references[0].masked_out > 0 and worst_relative_difference(ours, plain) > 1e-4  # the mask acted


@pytest.mark.parametrize(
    "case, mutation",
    [("plain", dict(correct_slow=True)), ("warmups_within_the_run", dict(warm_from_zero=True)),
     ("weight_decay", dict(decay_after=True))],
)
def test_oracle_comparison_detects_a_wrong_convention(case, mutation):
    hyper = CASES[case]
    ours, _ = trajectory(lambda ps: AdEMAMix(ps, **hyper), STEPS)
    wrong, _ = trajectory(lambda ps: ReferenceAdEMAMix(ps, **hyper, **mutation), STEPS)
    assert worst_relative_difference(ours, wrong) > 1e-6


def test_warmups_change_the_trajectory():
    plain, _ = trajectory(lambda ps: AdEMAMix(ps, **BASE), 20)
    warm, _ = trajectory(lambda ps: AdEMAMix(ps, **dict(BASE, beta3_warmup=25)), 20)
    alpha_warm, _ = trajectory(lambda ps: AdEMAMix(ps, **dict(BASE, alpha_warmup=25)), 20)
    assert worst_relative_difference(warm, plain) > 1e-3
    assert worst_relative_difference(alpha_warm, plain) > 1e-3


def test_schedulers():
    a = alpha_schedule(6.0, 12)
    assert [a(t) for t in (1, 6, 12, 13)] == [0.5, 3.0, 6.0, 6.0]
    assert alpha_schedule(6.0, None)(1) == 6.0
    b = beta3_schedule(0.9999, 0.9, 100)
    assert beta3_schedule(0.9999, 0.9, None)(1) == 0.9999
    assert b(100) == 0.9999 and b(500) == 0.9999
    assert abs(b(0) - 0.9) < 1e-7  # starts from beta1 (up to the 1e-8 inside the logarithm)
    half_life = lambda beta: math.log(0.5) / math.log(beta)  # noqa: E731
    values = [b(t) for t in range(1, 100)]
    assert all(x < y for x, y in zip(values, values[1:], strict=False))
    # linear in the half-life: the middle is the mean of the ends
    mid = half_life(b(50))
    ends = 0.5 * (half_life(0.9) + half_life(0.9999))
    assert abs(mid - ends) < 1e-3 * ends  # up to the 1e-8 inside the authors' logarithm


def test_first_step():
    b1, b2, b3 = 0.9, 0.99, 0.999
    p0 = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    g = torch.tensor([0.5, -1.0, 2e-3], dtype=DT)
    p = torch.nn.Parameter(p0.clone())
    opt = AdEMAMix([p], lr=0.1, betas=(b1, b2, b3), alpha=4.0, eps=1e-8, weight_decay=0.5)
    p.grad = g.clone()
    opt.step()
    s = opt.state[p]
    torch.testing.assert_close(s["exp_avg_fast"], (1 - b1) * g, rtol=1e-14, atol=0)
    torch.testing.assert_close(s["exp_avg_slow"], (1 - b3) * g, rtol=1e-14, atol=0)
    torch.testing.assert_close(s["exp_avg_sq"], (1 - b2) * g * g, rtol=1e-14, atol=0)
    expected = p0 - 0.1 * ((g + 4.0 * (1 - b3) * g) / (g.abs() + 1e-8) + 0.5 * p0)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=0)
    assert torch.equal(p.grad, g)


def test_converges_on_the_small_network():
    init, loss_fn = make_problem(1, dtype=torch.float32)
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = AdEMAMix(params, lr=1e-2, beta3_warmup=300, alpha_warmup=300)
    start = float(loss_fn(params).detach())
    for _ in range(300):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    assert float(loss_fn(params).detach()) < 0.2 * start


def test_registered_with_the_defaults():
    assert gw.get("ademamix") is AdEMAMix
    assert AdEMAMix.defaults == dict(lr=1e-3, betas=(0.9, 0.999, 0.9999), alpha=5.0, beta3_warmup=None,
                                     alpha_warmup=None, eps=1e-8, weight_decay=0.0)
    assert AdEMAMix.__doc__ and "arXiv:2409.03137" in AdEMAMix.__doc__
    opt = AdEMAMix([torch.nn.Parameter(torch.zeros(2))])
    chain = opt.chain(SimpleNamespace(**AdEMAMix.defaults))
    assert [t.writes for t in chain] == [False, False, False, True]


@pytest.mark.parametrize(
    "name, value, error",
    [("betas", (0.9, 0.999), ValueError), ("betas", (0.9, 0.999, 1.0), ValueError), ("alpha", -1.0, ValueError),
     ("beta3_warmup", 0, ValueError), ("beta3_warmup", 10.5, TypeError), ("alpha_warmup", -3, ValueError),
     ("eps", -1e-8, ValueError), ("weight_decay", float("nan"), ValueError)],
)
def test_bad_hyper_parameters_are_refused_with_their_name(name, value, error):
    with pytest.raises(error, match=name):
        AdEMAMix([torch.nn.Parameter(torch.zeros(2))], **{name: value})
