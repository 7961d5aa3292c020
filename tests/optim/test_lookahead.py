"""Lookahead against a plain reference loop of the paper's Algorithm 1, its state dict and its wrapper contract."""

from __future__ import annotations

import pytest
import torch
from oracle_problem import make_problem, trajectory, worst_difference

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.optim.lookahead import Lookahead

DT = torch.float64
STEPS = 50


class ReferenceLookahead:
    """Algorithm 1: phi = theta_0; k inner steps; phi <- phi + alpha (theta - phi); theta <- phi."""

    def __init__(self, params, inner, k, alpha):
        self.params, self.inner, self.k, self.alpha = list(params), inner, k, alpha
        self.slow = [p.detach().clone() for p in self.params]
        self.count = 0

    @torch.no_grad()
    def step(self):
        self.inner.step()
        self.count += 1
        if self.count == self.k:
            self.count = 0
            for p, phi in zip(self.params, self.slow, strict=True):
                phi.copy_(phi + self.alpha * (p - phi))
                p.copy_(phi)


INNER = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, foreach=False),
    "adamw": lambda ps: gw.AdamW(ps, lr=1e-2),
    "lion": lambda ps: gw.Lion(ps, lr=1e-3),
}


@pytest.mark.parametrize("inner", sorted(INNER))
@pytest.mark.parametrize("k,alpha", [(5, 0.5), (3, 0.8), (1, 0.3), (7, 0.0)])
def test_trajectory_equals_the_reference_loop(inner, k, alpha):
    make = INNER[inner]
    ours, init = trajectory(lambda ps: Lookahead(make(ps), k=k, alpha=alpha), STEPS)
    theirs, _ = trajectory(lambda ps: ReferenceLookahead(ps, make(ps), k, alpha), STEPS)
    assert worst_difference(ours, theirs) <= 1e-12  # phi + alpha (theta - phi) rounds as a fused add or not
    plain, _ = trajectory(make, STEPS)
    assert worst_difference(ours, plain) > 1e-4  # lookahead did change the trajectory


@pytest.mark.parametrize("inner", sorted(INNER))
def test_alpha_one_is_the_inner_optimizer(inner):
    ours, _ = trajectory(lambda ps: Lookahead(INNER[inner](ps), k=4, alpha=1.0), STEPS)
    theirs, _ = trajectory(INNER[inner], STEPS)
    assert worst_difference(ours, theirs) == 0.0


def test_alpha_zero_returns_to_the_start_every_k_steps():
    ours, init = trajectory(lambda ps: Lookahead(gw.AdamW(ps, lr=1e-2), k=4, alpha=0.0), 8)
    for step in (3, 7):
        for a, b in zip(ours[step], init, strict=True):
            assert torch.equal(a, b)
    assert worst_difference([ours[2]], [init]) > 1e-3


def run(params, opt, loss_fn, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()


@pytest.mark.parametrize("stop", [3, 5, 7])
def test_resume_equals_uninterrupted_and_the_round_trip_is_exact(stop):
    init, loss_fn = make_problem()
    straight = [torch.nn.Parameter(w.clone()) for w in init]
    opt = Lookahead(gw.AdamW(straight, lr=1e-2), k=5, alpha=0.6)
    run(straight, opt, loss_fn, 17)

    first_params = [torch.nn.Parameter(w.clone()) for w in init]
    first = Lookahead(gw.AdamW(first_params, lr=1e-2), k=5, alpha=0.6)
    run(first_params, first, loss_fn, stop)
    saved = roundtrip({"params": [p.detach() for p in first_params], "opt": first.state_dict()})
    resumed = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    second = Lookahead(gw.AdamW(resumed, lr=1e-2))  # k and alpha come from the checkpoint
    second.load_state_dict(saved["opt"])
    assert (second.k, second.alpha, second.steps_since_sync) == (5, 0.6, stop % 5)
    again = second.state_dict()
    for i, tensor in first.state_dict()["lookahead"]["slow"].items():
        assert torch.equal(again["lookahead"]["slow"][i], tensor)
        assert again["lookahead"]["slow"][i].dtype == tensor.dtype
    run(resumed, second, loss_fn, 17 - stop)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_the_loaded_state_is_a_copy_of_its_own():
    params = [torch.nn.Parameter(torch.ones(3, dtype=DT))]
    opt = Lookahead(torch.optim.SGD(params, lr=0.1))
    params[0].grad = torch.ones(3, dtype=DT)
    opt.step()
    sd = opt.state_dict()
    other = Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.ones(3, dtype=DT))], lr=0.1))
    other.load_state_dict(sd)
    sd["lookahead"]["slow"][0].fill_(7.0)
    assert not torch.equal(next(iter(other.state.values()))["slow_param"], sd["lookahead"]["slow"][0])


def test_param_groups_are_shared_so_schedulers_reach_the_inner_optimizer():
    params = [torch.nn.Parameter(torch.ones(3, dtype=DT))]
    inner = gw.AdamW(params, lr=0.1)
    opt = Lookahead(inner)
    assert opt.param_groups is inner.param_groups
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    params[0].grad = torch.ones(3, dtype=DT)
    opt.step()
    scheduler.step()
    assert inner.param_groups[0]["lr"] == 0.05
    extra = torch.nn.Parameter(torch.zeros(2, dtype=DT))
    opt.add_param_group({"params": [extra]})
    assert len(inner.param_groups) == 2 and inner.param_groups[1]["params"][0] is extra


def test_closure_is_passed_to_the_inner_optimizer_and_its_loss_returned():
    init, loss_fn = make_problem()
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = Lookahead(gw.AdamW(params, lr=1e-2), k=2)

    def closure():
        opt.zero_grad()
        loss = loss_fn(params)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss)
    assert float(loss.detach()) == pytest.approx(float(loss_fn(init).detach()))


def test_a_skipped_inner_step_is_not_counted():
    p = torch.nn.Parameter(torch.ones(2, dtype=DT))
    opt = Lookahead(gw.SGD([p], lr=0.1), k=2, alpha=0.5)
    p.grad = torch.ones(2, dtype=DT)
    opt.step()
    p.grad = torch.tensor([float("nan"), 1.0], dtype=DT)
    opt.step()
    assert opt.optimizer.skipped_steps == 1 and opt.steps_since_sync == 1
    p.grad = torch.ones(2, dtype=DT)
    opt.step()  # the second counted step: sync
    assert opt.steps_since_sync == 0
    torch.testing.assert_close(p.detach(), torch.full((2,), 1.0 - 0.5 * 0.2, dtype=DT))


@pytest.mark.parametrize("k", [0, -1, 2.5, True, "5"])
def test_bad_k_names_the_argument(k):
    with pytest.raises((TypeError, ValueError), match="k"):
        Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1), k=k)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "0.5"])
def test_bad_alpha_names_the_argument(alpha):
    with pytest.raises((TypeError, ValueError), match="alpha"):
        Lookahead(torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1), alpha=alpha)


def test_refuses_what_is_not_an_optimizer_and_a_plain_state_dict():
    with pytest.raises(TypeError, match="Optimizer"):
        Lookahead([torch.nn.Parameter(torch.ones(2))])
    inner = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="Lookahead state dict"):
        Lookahead(inner).load_state_dict(inner.state_dict())


def test_exported_at_top_level():
    assert gw.Lookahead is Lookahead
