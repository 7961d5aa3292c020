"""Adan against a plain reference of the authors' update rule (sail-sg/Adan, adan.py) and its conventions."""

from __future__ import annotations

import math

import pytest
import torch
from oracle_problem import make_problem, trajectory, worst_relative_difference

import gradwise as gw
from gradwise.optim.adan import Adan
from gradwise.transforms.nesterov import nesterov_gradient

DT = torch.float64


# -- the oracle --------------------------------------------------------------------------------------------
class ReferenceAdan:
    """Adan written out step by step from the authors' rule, one plain tensor expression per line.

    Betas weigh the old value (m = b1 m + (1 - b1) g). The first step's previous gradient is the current
    one, so the first difference is zero. All three moments are bias-corrected with their own beta. With
    max_grad_norm > 0 every gradient is first scaled by min(1, max_grad_norm / (global norm + eps)), and the
    scaled gradient is what is remembered as the previous one.
    """

    def __init__(self, params, lr, betas, eps, weight_decay, no_prox, max_grad_norm=0.0,
                 first_diff_is_zero=True, flip_betas=False, correct_diff=True):
        self.params, self.lr, self.eps, self.wd, self.no_prox = list(params), lr, eps, weight_decay, no_prox
        self.betas, self.max_grad_norm, self.t = betas, max_grad_norm, 0
        # switches that break one convention each, to show that the oracle test notices
        self.first_diff_is_zero, self.flip_betas = first_diff_is_zero, flip_betas
        self.correct_diff = correct_diff
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.n = [torch.zeros_like(p) for p in self.params]
        self.previous = [None for _ in self.params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        t = self.t
        b1, b2, b3 = self.betas
        if self.flip_betas:  # the paper's notation: beta weighs the new value
            b1, b2, b3 = 1 - b1, 1 - b2, 1 - b3
        grads = [p.grad.clone() for p in self.params]
        if self.max_grad_norm > 0:
            total = math.sqrt(sum(float((g * g).sum()) for g in grads))
            scale = min(1.0, self.max_grad_norm / (total + self.eps))
            grads = [g * scale for g in grads]
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            if self.previous[i] is None:
                self.previous[i] = g.clone() if self.first_diff_is_zero else torch.zeros_like(g)
            diff = g - self.previous[i]
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * diff
            self.n[i] = b3 * self.n[i] + (1 - b3) * (g + b2 * diff) ** 2
            m_hat = self.m[i] / (1 - b1**t)
            v_hat = self.v[i] / (1 - b2**t) if self.correct_diff else self.v[i]
            n_hat = self.n[i] / (1 - b3**t)
            update = (m_hat + b2 * v_hat) / (torch.sqrt(n_hat) + self.eps)
            if self.no_prox:
                p.copy_(p * (1 - self.lr * self.wd) - self.lr * update)
            else:
                p.copy_((p - self.lr * update) / (1 + self.lr * self.wd))
            self.previous[i] = g


ORACLE_CASES = {
    "proximal": dict(lr=2e-2, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.05, no_prox=False),
    "no_prox": dict(lr=2e-2, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.05, no_prox=True),
    "other_betas_proximal": dict(lr=1e-2, betas=(0.9, 0.6, 0.999), eps=1e-6, weight_decay=0.3, no_prox=False),
    "clipped_no_prox": dict(lr=2e-2, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.1, no_prox=True,
                            max_grad_norm=0.05),
}


@pytest.mark.parametrize("case", list(ORACLE_CASES))
def test_trajectory_matches_reference_every_step(case):
    hyper = ORACLE_CASES[case]
    steps = 60
    ours, init = trajectory(lambda ps: Adan(ps, **hyper), steps)
    theirs, _ = trajectory(lambda ps: ReferenceAdan(ps, **hyper), steps)
    assert worst_relative_difference(ours, theirs) < 1e-4
    # the problem moves the parameters well beyond the tolerance, so the comparison means something
    moved = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 0.05


def test_clipping_is_active_in_the_clipped_case():
    hyper = ORACLE_CASES["clipped_no_prox"]
    clipped, _ = trajectory(lambda ps: Adan(ps, **hyper), 20)
    free, _ = trajectory(lambda ps: Adan(ps, **{**hyper, "max_grad_norm": 0.0}), 20)
    assert worst_relative_difference(clipped, free) > 1e-2


@pytest.mark.parametrize(
    "mutation", [dict(first_diff_is_zero=False), dict(flip_betas=True), dict(correct_diff=False)]
)
def test_oracle_comparison_detects_a_wrong_convention(mutation):
    """Each convention the brief names changes the trajectory by far more than the oracle's tolerance."""
    hyper = ORACLE_CASES["proximal"]
    ours, _ = trajectory(lambda ps: Adan(ps, **hyper), 40)
    wrong, _ = trajectory(lambda ps: ReferenceAdan(ps, **hyper, **mutation), 40)
    assert worst_relative_difference(ours, wrong) > 1e-2


def test_proximal_and_decoupled_decay_differ():
    base = dict(ORACLE_CASES["proximal"], weight_decay=0.5)
    prox, _ = trajectory(lambda ps: Adan(ps, **base), 40)
    decoupled, _ = trajectory(lambda ps: Adan(ps, **{**base, "no_prox": True}), 40)
    assert worst_relative_difference(prox, decoupled) > 1e-4


# -- the first step and the transforms ---------------------------------------------------------------------
def test_first_step_difference_is_zero_and_second_step_is_the_change():
    b1, b2, b3 = 0.9, 0.8, 0.7
    lr, eps = 0.1, 1e-8
    p0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)
    g1 = torch.tensor([0.5, -1.0, 2.0, 1e-3], dtype=DT)
    g2 = torch.tensor([-0.5, 1.5, 2.0, 4.0], dtype=DT)
    p = torch.nn.Parameter(p0.clone())
    opt = Adan([p], lr=lr, betas=(b1, b2, b3), eps=eps)

    p.grad = g1.clone()
    opt.step()
    s = opt.state[p]
    assert torch.equal(s["exp_avg_diff"], torch.zeros_like(p0))
    assert torch.equal(s["prev_grad"], g1)
    torch.testing.assert_close(s["exp_avg"], (1 - b1) * g1, rtol=1e-14, atol=0)
    torch.testing.assert_close(s["exp_avg_sq"], (1 - b3) * g1**2, rtol=1e-14, atol=0)
    # with d_1 = 0 every moment is un-biased exactly: the first step is lr * g / (|g| + eps)
    p1 = p0 - lr * g1 / (g1.abs() + eps)
    torch.testing.assert_close(p.detach(), p1, rtol=1e-12, atol=0)

    p.grad = g2.clone()
    opt.step()
    d2 = g2 - g1
    torch.testing.assert_close(s["exp_avg_diff"], (1 - b2) * d2, rtol=1e-12, atol=0)
    n2 = b3 * (1 - b3) * g1**2 + (1 - b3) * (g2 + b2 * d2) ** 2
    torch.testing.assert_close(s["exp_avg_sq"], n2, rtol=1e-12, atol=0)
    assert torch.equal(s["prev_grad"], g2)


