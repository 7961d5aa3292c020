"""AdaGrad-Norm against a plain reference of the paper's rule (Ward, Wu & Bottou, 2019, Algorithm 1)."""

from __future__ import annotations

import math

import pytest
import torch
from oracle_problem import make_problem, trajectory, worst_relative_difference

import gradwise as gw
from gradwise.optim.adagradnorm import AdaGradNorm

DT = torch.float64


class ReferenceAdaGradNorm:
    """b_{j+1}^2 = b_j^2 + ||G(x_j)||^2;  x_{j+1} = x_j - eta / b_{j+1} G(x_j), G the full gradient.

    groups: a list of (params, lr) sharing one b (the norm is over every parameter). Switches break one
    convention each, to show that the comparison notices: per_tensor (one b per tensor), late_b (divide by
    b_j, the value before this step's gradient is added).
    """

    def __init__(self, groups, b0, per_tensor=False, late_b=False):
        self.groups, self.per_tensor, self.late_b = groups, per_tensor, late_b
        self.b_sq = b0 * b0
        self.b_sq_tensor = {id(p): b0 * b0 for params, _ in groups for p in params}

    @torch.no_grad()
    def step(self):
        params = [p for ps, _ in self.groups for p in ps]
        total = sum(float((p.grad * p.grad).sum()) for p in params)
        before = self.b_sq
        self.b_sq += total
        for ps, lr in self.groups:
            for p in ps:
                if self.per_tensor:
                    before_t = self.b_sq_tensor[id(p)]
                    self.b_sq_tensor[id(p)] += float((p.grad * p.grad).sum())
                    b = math.sqrt(before_t if self.late_b else self.b_sq_tensor[id(p)])
                else:
                    b = math.sqrt(before if self.late_b else self.b_sq)
                p.copy_(p - lr / b * p.grad)


def ours_grouped(lrs, b0):
    def make(params):
        groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs, strict=True)]
        return AdaGradNorm(groups, b0=b0)

    return make


def theirs_grouped(lrs, b0, **switches):
    def make(params):
        return ReferenceAdaGradNorm([([p], lr) for p, lr in zip(params, lrs, strict=True)], b0, **switches)

    return make


CASES = {
    "defaults": dict(lrs=(1.0, 1.0, 1.0), b0=1e-2),
    "large_b0": dict(lrs=(0.5, 0.5, 0.5), b0=2.0),
    "groups_with_their_own_lr": dict(lrs=(0.8, 0.1, 0.4), b0=0.1),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_the_paper_rule_every_step(case):
    c = CASES[case]
    ours, init = trajectory(ours_grouped(c["lrs"], c["b0"]), 50)
    theirs, _ = trajectory(theirs_grouped(c["lrs"], c["b0"]), 50)
    assert worst_relative_difference(ours, theirs) < 1e-10
    moved = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 0.05


def test_single_group_with_the_defaults_matches():
    ours, _ = trajectory(lambda ps: AdaGradNorm(ps), 40)
    theirs, _ = trajectory(lambda ps: ReferenceAdaGradNorm([(ps, 1.0)], 1e-2), 40)
    assert worst_relative_difference(ours, theirs) < 1e-10


@pytest.mark.parametrize("switch", [dict(per_tensor=True), dict(late_b=True)])
def test_comparison_detects_a_wrong_convention(switch):
    c = CASES["large_b0"]
    ours, _ = trajectory(ours_grouped(c["lrs"], c["b0"]), 40)
    wrong, _ = trajectory(theirs_grouped(c["lrs"], c["b0"], **switch), 40)
    assert worst_relative_difference(ours, wrong) > 1e-2


def test_first_step_by_hand_and_state():
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    b = torch.nn.Parameter(torch.tensor([[0.5]], dtype=torch.bfloat16))
    opt = AdaGradNorm([a, b], lr=0.3, b0=0.5)
    a.grad = torch.tensor([3.0, 0.0], dtype=DT)
    b.grad = torch.tensor([[4.0]], dtype=torch.bfloat16)
    opt.step()
    b_sq = 0.25 + 9.0 + 16.0
    torch.testing.assert_close(a.detach(), torch.tensor([1.0 - 0.3 * 3.0 / math.sqrt(b_sq), 2.0], dtype=DT),
                               rtol=1e-14, atol=0)
    assert float(opt.state[a]["sum_sq_norm"]) == b_sq and float(opt.state[b]["sum_sq_norm"]) == b_sq
    assert opt.state[a]["sum_sq_norm"].dtype == DT
    assert opt.state[b]["sum_sq_norm"].dtype == torch.float32 and b.dtype == torch.bfloat16
    assert opt.state[a]["sum_sq_norm"].shape == ()
    # the first step travels at most lr in norm, whatever the scale of the gradient
    p = torch.nn.Parameter(torch.zeros(5, dtype=DT))
    opt = AdaGradNorm([p], lr=0.3, b0=1e-2)
    p.grad = torch.full((5,), 1e6, dtype=DT)
    opt.step()
    assert float(p.detach().norm()) == pytest.approx(0.3, rel=1e-12)


def test_a_parameter_without_gradient_neither_moves_nor_accumulates():
    a, b = torch.nn.Parameter(torch.ones(2, dtype=DT)), torch.nn.Parameter(torch.ones(2, dtype=DT))
    opt = AdaGradNorm([a, b], b0=1.0)
    a.grad, b.grad = torch.ones(2, dtype=DT), torch.ones(2, dtype=DT)
    opt.step()
    b.grad = None
    moved = b.detach().clone()
    opt.step()
    assert float(opt.state[a]["sum_sq_norm"]) == pytest.approx(1.0 + 4.0 + 2.0, rel=1e-14)
    assert float(opt.state[b]["sum_sq_norm"]) == pytest.approx(1.0 + 4.0, rel=1e-14)
    assert torch.equal(b.detach(), moved)


def test_resume_from_state_dict_equals_uninterrupted():
    init, loss_fn = make_problem(2)

    def run(params, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(params).backward()
            opt.step()

    straight = [torch.nn.Parameter(w.clone()) for w in init]
    run(straight, AdaGradNorm(straight, lr=0.5), 12)
    first = [torch.nn.Parameter(w.clone()) for w in init]
    opt = AdaGradNorm(first, lr=0.5)
    run(first, opt, 5)
    saved = opt.state_dict()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = AdaGradNorm(resumed, lr=0.5)
    opt2.load_state_dict(saved)
    run(resumed, opt2, 7)
    for x, y in zip(straight, resumed, strict=True):
        assert torch.equal(x, y)


def test_converges_on_the_small_network():
    init, loss_fn = make_problem(1, dtype=torch.float32)
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = AdaGradNorm(params)
    start = float(loss_fn(params).detach())
    for _ in range(150):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    assert float(loss_fn(params).detach()) < 0.3 * start


def test_registered_with_defaults_and_citation():
    assert gw.get("adagradnorm") is AdaGradNorm
    assert AdaGradNorm.defaults == dict(lr=1.0, b0=1e-2)
    assert isinstance(gw.create("adagradnorm", torch.nn.Linear(2, 2)), AdaGradNorm)
    assert "arXiv:1806.01811" in AdaGradNorm.__doc__


@pytest.mark.parametrize("name, value", [("b0", 0.0), ("b0", -1.0), ("lr", -1.0), ("b0", float("nan"))])
def test_bad_hyper_parameters_are_refused_with_their_name(name, value):
    with pytest.raises(ValueError, match=name):
        AdaGradNorm([torch.nn.Parameter(torch.zeros(2))], **{name: value})
