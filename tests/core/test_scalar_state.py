"""State of one number per parameter (0-dim tensors: AdaGrad-Norm's b^2, SGD-SaI's gsnr) on the compiled flat
path: one column per key, each parameter's state entry a 0-dim view of its row (gradwise.core.compiled,
gradwise.core.segments.segment_value)."""

from __future__ import annotations

import warnings

import pytest
import torch

import gradwise as gw
from gradwise.core.segments import segment_value

SHAPES = [(4, 3), (5,), (1,), (3, 3, 2)]
CASES = [("adagradnorm", {"lr": 0.5}, "sum_sq_norm"), ("sgdsai", {"lr": 1e-3, "eps": 0.1}, "gsnr")]


def make_params(dtype=torch.float64, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def train(opt, params, steps, start=0, skip=()):
    for k in range(start, start + steps):
        opt.zero_grad()
        sum((torch.sin(p * (1 + k % 3 + i)) * p).sum() for i, p in enumerate(params) if (k, i) not in skip).backward()
        opt.step()


def assert_same(opt, params, ref, eager, tol=1e-12):
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)
        assert opt.state[p].keys() == ref.state[q].keys()
        for key, value in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=tol, atol=tol)


def test_segment_value_is_the_state_itself_in_eager():
    state, x = torch.tensor(2.0), torch.ones(3)
    assert segment_value(state, x, {}) is state


@pytest.mark.parametrize(("name", "options", "key"), CASES)
def test_scalar_state_runs_flat_and_matches_eager(name, options, key):
    params, eager = make_params(), make_params()
    opt = gw.create(name, params, compile="eager", **options)
    ref = gw.create(name, eager, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eagerly")
        train(opt, params, 3)
        train(ref, eager, 3)
        (layout,) = opt._compiled.layouts.values()
        column = layout.state[key]
        assert column.shape == (len(params) + 1, 1)
        for i, p in enumerate(params):  # 0-dim views of the column: state_dict is unchanged
            assert opt.state[p][key].dim() == 0 and opt.state[p][key].data_ptr() == column[i, 0].data_ptr()
        assert_same(opt, params, ref, eager)
        # the numbers differ per parameter: one first seen later (b0^2), or its own g-SNR
        extra, extra_eager = make_params(seed=1, shapes=[(2, 2), (3,)]), make_params(seed=1, shapes=[(2, 2), (3,)])
        opt.add_param_group({"params": extra, "lr": options["lr"] / 2})
        ref.add_param_group({"params": extra_eager, "lr": options["lr"] / 2})
        train(opt, params + extra, 3, start=3)
        train(ref, eager + extra_eager, 3, start=3)
        assert {key[0] for key in opt._compiled.layouts} == {0, 1}
        assert_same(opt, params + extra, ref, eager + extra_eager)
    # a parameter without gradient for a step: gathered again without it; its step count then drifts, which
    # sends the group to the per-parameter path, where float64 0-dim state runs eagerly (with a warning)
    with pytest.warns(UserWarning, match="0-dim float64"):
        train(opt, params + extra, 2, start=6, skip={(6, 1)})
    train(ref, eager + extra_eager, 2, start=6, skip={(6, 1)})
    assert_same(opt, params + extra, ref, eager + extra_eager)


@pytest.mark.parametrize(("name", "options", "key"), CASES)
def test_scalar_state_dict_round_trip_through_eager(name, options, key):
    params, eager, again = make_params(), make_params(), make_params()
    opt = gw.create(name, params, compile="eager", **options)
    ref = gw.create(name, eager, **options)
    train(opt, params, 3)
    train(ref, eager, 3)
    saved = opt.state_dict()
    assert all(state[key].dim() == 0 for state in saved["state"].values())
    loaded = gw.create(name, again, **options)  # eager, from the flat layout's state
    with torch.no_grad():
        for p, q in zip(again, params, strict=True):
            p.copy_(q)
    loaded.load_state_dict(saved)
    train(loaded, again, 2, start=3)
    train(ref, eager, 2, start=3)
    assert_same(loaded, again, ref, eager)
    opt.load_state_dict(loaded.state_dict())  # and back into the compiled one: gathered from eager state
    with torch.no_grad():
        for p, q in zip(params, again, strict=True):
            p.copy_(q)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eagerly")
        train(opt, params, 2, start=5)
    train(ref, eager, 2, start=5)
    assert opt._compiled.layouts
    assert_same(opt, params, ref, eager)


def test_zero_dim_parameters_keep_scalar_state_per_element():
    # a bucket of 0-dim parameters only: their 0-dim state is per element, read as is by segment_value
    params, eager = make_params(shapes=[(), ()]), make_params(shapes=[(), ()])
    opt = gw.create("adagradnorm", params, lr=0.5, compile="eager")
    ref = gw.create("adagradnorm", eager, lr=0.5)
    train(opt, params, 4)
    train(ref, eager, 4)
    assert opt._compiled.layouts
    assert_same(opt, params, ref, eager)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options", "key"), CASES)
def test_scalar_state_inductor_float32_matches_eager(name, options, key):
    params, eager = make_params(torch.float32), make_params(torch.float32)
    opt = gw.create(name, params, compile=True, **options)
    ref = gw.create(name, eager, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eagerly")
        train(opt, params, 4)
    train(ref, eager, 4)
    assert opt._compiled.layouts
    assert_same(opt, params, ref, eager, tol=1e-5)
