"""The native kernel's ops of heavy-ball momentum, ADOPT, AdEMAMix, AdaBound and diffGrad, op by op.

Each transform runs once through the kernel (`native.program` + `native.run_program`) and once as its own
eager torch kernel on the same decoded state (`dequantize_rows`), re-quantized by `quantize_rows`. The
parameters must agree to a few float32 units of their scale (of the parameter or of its step: torch contracts
some products into fused multiply-adds, the kernel does not), NaN and infinities where eager has them; the
codes must be the same up to a rare one-step difference on the edge between two codes. The inputs reach the
ops' branches: the first steps (copies), lerp weights either side of 0.5, clamps at both ends, an infinite
upper bound, non-finite gradients.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from gradwise.optim.ademamix import ademamix_step, alpha_schedule, beta3_schedule, scheduled_moment
from gradwise.optim.adopt import _decoupled_decay_after_first_step, adopt_momentum
from gradwise.state import native
from gradwise.transforms.bounds import bounded_adam_step
from gradwise.transforms.friction import friction_adam_step
from gradwise.transforms.moments import first_moment, running_max, second_moment
from gradwise.transforms.momentum import heavy_ball
from gradwise.transforms.steps import sgd_step

quantize = importlib.import_module("gradwise.state.quantize")  # the package exports a function of that name

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not native.available(), reason=f"native kernel not built: {native.build_error()}"),
]

BLOCKS, BLOCK = 24, 64
UNSIGNED = {"exp_avg_sq", "max_exp_avg_sq"}


def start(keys, seed, non_finite):
    """Parameters, gradients and each key's codes and scales (the second moments positive, some blocks with
    a far larger scale than others)."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.logspace(-3, 1, BLOCKS).view(-1, 1)
    param = torch.randn(BLOCKS, BLOCK, generator=g) * spread
    grad = torch.randn(BLOCKS, BLOCK, generator=g) * spread.flip(0)
    grad[3, :8] = 0.0  # no change of the gradient's sign nor size there
    if non_finite:
        grad[5, 1], grad[6, 2], grad[7, 3] = float("nan"), float("inf"), -float("inf")
    state = {}
    for k in keys:
        x = torch.randn(BLOCKS, BLOCK, generator=g) * spread * 0.1
        state[k] = quantize.quantize_rows(x.square() if k in UNSIGNED else x, k not in UNSIGNED)
    return param, grad, state


def eager(chain, keys, t, param, grad, state):
    p = param.clone()
    s = {k: quantize.dequantize_rows(*state[k], k not in UNSIGNED) for k in keys}
    u = grad.clone()
    for tr in chain:
        u = tr.update(u, p, s, t)
    return p, {k: quantize.quantize_rows(s[k], k not in UNSIGNED) for k in keys}


def kernel(chain, keys, t, param, grad, state):
    p = param.clone().view(-1)
    codes = [state[k][0].clone().view(-1) for k in keys]
    scales = [state[k][1].clone() for k in keys]
    ops, count = native.program(chain, keys, t)
    native.run_program(ops, count, p, grad.reshape(-1).contiguous(), codes, scales, [k not in UNSIGNED for k in keys],
                       torch.full((BLOCKS,), BLOCK, dtype=torch.int32), BLOCK, maximize=False)
    return p.view(BLOCKS, BLOCK), {k: (c.view(BLOCKS, BLOCK), a) for k, c, a in zip(keys, codes, scales, strict=True)}