def test_a_parameter_first_seen_later_also_starts_with_a_zero_difference():
    a = torch.nn.Parameter(torch.ones(3, dtype=DT))
    b = torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = Adan([a, b], lr=0.1)
    a.grad = torch.full((3,), 0.5, dtype=DT)
    opt.step()
    a.grad, b.grad = torch.full((3,), 0.7, dtype=DT), torch.full((3,), -2.0, dtype=DT)
    opt.step()
    assert torch.equal(opt.state[b]["exp_avg_diff"], torch.zeros(3, dtype=DT))
    assert not torch.equal(opt.state[a]["exp_avg_diff"], torch.zeros(3, dtype=DT))


def test_nesterov_gradient_transform():
    beta = 0.25
    transform = nesterov_gradient(beta)
    p = torch.zeros(3, dtype=DT)
    s = transform.init(p)
    assert set(s) == {"exp_avg_diff", "prev_grad"}
    u1 = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    out1 = transform.update(u1, p, s, 1.0)
    assert torch.equal(out1, u1) and out1 is not u1
    u2 = torch.tensor([2.0, 0.0, 3.0], dtype=DT)
    kept = u2.clone()
    out2 = transform.update(u2, p, s, 2.0)
    assert torch.equal(u2, kept)  # the input is never modified in place
    assert torch.equal(out2, u2 + beta * (u2 - u1))
    assert torch.equal(s["exp_avg_diff"], (1 - beta) * (u2 - u1))
    assert torch.equal(s["prev_grad"], u2)


# -- behaviour ---------------------------------------------------------------------------------------------
def test_converges_on_the_small_network():
    init, loss_fn = make_problem(1, dtype=torch.float32)
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = Adan(params, lr=1e-2, weight_decay=1e-4)
    start = float(loss_fn(params).detach())
    for _ in range(400):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    assert float(loss_fn(params).detach()) < 0.1 * start


def test_converges_on_a_quadratic_with_clipping():
    torch.manual_seed(3)
    target = torch.randn(20)
    scales = torch.linspace(0.1, 10.0, 20)
    x = torch.nn.Parameter(torch.zeros(20))
    opt = Adan([x], lr=5e-2, max_grad_norm=1.0)
    for _ in range(500):
        opt.zero_grad()
        (0.5 * scales * (x - target) ** 2).sum().backward()
        opt.step()
    assert float((x - target).detach().abs().max()) < 1e-2


