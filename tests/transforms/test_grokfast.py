"""Grokfast options against the authors' gradfilter_ema / gradfilter_ma (re-written here from the paper's
code) applied to p.grad before torch's AdamW."""

from collections import deque

import pytest
import torch

import gradwise as gw

STEPS = 40


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)).double()


def backward(model, i):
    g = torch.Generator().manual_seed(200 + i)
    x, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, 1, generator=g, dtype=torch.float64)
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


def ref_ema(model, grads, alpha, lamb):
    if grads is None:
        grads = {n: p.grad.detach() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        grads[n] = grads[n] * alpha + p.grad.detach() * (1 - alpha)
        p.grad = p.grad + grads[n] * lamb
    return grads


def ref_ma(model, grads, window, lamb):
    if grads is None:
        grads = {n: deque(maxlen=window) for n, _ in model.named_parameters()}
    for n, p in model.named_parameters():
        grads[n].append(p.grad.detach())
        if len(grads[n]) == window:
            p.grad = p.grad + sum(grads[n]) / len(grads[n]) * lamb
    return grads


def run_pair(options, reference):
    ours, theirs = net(), net()
    opt = gw.AdamW(ours.parameters(), lr=1e-2, **options)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False)
    grads = None
    for i in range(STEPS):
        backward(ours, i)
        backward(theirs, i)
        raw = [p.grad.clone() for p in ours.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, r) for p, r in zip(ours.parameters(), raw, strict=True))
        grads = reference(theirs, grads)
        ref.step()
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    return ours, opt


def test_ema_matches_authors_filter():
    run_pair(dict(grokfast="ema"), lambda m, g: ref_ema(m, g, 0.98, 2.0))
    run_pair(dict(grokfast="ema", grokfast_alpha=0.8, grokfast_lamb=0.5), lambda m, g: ref_ema(m, g, 0.8, 0.5))


def test_ma_matches_authors_filter():
    run_pair(dict(grokfast="ma", grokfast_window=7), lambda m, g: ref_ma(m, g, 7, 5.0))
    run_pair(dict(grokfast="ma", grokfast_window=5, grokfast_lamb=1.5), lambda m, g: ref_ma(m, g, 5, 1.5))


def test_filter_actually_changes_the_trajectory():
    plain, _ = run_pair({}, lambda m, g: g)
    filtered, _ = run_pair(dict(grokfast="ema", grokfast_lamb=0.0), lambda m, g: g)  # lamb 0: same as plain
    for a, b in zip(plain.parameters(), filtered.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError):
        run_pair(dict(grokfast="ema"), lambda m, g: g)


@pytest.mark.parametrize("mode", ["ema", "ma"])
def test_state_dict_round_trip_continues_exactly(mode):
    options = dict(grokfast=mode, grokfast_window=4)
    a, b = net(), net()
    opt_a = gw.AdamW(a.parameters(), lr=1e-2, **options)
    for i in range(6):
        backward(a, i)
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = gw.AdamW(b.parameters(), lr=1e-2, **options)
    opt_b.load_state_dict(opt_a.state_dict())
    for i in range(6, 12):
        for model, opt in ((a, opt_a), (b, opt_b)):
            backward(model, i)
            opt.step()
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("key,bad", [("grokfast", "sma"), ("grokfast_alpha", 1.0), ("grokfast_lamb", -1.0),
                                     ("grokfast_window", 0)])
def test_bad_values_name_the_argument(key, bad):
    with pytest.raises((ValueError, TypeError), match=key):
        gw.create("adamw", net().parameters(), **{key: bad})
