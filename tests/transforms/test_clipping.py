"""Clipping options against torch.nn.utils.clip_grad_norm_ / clip_grad_value_ followed by torch's AdamW."""

import pytest
import torch

import gradwise as gw

STEPS = 40


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def batch(i):
    g = torch.Generator().manual_seed(100 + i)
    return torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randn(16, 2, generator=g, dtype=torch.float64)


def backward(model, i, scale=10.0):
    x, y = batch(i)
    model.zero_grad()
    (scale * torch.nn.functional.mse_loss(model(x), y)).backward()


def component_clip(params, max_norm):
    for p in params:
        norm = torch.linalg.vector_norm(p.grad, 2)
        p.grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))


@pytest.mark.parametrize("key,value,clip", [
    ("clip_grad_norm", 0.5, lambda ps, c: torch.nn.utils.clip_grad_norm_(ps, c, foreach=False)),
    ("clip_grad_value", 0.05, lambda ps, c: torch.nn.utils.clip_grad_value_(ps, c, foreach=False)),
    ("clip_component_norm", 0.3, component_clip),
])
def test_matches_torch_clipping_then_adamw(key, value, clip):
    ours, theirs = net(), net()
    opt = gw.AdamW(ours.parameters(), lr=1e-2, **{key: value})
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False)
    clipped_somewhere = False
    for i in range(STEPS):
        backward(ours, i)
        backward(theirs, i)
        raw = [p.grad.clone() for p in ours.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, r) for p, r in zip(ours.parameters(), raw, strict=True))  # p.grad untouched
        clip(list(theirs.parameters()), value)
        clipped_somewhere |= any(not torch.equal(p.grad, r) for p, r in zip(theirs.parameters(), raw, strict=True))
        ref.step()
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert clipped_somewhere


def test_global_norm_spans_param_groups_and_off_by_default():
    ours, theirs = net(), net()
    params = list(ours.parameters())
    opt = gw.AdamW([{"params": params[:2]}, {"params": params[2:]}], lr=1e-2, clip_grad_norm=0.5)
    ref = torch.optim.AdamW(theirs.parameters(), lr=1e-2, foreach=False)
    for i in range(5):
        backward(ours, i)
        backward(theirs, i)
        opt.step()
        torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), 0.5, foreach=False)
        ref.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)
    assert gw.AdamW(net().parameters()).param_groups[0]["clip_grad_norm"] is None


@pytest.mark.parametrize("key", ["clip_grad_norm", "clip_grad_value", "clip_component_norm"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "1"])
def test_bad_values_name_the_argument(key, bad):
    with pytest.raises((ValueError, TypeError), match=key):
        gw.create("adamw", net().parameters(), **{key: bad})