def check(chain, keys, t, seed=0, non_finite=True, units=4):
    param, grad, state = start(keys, seed, non_finite)
    expected_p, expected = eager(chain, keys, t, param, grad, state)
    got_p, got = kernel(chain, keys, t, param, grad, state)
    assert torch.equal(got_p.isnan(), expected_p.isnan())
    infinite = expected_p.isinf()
    assert torch.equal(got_p[infinite], expected_p[infinite])
    finite = expected_p.isfinite()
    scale = torch.maximum(param.abs(), (expected_p - param).abs())[finite]
    error = (got_p - expected_p)[finite].abs()
    assert bool((error <= units * torch.finfo(torch.float32).eps * scale).all()), float((error / scale).max())
    moved = int((got_p != param).sum())
    differing = 0
    for k in keys:
        (codes, absmax), (codes_e, absmax_e) = got[k], expected[k]
        assert torch.equal(absmax.isnan(), absmax_e.isnan()), k
        assert torch.allclose(absmax.nan_to_num(), absmax_e.nan_to_num(), rtol=1e-6, atol=0), k
        steps = (codes.int() - codes_e.int()).abs()
        assert int(steps.max()) <= 1, k
        differing += int((steps > 0).sum())
    assert differing <= 2 * len(keys), differing
    return moved


@pytest.mark.parametrize("t", [1, 2, 7])
@pytest.mark.parametrize(("dampening", "dampen_first"), [(0.0, False), (0.4, False), (0.4, True)])
@pytest.mark.parametrize("nesterov", [False, True])
def test_heavy_ball(t, dampening, dampen_first, nesterov):
    chain = (heavy_ball(0.9, dampening, nesterov, dampen_first_step=dampen_first), sgd_step(0.05))
    assert check(chain, ["momentum_buffer"], t) > 0


@pytest.mark.parametrize("t", [1, 2, 9])
@pytest.mark.parametrize("beta1", [0.9, 0.3])  # lerp weights 0.1 and 0.7: both of torch's formulas
@pytest.mark.parametrize("clip_exp", [None, 0.25, 0.0])
@pytest.mark.parametrize("decoupled", [False, True])
def test_adopt(t, beta1, clip_exp, decoupled):
    decay = _decoupled_decay_after_first_step(0.05, 0.1 if decoupled else 0.0)
    chain = (decay, adopt_momentum(beta1, 0.99, 1e-3, clip_exp), sgd_step(0.05))
    # (the state starts random here, so even the first step, which returns m, moves the parameter)
    assert check(chain, ["exp_avg", "exp_avg_sq"], t) > 0


@pytest.mark.parametrize("t", [1, 5, 40])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("warmup", [None, 20])
def test_ademamix(t, wd, warmup):
    chain = (
        first_moment(0.9, key="exp_avg_fast"),
        scheduled_moment(beta3_schedule(0.999, 0.9, warmup), key="exp_avg_slow"),
        second_moment(0.99),
        ademamix_step(0.05, 0.9, 0.99, alpha_schedule(5.0, warmup), 1e-8, wd),
    )
    # the numerator m1 / (1 - b1^t) + alpha m2 may cancel: torch's fused multiply-add rounds it once, the kernel
    # twice, an error of an ulp of the larger term (up to 9 units of the step seen here)
    assert check(chain, ["exp_avg_fast", "exp_avg_slow", "exp_avg_sq"], t, units=16) > 0


@pytest.mark.parametrize("t", [1, 3, 30])
@pytest.mark.parametrize(("final_lr", "gamma"), [(0.1, 1e-3), (0.01, 0.1), (0.1, 0.0)])  # gamma 0: no upper bound
@pytest.mark.parametrize("ams", [False, True])
def test_bounded_step(t, final_lr, gamma, ams):
    second = "max_exp_avg_sq" if ams else "exp_avg_sq"
    chain = (first_moment(0.9), second_moment(0.999), *((running_max(),) if ams else ()),
             bounded_adam_step(0.01, final_lr, gamma, 0.9, 0.999, 1e-8, second=second))
    keys = ["exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if ams else [])]
    assert check(chain, keys, t) > 0


@pytest.mark.parametrize("t", [1, 4])
@pytest.mark.parametrize("non_finite", [False, True])
def test_friction_step(t, non_finite):
    chain = (first_moment(0.9), second_moment(0.999), friction_adam_step(0.05, 0.9, 0.999, 1e-8))
    assert check(chain, ["exp_avg", "exp_avg_sq", "previous_grad"], t, non_finite=non_finite) > 0
