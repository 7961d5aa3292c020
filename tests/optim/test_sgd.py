"""SGD against torch.optim.SGD: the same trajectory in float64 for every combination of its flags."""

from __future__ import annotations

import itertools

import pytest
import torch
from oracle_problem import trajectory, worst_difference

import gradwise as gw
from gradwise.optim.sgd import SGD

DT = torch.float64


CASES = [
    dict(lr=0.05, momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov, maximize=maximize)
    for momentum, dampening, wd, nesterov, maximize in itertools.product(
        (0.0, 0.9), (0.0, 0.3), (0.0, 0.05), (False, True), (False, True))
    if not (nesterov and (momentum == 0 or dampening != 0))
]


@pytest.mark.parametrize("hyper", CASES, ids=lambda h: "-".join(f"{k}={v}" for k, v in h.items()))
def test_trajectory_equals_torch_sgd_every_step(hyper):
    ours, init = trajectory(lambda ps: SGD(ps, **hyper))
    theirs, _ = trajectory(lambda ps: torch.optim.SGD(ps, **hyper, foreach=False))
    assert worst_difference(ours, theirs) <= 1e-15
    moved = max(float((a - b).abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 1e-2


def test_every_flag_changes_the_trajectory():
    """So that the cases above compare different things: each flag moves the result away from plain SGD."""
    plain, _ = trajectory(lambda ps: SGD(ps, lr=0.05), 20)
    for change in (dict(momentum=0.9), dict(momentum=0.9, dampening=0.3), dict(momentum=0.9, nesterov=True),
                   dict(weight_decay=0.05)):
        other, _ = trajectory(lambda ps, c=change: SGD(ps, lr=0.05, **c), 20)
        assert worst_difference(plain, other) > 1e-4, change


def test_defaults_follow_torch():
    import inspect

    theirs = inspect.signature(torch.optim.SGD).parameters
    for key, value in SGD.defaults.items():
        assert theirs[key].default == value, key


def test_registered_and_created_by_name():
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    assert isinstance(gw.create("sgd", [p], lr=0.1), SGD)


def test_without_momentum_no_buffer_is_kept():
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = SGD([p], lr=0.1)
    p.grad = torch.ones(3, dtype=DT)
    opt.step()
    assert "momentum_buffer" not in opt.state[p]


@pytest.mark.parametrize("bad", [dict(nesterov=True), dict(nesterov=True, momentum=0.9, dampening=0.1)])
def test_nesterov_needs_momentum_and_no_dampening(bad):
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="nesterov"):
        SGD([p], lr=0.1, **bad)


def test_nesterov_is_checked_in_each_param_group():
    a, b = torch.nn.Parameter(torch.ones(3, dtype=DT)), torch.nn.Parameter(torch.ones(3, dtype=DT))
    opt = SGD([{"params": [a]}], lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match=r"nesterov.*param group 1"):
        opt.add_param_group({"params": [b], "momentum": 0.0})
    assert len(opt.param_groups) == 1


@pytest.mark.parametrize("key,value", [("lr", -1.0), ("momentum", -0.1), ("dampening", -0.1),
                                       ("weight_decay", -1e-3)])
def test_bad_values_name_the_argument(key, value):
    p = torch.nn.Parameter(torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match=key):
        SGD([p], **{key: value})
