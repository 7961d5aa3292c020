"""SPS (SPS_max, Loizou et al., 2021) and ALR-SMAG (Wang et al., 2023) against references written here from the
papers' update rules, per step in float64; the loss API; and SPS's claim on an interpolating least-squares problem."""

from __future__ import annotations

import pytest
import torch
from oracle_problem import make_problem, worst_difference, worst_relative_difference

import gradwise as gw
from gradwise.optim.polyak import ALRSMAG, SPS

DT = torch.float64
STEPS = 50


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


class ReferenceSPS:
    """gamma = min(max(0, f - f*) / (c ||g||^2 + eps), gamma_b);  x <- x - gamma g  (x and g whole vectors)."""

    def __init__(self, params, lr=1.0, c=0.5, f_star=0.0, eps=1e-8):
        self.params, self.lr, self.c, self.f_star, self.eps = list(params), lr, c, f_star, eps
        self.sizes = []

    @torch.no_grad()
    def step(self, loss):
        g = flat([p.grad for p in self.params])
        gamma = min(max(0.0, float(loss) - self.f_star) / (self.c * float(g @ g) + self.eps), self.lr)
        self.sizes.append(gamma)
        for p in self.params:
            p.sub_(gamma * p.grad)


class ReferenceALRSMAG:
    """d <- beta d + g;  eta = min(max(0, f - f*) / (c ||d||^2 + eps), eta_max);  x <- x (1 - eta wd) - eta d."""

    def __init__(self, params, lr=0.1, momentum=0.9, c=1.0, f_star=0.0, eps=1e-8, weight_decay=0.0):
        self.params, self.lr, self.beta, self.c = list(params), lr, momentum, c
        self.f_star, self.eps, self.wd = f_star, eps, weight_decay
        self.d = [torch.zeros_like(p) for p in self.params]
        self.sizes = []

    @torch.no_grad()
    def step(self, loss):
        self.d = [self.beta * d + p.grad for d, p in zip(self.d, self.params, strict=True)]
        direction = flat(self.d)
        eta = min(max(0.0, float(loss) - self.f_star) / (self.c * float(direction @ direction) + self.eps), self.lr)
        self.sizes.append(eta)
        for p, d in zip(self.params, self.d, strict=True):
            p.copy_(p * (1 - eta * self.wd) - eta * d)


def run(make_opt, steps=STEPS, seed=0, form="loss"):
    """The oracle problem, each step given its loss (`form`: "loss" -> step(loss=...), "closure" -> step(closure))."""
    init, loss_fn = make_problem(seed)
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = make_opt(params)
    out = []
    for _ in range(steps):
        if form == "closure":
            def closure():
                for p in params:
                    p.grad = None
                loss = loss_fn(params)
                loss.backward()
                return loss

            opt.step(closure)
        else:
            for p in params:
                p.grad = None
            loss = loss_fn(params)
            loss.backward()
            opt.step(loss=loss)
        out.append([p.detach().clone() for p in params])
    return out, opt


SPS_CASES = {
    "defaults": dict(),
    "capped": dict(lr=0.5),  # the cap binds on most steps
    "bound_and_c": dict(c=0.2, f_star=0.01),  # f_star above some losses late: gamma = 0 there
}
ALRSMAG_CASES = {
    "defaults": dict(),
    "decay_and_c": dict(lr=0.5, c=0.5, weight_decay=0.1),
    "low_momentum": dict(momentum=0.3, f_star=-0.05, lr=0.5),
}


@pytest.mark.parametrize("case", sorted(SPS_CASES))
def test_sps_equals_the_reference(case):
    hyper = SPS_CASES[case]
    ours, opt = run(lambda ps: SPS(ps, **hyper))
    theirs, ref = run(lambda ps: ReferenceSPS(ps, **hyper))
    # ||g||^2 is summed per tensor here and as one dot product in the reference: the last-bit difference
    # grows with the large steps of c=0.2 (about 1e-15 after 5 steps, 1e-10 after 50), so: exact early on
    assert worst_difference(ours[:10], theirs[:10]) <= 1e-13
    assert worst_difference(ours, theirs) <= 1e-9
    assert len(set(ref.sizes)) > 10  # the step size does adapt
    if case == "capped":
        assert sum(s == 0.5 for s in ref.sizes) > 10 and any(s < 0.5 for s in ref.sizes)


@pytest.mark.parametrize("case", sorted(ALRSMAG_CASES))
def test_alrsmag_equals_the_reference(case):
    hyper = ALRSMAG_CASES[case]
    ours, _ = run(lambda ps: ALRSMAG(ps, **hyper))
    theirs, ref = run(lambda ps: ReferenceALRSMAG(ps, **hyper))
    assert worst_difference(ours[:10], theirs[:10]) <= 1e-13
    assert worst_difference(ours, theirs) <= 1e-9
    assert len(set(ref.sizes)) > 10


