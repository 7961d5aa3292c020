"""AdaBound and AMSBound against the authors' PyPI package adabound 0.0.5, and their conventions."""

from __future__ import annotations

import pytest
import torch
from oracle_problem import make_problem, trajectory, worst_relative_difference

import gradwise as gw
from gradwise.optim.adabound import AdaBound, AMSBound
from gradwise.transforms.bounds import bounded_adam_step, dynamic_bounds

adabound = pytest.importorskip("adabound", reason="the oracle is the authors' package: pip install adabound==0.0.5")

# the package calls the deprecated add(Number, Tensor) overloads of torch; the warning is theirs
pytestmark = pytest.mark.filterwarnings("ignore:This overload of add:UserWarning")

DT = torch.float64


CASES = {
    "defaults_with_decay": dict(lr=1e-2, weight_decay=5e-2),
    "tight_band": dict(lr=2e-2, betas=(0.8, 0.99), final_lr=0.05, gamma=0.1, eps=1e-6, weight_decay=1e-2),
    "low_final_rate": dict(lr=3e-2, final_lr=1e-3, gamma=5e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("amsbound", [False, True])
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_the_authors_package_every_step(case, amsbound):
    hyper = dict(CASES[case], amsbound=amsbound)
    ours, init = trajectory(lambda ps: AdaBound(ps, **hyper), 50)
    theirs, _ = trajectory(lambda ps: adabound.AdaBound(ps, **hyper), 50)
    assert worst_relative_difference(ours, theirs) < 1e-9
    moved = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 0.05


def test_amsbound_class_matches_the_package_with_amsbound_true():
    hyper = CASES["tight_band"]
    ours, _ = trajectory(lambda ps: AMSBound(ps, **hyper), 40)
    theirs, _ = trajectory(lambda ps: adabound.AdaBound(ps, **hyper, amsbound=True), 40)
    plain, _ = trajectory(lambda ps: adabound.AdaBound(ps, **hyper), 40)
    assert worst_relative_difference(ours, theirs) < 1e-9
    assert worst_relative_difference(ours, plain) > 1e-4  # the running maximum matters on this problem


@pytest.mark.parametrize("case", ["tight_band", "low_final_rate"])
def test_the_bounds_bind_in_the_oracle_cases(case):
    """Without the band (gamma=0 is Adam with eps outside the bias correction) the trajectory differs."""
    hyper = CASES[case]
    bounded, _ = trajectory(lambda ps: AdaBound(ps, **hyper), 40)
    free, _ = trajectory(lambda ps: AdaBound(ps, **{**hyper, "gamma": 0.0}), 40)
    assert worst_relative_difference(bounded, free) > 1e-2


def test_a_scheduler_scales_the_final_rate_as_in_the_package():
    hyper = CASES["tight_band"]

    def schedule(opt):
        return torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.3)

    ours, _ = trajectory(lambda ps: AdaBound(ps, **hyper), 45, schedule=schedule)
    theirs, _ = trajectory(lambda ps: adabound.AdaBound(ps, **hyper), 45, schedule=schedule)
    assert worst_relative_difference(ours, theirs) < 1e-9
    # and the scaling is not a no-op: an unscaled final rate gives another trajectory
    unscaled, _ = trajectory(lambda ps: _UnscaledFinalRate(ps, **hyper), 45, schedule=schedule)
    assert worst_relative_difference(ours, unscaled) > 1e-3


class _UnscaledFinalRate(AdaBound):
    @staticmethod
    def scaled_final_lr(h):
        return h.final_lr


def test_initial_lr_is_kept_in_the_group_and_in_the_state_dict():
    hyper = CASES["tight_band"]
    init, loss_fn = make_problem(1)

    def run(params, opt, steps, scheduler=None):
        for _ in range(steps):
            opt.zero_grad()
            loss_fn(params).backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()

    straight = [torch.nn.Parameter(w.clone()) for w in init]
    opt = AdaBound(straight, **hyper)
    assert [g["initial_lr"] for g in opt.param_groups] == [hyper["lr"]]
    for g in opt.param_groups:
        g["lr"] = hyper["lr"] / 4  # a decayed rate, set by hand as a scheduler would
    run(straight, opt, 12)

    first = [torch.nn.Parameter(w.clone()) for w in init]
    opt1 = AdaBound(first, **hyper)
    for g in opt1.param_groups:
        g["lr"] = hyper["lr"] / 4
    run(first, opt1, 5)
    saved = opt1.state_dict()
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in first]
    opt2 = AdaBound(resumed, **{**hyper, "lr": hyper["lr"] / 4})  # built with the decayed rate
    assert opt2.param_groups[0]["initial_lr"] == hyper["lr"] / 4
    opt2.load_state_dict(saved)
    assert opt2.param_groups[0]["initial_lr"] == hyper["lr"]
    run(resumed, opt2, 7)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def test_a_group_given_its_own_initial_lr_keeps_it():
    p = torch.nn.Parameter(torch.ones(2))
    opt = AdaBound([{"params": [p], "lr": 1e-3, "initial_lr": 1e-2}])
    assert opt.param_groups[0]["initial_lr"] == 1e-2
    with pytest.raises(ValueError, match="initial_lr"):
        AdaBound([{"params": [p], "initial_lr": -1.0}])


