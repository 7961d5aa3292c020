"""ADOPT against a plain reference of the authors' update (iShohei220/adopt, adopt.py, single-tensor path).

The PyPI package named "adopt" is an unrelated Azure DevOps tool, so the oracle is written here.
"""

from __future__ import annotations

import pytest
import torch
from oracle_problem import trajectory, worst_relative_difference

import gradwise as gw
from gradwise.optim.adopt import ADOPT

DT = torch.float64


class ReferenceADOPT:
    """The authors' order, step counted from 0 as in their code; one plain expression per line.

    k = 0: v = g^2 and nothing else. k >= 1: decoupled decay, n = g / max(sqrt(v), eps), clip n to
    +-k^clip_exp, m = b1 m + (1 - b1) n, p = p - lr m, v = b2 v + (1 - b2) g^2. Coupled decay adds wd p to
    g before all of this, on every step including the first.
    """

    def __init__(self, params, lr, betas, eps, weight_decay, decouple, clip_exp,
                 v_includes_current=False):
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.wd, self.decouple, self.clip_exp, self.k = weight_decay, decouple, clip_exp, 0
        self.v_includes_current = v_includes_current  # Adam's order, to show that the test notices
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        b1, b2 = self.betas
        k = self.k
        self.k += 1
        for i, p in enumerate(self.params):
            g = p.grad
            if self.wd != 0 and not self.decouple:
                g = g + self.wd * p
            if k == 0:
                self.v[i] = g * g
                continue
            if self.wd != 0 and self.decouple:
                p.copy_(p - self.lr * self.wd * p)
            if self.v_includes_current:
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            n = g / torch.maximum(torch.sqrt(self.v[i]), torch.tensor(self.eps, dtype=g.dtype))
            if self.clip_exp is not None:
                n = torch.clamp(n, -(k**self.clip_exp), k**self.clip_exp)
            self.m[i] = b1 * self.m[i] + (1 - b1) * n
            p.copy_(p - self.lr * self.m[i])
            if not self.v_includes_current:
                self.v[i] = b2 * self.v[i] + (1 - b2) * g * g


BASE = dict(lr=2e-2, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0, decouple=False, clip_exp=0.25)
CASES = {
    "defaults_clipped": BASE,
    "unclipped": dict(BASE, clip_exp=None),
    "coupled_decay": dict(BASE, weight_decay=0.1),
    "decoupled_decay_unclipped": dict(BASE, weight_decay=0.1, decouple=True, clip_exp=None),
    "other_betas_large_eps": dict(BASE, betas=(0.5, 0.9), eps=1e-2, clip_exp=0.5, weight_decay=0.05, decouple=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_reference_every_step(case):
    hyper = CASES[case]
    ours, init = trajectory(lambda ps: ADOPT(ps, **hyper))
    theirs, _ = trajectory(lambda ps: ReferenceADOPT(ps, **hyper))
    assert worst_relative_difference(ours, theirs) < 1e-10
    moved = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 0.05


def test_oracle_comparison_detects_adams_order():
    hyper = CASES["unclipped"]
    ours, _ = trajectory(lambda ps: ADOPT(ps, **hyper))
    wrong, _ = trajectory(lambda ps: ReferenceADOPT(ps, **hyper, v_includes_current=True))
    assert worst_relative_difference(ours, wrong) > 1e-3


def test_clipping_is_active_by_default_and_none_turns_it_off():
    """A zero-initialised layer gives v = 0 at step 1, then n = g / eps: huge unless clipped."""
    def run(clip_exp):
        p = torch.nn.Parameter(torch.zeros(3, dtype=DT))
        opt = ADOPT([p], lr=0.1, clip_exp=clip_exp)
        p.grad = torch.zeros(3, dtype=DT)
        opt.step()
        assert torch.equal(p.detach(), torch.zeros(3, dtype=DT))  # the first step only records v
        p.grad = torch.tensor([1.0, -1.0, 1e-3], dtype=DT)
        opt.step()
        return p.detach().clone()

    clipped, free = run(0.25), run(None)
    # t = 2: limit (2 - 1)^0.25 = 1, so n = (1, -1, 1) and m = 0.1 n
    torch.testing.assert_close(clipped, torch.tensor([-0.01, 0.01, -0.01], dtype=DT), rtol=1e-14, atol=0)
    torch.testing.assert_close(free, -0.1 * 0.1 * torch.tensor([1e6, -1e6, 1e3], dtype=DT), rtol=1e-12, atol=0)
    assert ADOPT.defaults["clip_exp"] == 0.25


def test_first_step_records_v_only_even_with_decoupled_decay():
    p0 = torch.tensor([1.0, -2.0], dtype=DT)
    p = torch.nn.Parameter(p0.clone())
    opt = ADOPT([p], lr=0.1, weight_decay=0.5, decouple=True)
    p.grad = torch.tensor([3.0, 0.5], dtype=DT)
    opt.step()
    assert torch.equal(p.detach(), p0)
    assert torch.equal(opt.state[p]["exp_avg_sq"], torch.tensor([9.0, 0.25], dtype=DT))
    assert torch.equal(opt.state[p]["exp_avg"], torch.zeros(2, dtype=DT))


def test_coupled_decay_enters_v_from_the_first_step():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=DT))
    opt = ADOPT([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.tensor([3.0, 0.5], dtype=DT)
    opt.step()
    assert torch.equal(opt.state[p]["exp_avg_sq"], torch.tensor([3.5**2, 0.5**2], dtype=DT))


def test_defaults_and_registry():
    assert ADOPT.defaults == dict(lr=1e-3, betas=(0.9, 0.9999), eps=1e-6, weight_decay=0.0, decouple=False,
                                  clip_exp=0.25)
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = gw.create("adopt", [p])
    assert isinstance(opt, ADOPT)
    assert [tr.writes for tr in opt.chain(gw.core.hyper_parameters(opt.param_groups[0]))] == [False, False, True]


@pytest.mark.parametrize("key,value", [("lr", -1.0), ("betas", (1.0, 0.9)), ("eps", -1e-8),
                                       ("weight_decay", -0.1), ("clip_exp", -0.5)])
def test_bad_values_name_the_argument(key, value):
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match=key):
        ADOPT([p], **{key: value})