@pytest.mark.parametrize("cls", [SPS, ALRSMAG])
def test_closure_and_loss_forms_agree_and_the_closure_loss_is_returned(cls):
    by_loss, _ = run(lambda ps: cls(ps), 10, form="loss")
    by_closure, _ = run(lambda ps: cls(ps), 10, form="closure")
    assert worst_relative_difference(by_loss, by_closure) == 0.0
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = cls([p])

    def closure():
        opt.zero_grad()
        loss = (p**2).sum()
        loss.backward()
        return loss

    assert float(opt.step(closure).detach()) == 3.0
    assert opt.last_step_size[0] is not None and opt.last_step_size[0].dim() == 0


@pytest.mark.parametrize("cls", [SPS, ALRSMAG])
def test_a_step_without_the_loss_says_how_to_give_it(cls):
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = cls([p])
    p.grad = torch.ones(3, dtype=DT)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="both"):
        opt.step(lambda: torch.tensor(1.0), loss=1.0)
    with pytest.raises(ValueError, match="single number"):
        opt.step(loss=torch.ones(2))
    assert torch.equal(p.detach(), torch.ones(3, dtype=DT))


def test_a_loss_below_its_bound_does_not_move_and_a_plain_float_is_accepted():
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = SPS([p], f_star=2.0)
    p.grad = torch.ones(3, dtype=DT)
    opt.step(loss=1.5)
    assert torch.equal(p.detach(), torch.ones(3, dtype=DT))
    opt.step(loss=2.5)  # gamma = 0.5 / (0.5 * 3 + 1e-8)
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.5 / (1.5 + 1e-8), dtype=DT))


def test_step_size_is_shared_across_groups_with_their_own_caps():
    a, b = torch.nn.Parameter(torch.ones(2, dtype=DT)), torch.nn.Parameter(torch.ones(2, dtype=DT))
    opt = SPS([{"params": [a]}, {"params": [b], "lr": 0.01}])
    a.grad, b.grad = torch.full((2,), 0.5, dtype=DT), torch.full((2,), 0.5, dtype=DT)
    opt.step(loss=1.0)  # ||g||^2 = 1 over both groups: gamma = 1 / (0.5 + 1e-8), capped at 1.0 and 0.01
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.5, dtype=DT))
    torch.testing.assert_close(b.detach(), torch.full((2,), 1 - 0.005, dtype=DT))


def test_alrsmag_refuses_8_bit_state():
    with pytest.raises(ValueError, match="state_bits"):
        ALRSMAG([torch.nn.Parameter(torch.ones(2))], state_bits=8)


def least_squares(scale, seed=0, rows=60, features=20):
    """An interpolating problem: b = A x* exactly, so every row's loss is 0 at x* (f_i* = 0)."""
    g = torch.Generator().manual_seed(seed)
    a = scale * torch.randn(rows, features, generator=g, dtype=DT)
    b = a @ torch.randn(features, generator=g, dtype=DT)
    return a, b, g


def train(make_opt, scale, steps=600, batch=6):
    a, b, g = least_squares(scale)
    x = torch.zeros(a.shape[1], dtype=DT, requires_grad=True)
    opt = make_opt([x])
    full = lambda: float(0.5 * ((a @ x.detach() - b) ** 2).mean())  # noqa: E731
    start = full()
    for _ in range(steps):
        rows = torch.randint(0, a.shape[0], (batch,), generator=g)
        opt.zero_grad()
        loss = 0.5 * ((a[rows] @ x - b[rows]) ** 2).mean()
        loss.backward()
        if getattr(opt, "needs_loss", False):
            opt.step(loss=loss)
        else:
            opt.step()
        if not torch.isfinite(x).all():
            return float("inf")
    return full() / start


def test_sps_solves_interpolating_least_squares_at_every_scale_without_tuning():
    """The paper's claim: under interpolation SPS converges fast with no step size to tune. The same default
    SPS solves the problem whether the data are scaled by 0.5 or 20 (curvature x1600); SGD with one fixed lr
    either diverges at the large scale or crawls at the small one."""
    for scale in (0.5, 2.0, 20.0):
        assert train(lambda ps: SPS(ps), scale) < 1e-8, scale
    sgd = {scale: train(lambda ps: torch.optim.SGD(ps, lr=0.05), scale) for scale in (0.5, 20.0)}
    assert sgd[20.0] == float("inf") or sgd[20.0] > 1.0
    assert sgd[0.5] > 1e-6


def test_registered_and_exported():
    assert gw.get("sps") is SPS and gw.get("alrsmag") is ALRSMAG
    assert gw.SPS is SPS and gw.ALRSMAG is ALRSMAG
