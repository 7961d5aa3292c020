"""Lion against a plain reference written from the paper's Algorithm 2 (Chen et al., 2023), kept in
oracle_references.py (C-Lion's test uses it too)."""

from __future__ import annotations

import pytest
import torch
from oracle_problem import trajectory, worst_difference
from oracle_references import ReferenceLion

import gradwise as gw
from gradwise.optim.lion import Lion
from gradwise.transforms.sign import sign_momentum

DT = torch.float64


CASES = {
    "paper_defaults_larger_lr": dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0),
    "decay": dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.5),
    "other_betas": dict(lr=3e-3, betas=(0.95, 0.98), weight_decay=1.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_reference_every_step(case):
    hyper = CASES[case]
    ours, init = trajectory(lambda ps: Lion(ps, **hyper))
    theirs, _ = trajectory(lambda ps: ReferenceLion(ps, **hyper))
    assert worst_difference(ours, theirs) < 1e-14
    moved = max(float((a - b).abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 0.05


def test_oracle_comparison_detects_the_wrong_order():
    hyper = CASES["decay"]
    ours, _ = trajectory(lambda ps: Lion(ps, **hyper))
    wrong, _ = trajectory(lambda ps: ReferenceLion(ps, **hyper, update_momentum_first=True))
    assert worst_difference(ours, wrong) > 1e-3


def test_every_coordinate_moves_by_lr_and_momentum_tracks_beta2():
    lr, b1, b2 = 0.1, 0.9, 0.99
    p0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)
    g1 = torch.tensor([0.5, -1.0, 2.0, 1e-9], dtype=DT)
    g2 = torch.tensor([-0.5, 1.5, 2.0, -4.0], dtype=DT)
    p = torch.nn.Parameter(p0.clone())
    opt = Lion([p], lr=lr, betas=(b1, b2))
    p.grad = g1.clone()
    opt.step()
    torch.testing.assert_close(p.detach(), p0 - lr * torch.sign(g1), rtol=0, atol=0)
    torch.testing.assert_close(opt.state[p]["exp_avg"], (1 - b2) * g1, rtol=1e-15, atol=0)
    p.grad = g2.clone()
    opt.step()
    c2 = b1 * (1 - b2) * g1 + (1 - b1) * g2
    torch.testing.assert_close(p.detach(), p0 - lr * torch.sign(g1) - lr * torch.sign(c2), rtol=1e-15, atol=0)
    # coordinate 1: g2 = 1.5 against a momentum of -0.01: the interpolation follows g2 (beta1 weighs less)
    assert torch.sign(c2)[1] == 1


def test_zero_interpolation_leaves_the_coordinate_in_place():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=DT))
    opt = Lion([p], lr=0.1)
    p.grad = torch.tensor([0.0, 1.0], dtype=DT)
    opt.step()
    assert p[0].item() == 1.0


def test_sign_momentum_transform_returns_the_sign_and_keeps_u():
    t = sign_momentum(0.5, 0.75)
    u = torch.tensor([2.0, -4.0], dtype=DT)
    s = t.init(u)
    s["exp_avg"].copy_(torch.tensor([-8.0, 0.0], dtype=DT))
    out = t.update(u, u.clone(), s, 2.0)
    assert torch.equal(out, torch.tensor([-1.0, -1.0], dtype=DT))
    assert torch.equal(u, torch.tensor([2.0, -4.0], dtype=DT))
    assert torch.equal(s["exp_avg"], torch.tensor([-5.5, -1.0], dtype=DT))


def test_defaults_and_registry():
    assert Lion.defaults == dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0)
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    assert isinstance(gw.create("lion", [p]), Lion)
    assert any(tr.writes for tr in Lion([p]).chain(gw.core.hyper_parameters(Lion([p]).param_groups[0])))


@pytest.mark.parametrize("key,value", [("lr", -1.0), ("betas", (0.9, 1.0)), ("weight_decay", -0.1)])
def test_bad_values_name_the_argument(key, value):
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match=key):
        Lion([p], **{key: value})


def test_a_nan_gradient_is_not_hidden_by_the_sign_when_unchecked():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0], dtype=DT))
    opt = Lion([p], lr=0.1, nonfinite="ignore")
    p.grad = torch.tensor([float("nan"), float("inf"), -1.0], dtype=DT)
    opt.step()
    assert torch.isnan(p[0])
    assert p[1:].tolist() == [2.0 - 0.1, 3.0 + 0.1]
