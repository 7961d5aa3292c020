"""The generic suite's contracts again with 8-bit state, for every registered optimizer: the state is really
quantized, saving and resuming repeats an uninterrupted run bit for bit, a skipped non-finite step leaves the
codes untouched, and training gets nearly as far as with 32-bit state."""

from __future__ import annotations

import pytest
import torch

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.core.registry import entry

NAMES = [n for n in gw.available() if entry(n).kind == "optimizer" and not getattr(gw.get(n), "needs_loss", False)]
EIGHT_BIT = dict(state_bits=8, state_block=64, state_min_size=0)


def make(name, params, **extra):
    return gw.create(name, params, lr=1.0 if name == "adagradnorm" else 1e-2, **extra)


def parameters(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in [(12, 20), (40,)]]


def loss_fn(params, k):
    return sum((torch.sin(p * (1 + k % 3 + i)) * p).sum() + 0.1 * (p**2).sum() for i, p in enumerate(params))


def run(opt, params, steps, start=0):
    for k in range(start, start + steps):
        opt.zero_grad()
        loss_fn(params, k).backward()
        opt.step()


@pytest.mark.parametrize("name", NAMES)
def test_8_bit_state_is_quantized_and_resuming_equals_an_uninterrupted_run(name):
    full_params = parameters()
    full = make(name, full_params)
    run(full, full_params, 1)
    moments = {k for s in full.state.values() for k, v in s.items()
               if k != "step" and torch.is_tensor(v) and v.is_floating_point() and v.shape == full_params[0].shape}
    whole = parameters()
    opt = make(name, whole, **EIGHT_BIT)
    run(opt, whole, 12)
    state = opt.state[whole[0]]
    assert all(state[k].dtype == torch.uint8 and k + "_absmax" in state for k in moments)
    first = parameters()
    opt_a = make(name, first, **EIGHT_BIT)
    run(opt_a, first, 6)
    second = [p.detach().clone().requires_grad_() for p in first]
    opt_b = make(name, second, **EIGHT_BIT)
    opt_b.load_state_dict(roundtrip(opt_a.state_dict()))
    run(opt_b, second, 6, start=6)
    for p, q in zip(whole, second, strict=True):
        assert torch.equal(p, q)
    for p, q in zip(whole, second, strict=True):
        tensors = [k for k, v in opt.state[p].items() if torch.is_tensor(v)]
        assert all(torch.equal(opt.state[p][k], opt_b.state[q][k]) for k in tensors)


@pytest.mark.parametrize("name", NAMES)
def test_a_skipped_non_finite_step_leaves_8_bit_state_untouched(name):
    params = parameters()
    opt = make(name, params, **EIGHT_BIT)
    run(opt, params, 2)
    before = [{k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()} for p in params]
    values = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss_fn(params, 0).backward()
    params[0].grad[0, 0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    for p, v, saved in zip(params, values, before, strict=True):
        assert torch.equal(p, v)
        assert all(torch.equal(opt.state[p][k], x) if torch.is_tensor(x) else opt.state[p][k] == x
                   for k, x in saved.items())


@pytest.mark.parametrize("name", NAMES)
def test_8_bit_state_trains_nearly_as_far_as_32_bit_state(name):
    start = float(loss_fn(parameters(), 0).detach())
    finals = []
    for extra in ({}, EIGHT_BIT):
        params = parameters()
        run(make(name, params, **extra), params, 20)
        finals.append(float(loss_fn(params, 0).detach()))
    full, lean = finals
    assert abs(lean - full) <= 0.1 * abs(start - full) + 1e-3, (start, full, lean)
