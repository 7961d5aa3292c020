"""AdamW against its oracle, torch.optim.AdamW: equal bit for bit, in every flag combination."""

import itertools

import pytest
import torch

import gradwise as gw

FLAGS = list(itertools.product([False, True], [False, True], [0.0, 0.1]))


def model(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


@pytest.mark.parametrize("amsgrad,maximize,weight_decay", FLAGS)
def test_equals_torch_adamw_bit_for_bit_at_every_step(amsgrad, maximize, weight_decay):
    ours, theirs = model(0), model(0)
    hyper = dict(lr=3e-2, betas=(0.8, 0.95), eps=1e-7, weight_decay=weight_decay, amsgrad=amsgrad,
                 maximize=maximize)
    a = gw.AdamW(ours.parameters(), **hyper)
    b = torch.optim.AdamW(theirs.parameters(), foreach=False, **hyper)
    data = torch.Generator().manual_seed(1)
    for _ in range(40):
        x = torch.randn(16, 5, generator=data, dtype=torch.float64)
        y = torch.randn(16, 1, generator=data, dtype=torch.float64)
        for net, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
            assert torch.equal(p, q)


def test_defaults_are_torch_adamw_defaults():
    ours = gw.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    theirs = torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults
    for key in ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize"):
        assert ours[key] == theirs[key], key


def test_loads_a_torch_adamw_state_and_continues_identically():
    ours, theirs = model(2), model(2)
    b = torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)
    for _ in range(3):
        b.zero_grad()
        torch.nn.functional.mse_loss(theirs(x), y).backward()
        b.step()
    ours.load_state_dict(theirs.state_dict())
    a = gw.AdamW(ours.parameters(), lr=1e-2)
    a.load_state_dict(b.state_dict())
    for _ in range(3):
        for net, opt in ((ours, a), (theirs, b)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(x), y).backward()
            opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(p, q)