def test_clipping_leaves_p_grad_untouched():
    p = torch.nn.Parameter(torch.ones(4, dtype=DT))
    opt = Adan([p], lr=0.1, max_grad_norm=0.01)
    grad = torch.tensor([3.0, -4.0, 0.0, 12.0], dtype=DT)
    p.grad = grad.clone()
    opt.step()
    assert torch.equal(p.grad, grad)
    # the remembered gradient is the clipped one: 13 is the norm, 0.01 the ceiling
    torch.testing.assert_close(opt.state[p]["prev_grad"], grad * (0.01 / (13 + 1e-8)), rtol=1e-14, atol=0)


def test_maximize_ascends_what_minimize_descends():
    hyper = ORACLE_CASES["no_prox"]

    init, loss_fn = make_problem(0)
    ps_min = [torch.nn.Parameter(w.clone()) for w in init]
    ps_max = [torch.nn.Parameter(w.clone()) for w in init]
    opt_min, opt_max = Adan(ps_min, **hyper), Adan(ps_max, **hyper, maximize=True)
    for _ in range(10):
        for ps, opt, sign in ((ps_min, opt_min, 1.0), (ps_max, opt_max, -1.0)):
            opt.zero_grad()
            (sign * loss_fn(ps)).backward()
            opt.step()
    for a, b in zip(ps_min, ps_max, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_resume_from_state_dict_equals_uninterrupted():
    hyper = ORACLE_CASES["clipped_no_prox"]
    init, loss_fn = make_problem(2)

    def run(params, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(params).backward()
            opt.step()

    straight = [torch.nn.Parameter(w.clone()) for w in init]
    run(straight, Adan(straight, **hyper), 12)

    first = [torch.nn.Parameter(w.clone()) for w in init]
    opt = Adan(first, **hyper)
    run(first, opt, 5)
    saved = opt.state_dict()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = Adan(resumed, **hyper)
    opt2.load_state_dict(saved)
    run(resumed, opt2, 7)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_registered_with_the_authors_defaults():
    assert gw.get("adan") is Adan
    assert Adan.defaults == dict(lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0, no_prox=False,
                                 max_grad_norm=0.0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = gw.create("adan", model, weight_decay=0.02)
    assert isinstance(opt, Adan)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.02, 0.0]
    assert Adan.__doc__ and "arXiv:2208.06677" in Adan.__doc__


# -- bad input ---------------------------------------------------------------------------------------------
def _param():
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    "betas",
    [(0.9, 0.99), (0.98, 0.92, 0.99, 0.9), (1.0, 0.92, 0.99), (0.98, -0.1, 0.99), (0.98, 0.92, float("nan")),
     0.9, "abc"],
)
def test_bad_betas_are_refused_with_their_name(betas):
    with pytest.raises((ValueError, TypeError), match="betas"):
        Adan(_param(), betas=betas)


def test_each_of_the_three_betas_is_checked():
    for i in range(3):
        betas = [0.5, 0.5, 0.5]
        betas[i] = 1.5
        with pytest.raises(ValueError, match=rf"betas\[{i}\]=1\.5.*\[0, 1\)"):
            Adan(_param(), betas=tuple(betas))


@pytest.mark.parametrize(
    "name, value, error",
    [("lr", -1e-3, ValueError), ("eps", -1.0, ValueError), ("weight_decay", -0.1, ValueError),
     ("max_grad_norm", -1.0, ValueError), ("lr", float("inf"), ValueError), ("no_prox", "yes", TypeError),
     ("no_prox", 1, TypeError), ("lr", "fast", TypeError)],
)
def test_bad_hyper_parameters_are_refused_with_name_and_value(name, value, error):
    with pytest.raises(error, match=name) as info:
        Adan(_param(), **{name: value})
    assert repr(value) in str(info.value)


def test_unknown_argument_suggests_the_right_one():
    with pytest.raises(TypeError, match="no_prox"):
        Adan(_param(), noprox=True)


def test_clipping_with_a_non_finite_gradient_skips_the_step_and_keeps_state():
    a = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16))
    opt = Adan([a, b], lr=0.1, max_grad_norm=0.5)
    a.grad, b.grad = torch.ones(3), torch.ones(2, dtype=torch.bfloat16)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[a].items()}
    params = (a.detach().clone(), b.detach().clone())
    a.grad = torch.tensor([1.0, float("nan"), 0.0])
    opt.step()
    assert opt.skipped_steps == 1
    assert torch.equal(a, params[0]) and torch.equal(b, params[1])
    assert all(torch.equal(v, opt.state[a][k]) for k, v in before.items())
    a.grad = torch.full((3,), 2.0)
    opt.step()
    assert torch.isfinite(a).all() and torch.isfinite(b.float()).all()
    assert b.dtype == torch.bfloat16 and opt.state[b]["exp_avg_sq"].dtype == torch.bfloat16


def test_sparse_gradient_with_clipping_gets_the_engine_error():
    p = torch.nn.Parameter(torch.ones(4))
    opt = Adan([p], max_grad_norm=1.0)
    p.grad = torch.ones(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