def test_zero_lr_freezes_the_group_and_zero_initial_lr_does_not_divide_by_zero():
    a, b = torch.nn.Parameter(torch.ones(3, dtype=DT)), torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = AdaBound([{"params": [a]}, {"params": [b], "lr": 0.0}], lr=1e-2)
    for _ in range(3):
        a.grad, b.grad = torch.full((3,), 0.5, dtype=DT), torch.full((3,), 0.5, dtype=DT)
        opt.step()
    assert torch.equal(b, torch.ones(3, dtype=DT)) and not torch.equal(a, torch.ones(3, dtype=DT))
    opt.param_groups[1]["lr"] = 1e-2  # built at 0: the final rate is then used unscaled
    b.grad = torch.full((3,), 0.5, dtype=DT)
    opt.step()
    assert torch.isfinite(b).all() and not torch.equal(b, torch.ones(3, dtype=DT))


def test_dynamic_bounds_close_on_the_final_rate():
    lower, upper = dynamic_bounds(0.1, 1e-3, 1.0)
    assert lower == pytest.approx(0.1 * (1 - 1 / 1.001)) and upper == pytest.approx(0.1 * 1001)
    lower, upper = dynamic_bounds(0.1, 1e-3, 1e9)
    assert lower == pytest.approx(0.1, rel=1e-5) and upper == pytest.approx(0.1, rel=1e-5)
    assert dynamic_bounds(0.1, 0.0, 5.0) == (0.0, float("inf"))


def test_first_step_by_hand():
    """t=1: m = (1-b1) g, v = (1-b2) g^2; rate = lr sqrt(1-b2) / (1-b1) / (sqrt(v) + eps), clipped."""
    lr, final_lr, gamma, b1, b2, eps = 0.05, 0.1, 0.5, 0.9, 0.999, 1e-8
    g = torch.tensor([1e-3, 0.5, -4.0, 20.0], dtype=DT)
    p0 = torch.tensor([1.0, -1.0, 2.0, 0.0], dtype=DT)
    transform = bounded_adam_step(lr, final_lr, gamma, b1, b2, eps)
    assert transform.writes
    p = p0.clone()
    s = {"exp_avg": (1 - b1) * g, "exp_avg_sq": (1 - b2) * g * g}
    transform.update(g, p, s, 1.0)
    lower, upper = final_lr * (1 - 1 / (gamma + 1)), final_lr * (1 + 1 / gamma)
    rate = (lr * (1 - b2) ** 0.5 / (1 - b1) / (((1 - b2) * g * g).sqrt() + eps)).clamp(lower, upper)
    assert float(rate.min()) == pytest.approx(lower) and float(rate.max()) == pytest.approx(upper)
    torch.testing.assert_close(p, p0 - rate * (1 - b1) * g, rtol=1e-14, atol=0)


def test_registered_names_and_defaults():
    assert gw.get("adabound") is AdaBound and gw.get("amsbound") is AMSBound
    assert AdaBound.defaults == dict(lr=1e-3, betas=(0.9, 0.999), final_lr=0.1, gamma=1e-3, eps=1e-8,
                                     weight_decay=0.0, amsbound=False)
    assert AMSBound.defaults == {**AdaBound.defaults, "amsbound": True}
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = gw.create("amsbound", model, lr=1e-2)
    assert isinstance(opt, AMSBound) and all(g["amsbound"] for g in opt.param_groups)
    assert all(g["initial_lr"] == 1e-2 for g in opt.param_groups)
    assert "arXiv:1902.09843" in AdaBound.__doc__ and "arXiv:1902.09843" in AMSBound.__doc__


@pytest.mark.parametrize(
    "name, value", [("gamma", 1.0), ("gamma", -0.1), ("final_lr", -0.1), ("eps", -1.0), ("weight_decay", -1.0),
                    ("amsbound", 1), ("betas", (0.9, 1.0))]
)
def test_bad_hyper_parameters_are_refused_with_their_name(name, value):
    with pytest.raises((ValueError, TypeError), match=name):
        AdaBound([torch.nn.Parameter(torch.zeros(2))], **{name: value})


def test_converges_on_the_small_network():
    init, loss_fn = make_problem(2, dtype=torch.float32)
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = AdaBound(params, lr=3e-2, final_lr=0.1)
    start = float(loss_fn(params).detach())
    for _ in range(120):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    assert float(loss_fn(params).detach()) < 0.2 * start
