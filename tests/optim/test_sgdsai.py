"""SGD-SaI against the authors' PyPI package sgd-sai 1.0.3 and a reference written here from its rule."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from oracle_problem import trajectory, worst_difference, worst_relative_difference

import gradwise as gw
from gradwise.optim.sgdsai import SGDSaI
from gradwise.transforms.snr import gradient_snr

DT = torch.float64
STEPS = 50

sgd_sai = pytest.importorskip("sgd_sai")


class Quiet:
    """The authors' optimizer prints a banner on its first step: keep the test output clean."""

    def __init__(self, opt):
        self.opt = opt

    def step(self):
        with contextlib.redirect_stdout(io.StringIO()):
            self.opt.step()


class ReferenceSGDSaI:
    """The rule, one line per formula: gsnr from the first gradient, EMA momentum, decay, scaled step."""

    def __init__(self, params, lr=1e-2, momentum=0.9, eps=1e-8, weight_decay=1e-2):
        self.params, self.lr, self.momentum, self.eps, self.wd = list(params), lr, momentum, eps, weight_decay
        self.gsnr, self.buf = {}, {}

    @torch.no_grad()
    def step(self):
        for i, p in enumerate(self.params):
            g = p.grad
            if i not in self.gsnr:
                n = g.numel()
                std = ((g - g.mean()) ** 2).sum().div(n - 1).sqrt() if n > 1 else torch.zeros((), dtype=g.dtype)
                self.gsnr[i] = (g**2).sum().sqrt() / (std + self.eps)
                self.buf[i] = g.clone()
            else:
                self.buf[i] = self.momentum * self.buf[i] + (1 - self.momentum) * g
            p.copy_(p * (1 - self.lr * self.wd) - self.lr * self.gsnr[i] * self.buf[i])


CASES = {
    "defaults": dict(),
    "decay": dict(lr=5e-3, weight_decay=0.3),
    "low_momentum": dict(lr=2e-3, momentum=0.5, eps=1e-3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectory_equals_the_authors_package(case):
    hyper = CASES[case]
    ours, init = trajectory(lambda ps: SGDSaI(ps, **hyper), STEPS)
    theirs, _ = trajectory(lambda ps: Quiet(sgd_sai.SGD_sai(ps, **hyper)), STEPS)
    assert worst_relative_difference(ours, theirs) <= 1e-12
    moved = max(float((a - b).abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 1e-2


@pytest.mark.parametrize("case", sorted(CASES))
def test_trajectory_equals_the_reference(case):
    hyper = CASES[case]
    ours, _ = trajectory(lambda ps: SGDSaI(ps, **hyper), STEPS)
    theirs, _ = trajectory(lambda ps: ReferenceSGDSaI(ps, **hyper), STEPS)
    assert worst_relative_difference(ours, theirs) <= 1e-11


def test_the_scale_differs_between_tensors_and_is_frozen_after_the_first_step():
    init, _ = trajectory(lambda ps: SGDSaI(ps), 1)
    params = [torch.nn.Parameter(torch.randn(s, dtype=DT)) for s in ((5, 12), (12,), (12, 1))]
    opt = SGDSaI(params)
    for p in params:
        p.grad = torch.randn_like(p)
    first = [gradient_snr(p.grad, 1e-8) for p in params]
    opt.step()
    for p in params:
        p.grad = 100 * torch.randn_like(p)
    opt.step()
    scales = [opt.state[p]["gsnr"] for p in params]
    for s, f in zip(scales, first, strict=True):
        assert torch.equal(s, f)
    assert len({round(float(s), 6) for s in scales}) == 3


def test_a_tensor_without_gradient_at_first_takes_its_scale_when_it_gets_one():
    a, b = (torch.nn.Parameter(torch.ones(4, dtype=DT)) for _ in range(2))
    opt = SGDSaI([a, b], lr=0.1, weight_decay=0.0)
    a.grad = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=DT)
    opt.step()
    assert b not in opt.state
    b.grad = torch.tensor([4.0, 0.0, 0.0, 0.0], dtype=DT)
    opt.step()
    torch.testing.assert_close(opt.state[b]["gsnr"], gradient_snr(b.grad, 1e-8))


def test_snr_of_a_one_element_tensor_is_its_magnitude_over_eps():
    assert float(gradient_snr(torch.tensor([-3.0], dtype=DT), 0.5)) == 6.0
    g = torch.tensor([1.0, 3.0], dtype=DT)  # std (unbiased) = sqrt(2), norm = sqrt(10)
    torch.testing.assert_close(gradient_snr(g, 0.0), torch.tensor(5.0**0.5, dtype=DT))


def test_without_momentum_it_is_scaled_sgd():
    ours, _ = trajectory(lambda ps: SGDSaI(ps, lr=1e-3, momentum=0.0, weight_decay=0.0), 20)
    theirs, _ = trajectory(lambda ps: ReferenceSGDSaI(ps, lr=1e-3, momentum=0.0, weight_decay=0.0), 20)
    assert worst_difference(ours, theirs) <= 1e-12


def test_defaults_follow_the_authors():
    import inspect

    theirs = inspect.signature(sgd_sai.SGD_sai).parameters
    for key, value in SGDSaI.defaults.items():
        assert theirs[key].default == value, key


def test_reduces_the_loss_of_the_oracle_problem():
    from oracle_problem import make_problem

    init, loss_fn = make_problem()
    params = [torch.nn.Parameter(w.clone()) for w in init]
    opt = gw.create("sgdsai", params, lr=1e-3)
    start = float(loss_fn(params).detach())
    for _ in range(100):
        opt.zero_grad()
        loss_fn(params).backward()
        opt.step()
    assert float(loss_fn(params).detach()) < 0.5 * start


def test_momentum_out_of_range_names_the_argument():
    with pytest.raises(ValueError, match="momentum"):
        SGDSaI([torch.nn.Parameter(torch.ones(2))], momentum=1.0)
