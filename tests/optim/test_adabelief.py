"""AdaBelief against its oracle, the authors' package adabelief-pytorch 0.2.1, in every flag combination."""

import itertools
import math

import pytest
import torch
from adabelief_pytorch import AdaBelief as PackageAdaBelief

import gradwise as gw
from gradwise.transforms.belief import rectification

# decoupled_weight_decay x rectify x amsgrad
FLAGS = list(itertools.product([False, True], [False, True], [False, True]))
STEPS = 50


def model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


def relative_difference(p, q):
    return float((p - q).detach().norm() / q.detach().norm())


def batches(steps, seed=1):
    data = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        yield torch.randn(16, 5, generator=data, dtype=torch.float64), torch.randn(16, 1, generator=data,
                                                                                    dtype=torch.float64)


def train_step(net, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.mse_loss(net(x), y).backward()
    opt.step()


@pytest.mark.parametrize("eps", [1e-16, 1e-6])
@pytest.mark.parametrize("decoupled,rectify,amsgrad", FLAGS)
def test_trajectory_equals_the_authors_package_at_every_step(decoupled, rectify, amsgrad, eps):
    # eps=1e-6 makes the eps stored into s at every step weigh on the trajectory; 50 steps cover both
    # branches of the rectified step (rho_t < 5 up to step 5 with beta2=0.999, then the adaptive step).
    ours, theirs = model(0), model(0)
    hyper = dict(lr=2e-2, betas=(0.9, 0.999), eps=eps, weight_decay=0.1, amsgrad=amsgrad, rectify=rectify)
    a = gw.AdaBelief(ours.parameters(), decoupled_weight_decay=decoupled, **hyper)
    b = PackageAdaBelief(theirs.parameters(), weight_decouple=decoupled, print_change_log=False, **hyper)
    worst = 0.0
    for x, y in batches(STEPS):
        train_step(ours, a, x, y)
        train_step(theirs, b, x, y)
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            worst = max(worst, relative_difference(p, q))
            assert worst < 1e-10  # measured: below 2e-15 in every combination (the brief asks < 1e-4)
    start = model(0)
    moved = [relative_difference(p, q) for p, q in zip(ours.parameters(), start.parameters(), strict=True)]
    assert min(moved) > 1e-2  # the trajectory went somewhere: the comparison is not of two idle models
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        mine, package = a.state[p], b.state[q]
        for key in ("exp_avg", "exp_avg_var", *(("max_exp_avg_var",) if amsgrad else ())):
            torch.testing.assert_close(mine[key], package[key], rtol=1e-6, atol=1e-300)


def test_the_oracle_comparison_catches_a_missing_eps_in_the_stored_variance():
    # The same run without the eps added into s (Adam-like storage) drifts from the package: the
    # oracle test above can fail on the quirk it claims to reproduce.
    ours, theirs = model(0), model(0)
    hyper = dict(lr=2e-2, eps=1e-6, weight_decay=0.1, rectify=False)
    a = gw.AdaBelief(ours.parameters(), **hyper)
    b = PackageAdaBelief(theirs.parameters(), print_change_log=False, **hyper)
    for x, y in batches(STEPS):
        train_step(ours, a, x, y)
        for p in ours.parameters():
            a.state[p]["exp_avg_var"].sub_(hyper["eps"])  # undo the quirk after each step
        train_step(theirs, b, x, y)
    worst = max(relative_difference(p, q) for p, q in zip(ours.parameters(), theirs.parameters(), strict=True))
    assert worst > 1e-3


def test_defaults_are_the_packages():
    ours = gw.AdaBelief([torch.zeros(1, requires_grad=True)])
    theirs = PackageAdaBelief([torch.zeros(1, requires_grad=True)], print_change_log=False)
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad"):
        assert ours.defaults[key] == theirs.defaults[key], key
    assert ours.defaults["decoupled_weight_decay"] == theirs.weight_decouple
    assert ours.defaults["rectify"] == theirs.rectify
    assert theirs.degenerated_to_sgd and not theirs.fixed_decay


def test_coupled_weight_decay_leaves_p_grad_untouched():
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = gw.AdaBelief([p], lr=0.1, weight_decay=0.5, decoupled_weight_decay=False)
    for _ in range(3):
        grad = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
        p.grad = grad.clone()
        opt.step()
        assert torch.equal(p.grad, grad)


def test_first_steps_are_momentum_sgd_while_the_sma_length_is_below_5():
    # rho_t < 5 for t <= 5 when beta2 = 0.999: the step is lr * m / (1 - beta1^t), with no denominator.
    assert [rectification(0.999, t) is None for t in range(1, 8)] == [True] * 5 + [False] * 2
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = gw.AdaBelief([p], lr=0.1)
    m = torch.zeros(2, dtype=torch.float64)
    for t in range(1, 6):
        grad = torch.tensor([3.0 * t, -0.5], dtype=torch.float64)
        before = p.detach().clone()
        p.grad = grad
        opt.step()
        m = 0.9 * m + 0.1 * grad
        torch.testing.assert_close(p.detach(), before - 0.1 * m / (1 - 0.9**t), rtol=1e-14, atol=0)


def test_rectified_step_ignores_the_amsgrad_maximum():
    # The package keeps max_exp_avg_var up to date but its rectified step divides by exp_avg_var.
    with_max, without = model(3), model(3)
    a = gw.AdaBelief(with_max.parameters(), lr=2e-2, amsgrad=True)
    b = gw.AdaBelief(without.parameters(), lr=2e-2, amsgrad=False)
    for x, y in batches(30, seed=4):
        train_step(with_max, a, x, y)
        train_step(without, b, x, y)
    above = []
    for p, q in zip(with_max.parameters(), without.parameters(), strict=True):
        assert torch.equal(p, q)
        s = a.state[p]
        assert torch.all(s["max_exp_avg_var"] >= s["exp_avg_var"])
        above.append(bool(torch.any(s["max_exp_avg_var"] > s["exp_avg_var"])))
    assert any(above)  # the maximum differs from s: it would have changed an unrectified step


def test_amsgrad_changes_the_unrectified_step():
    a_net, b_net = model(3), model(3)
    a = gw.AdaBelief(a_net.parameters(), lr=2e-2, amsgrad=True, rectify=False)
    b = gw.AdaBelief(b_net.parameters(), lr=2e-2, amsgrad=False, rectify=False)
    for x, y in batches(30, seed=4):
        train_step(a_net, a, x, y)
        train_step(b_net, b, x, y)
    assert any(not torch.equal(p, q) for p, q in zip(a_net.parameters(), b_net.parameters(), strict=True))


def first_step_inside(f, opt_factory, start, radius=0.05, steps=1000):
    w = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = opt_factory([w])
    first, last = None, math.inf
    for i in range(steps):
        opt.zero_grad()
        f(w).backward()
        opt.step()
        if first is None and float(w.detach().abs().max()) < radius:
            first = i
        last = float(w.detach().abs().max())
    return first, last


TOYS = {
    "|x| + |y|": (lambda w: w[0].abs() + w[1].abs(), (2.0, -0.5)),
    "(x + y)^2 + (x - y)^2 / 10": (lambda w: (w[0] + w[1]) ** 2 + (w[0] - w[1]) ** 2 / 10, (1.0, 2.0)),
}


@pytest.mark.parametrize("toy", list(TOYS))
def test_paper_toy_functions_optimum_reached_before_adam(toy):
    # Zhuang et al. (2020), Fig. 3: on these 2-D functions, minimum at (0, 0), AdaBelief (the paper's
    # Algorithm 1, without rectification) reaches the optimum before Adam at the same learning rate.
    f, start = TOYS[toy]
    belief_first, belief_last = first_step_inside(f, lambda p: gw.AdaBelief(p, lr=1e-2, rectify=False), start)
    adam_first, _ = first_step_inside(f, lambda p: torch.optim.Adam(p, lr=1e-2), start)
    assert belief_first is not None and belief_last < 0.05
    assert adam_first is None or belief_first < adam_first


def test_default_adabelief_settles_at_the_optimum_of_abs_x_plus_abs_y():
    f, start = TOYS["|x| + |y|"]
    first, last = first_step_inside(f, lambda p: gw.AdaBelief(p, lr=1e-2), start, radius=0.01)
    assert first is not None and last < 0.01


def test_converges_on_a_small_regression():
    torch.manual_seed(5)
    x = torch.randn(64, 5, dtype=torch.float64)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    net = model(5)
    opt = gw.AdaBelief(net.parameters(), lr=1e-2, weight_decay=1e-4)
    start = torch.nn.functional.mse_loss(net(x), y).item()
    for _ in range(300):
        train_step(net, opt, x, y)
    assert torch.nn.functional.mse_loss(net(x), y).item() < 0.1 * start
