"""Stochastic rounding of bfloat16 parameters: unbiased rounding, a closer trajectory, saving and resuming."""

from __future__ import annotations

import pytest
import torch

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.state import stochastic_round


def neighbours(x):
    """The bfloat16 values just below and above float32 `x` (truncation toward zero and one step away)."""
    down = (x.view(torch.int32) & -65536).view(torch.float32)
    up = ((x.view(torch.int32) & -65536) + 65536).view(torch.float32)
    return torch.minimum(down, up), torch.maximum(down, up)


def test_expectation_of_stochastic_rounding_is_the_float32_value():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, generator=g) * torch.logspace(-20, 20, 500)  # both signs, many binades
    draws = stochastic_round(x.expand(4000, -1).contiguous(), torch.Generator().manual_seed(1)).float()
    lo, hi = neighbours(x)
    gap = hi - lo
    assert ((draws == lo) | (draws == hi)).all()  # always one of the two neighbours
    # the mean of 4000 draws has a standard deviation of at most gap / (2 sqrt(4000)) = 0.008 gap
    assert ((draws.mean(0) - x).abs() <= 0.05 * gap).all()
    # rounding to nearest is biased by up to half a gap: the same test fails for it
    assert ((x.bfloat16().float() - x).abs() > 0.05 * gap).float().mean() > 0.5


def test_stochastic_rounding_keeps_representable_and_non_finite_values_and_repeats_with_its_generator():
    x = torch.tensor([1.0, -2.5, 0.0, float("inf"), -float("inf"), float("nan"), 3.3e38])
    out = stochastic_round(x, torch.Generator().manual_seed(3))
    assert torch.equal(out[:5].float(), x[:5]) and torch.isnan(out[5]) and torch.isfinite(out[6])
    y = torch.randn(1000)
    assert torch.equal(stochastic_round(y, torch.Generator().manual_seed(4)),
                       stochastic_round(y, torch.Generator().manual_seed(4)))
    with pytest.raises(TypeError, match="float32"):
        stochastic_round(y.double())


def train(dtype, steps, name="adamw", state=None, **extra):
    """Fit p in [1, 1.5] to a target up to 0.2 below: AdamW moves p by about lr = 1e-3 a step, SGD by at most
    0.002, both under half a bfloat16 step (2^-8 at 1)."""
    g = torch.Generator().manual_seed(0)
    start = 1.0 + 0.5 * torch.rand(512, generator=g)
    target = start - 0.2 * torch.rand(512, generator=g)
    torch.manual_seed(0)
    p = start.to(dtype).requires_grad_()
    hyper = {"lr": 1e-3} if name == "adamw" else {"lr": 5e-3, "momentum": 0.0}
    opt = gw.create(name, [p], **hyper, **extra)
    if state is not None:
        opt.load_state_dict(state)
    for _ in range(steps):
        opt.zero_grad()
        (p.float() - target).square().sum().backward()
        opt.step()
    return p.detach().float(), opt


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_bfloat16_training_with_stochastic_rounding_follows_the_float32_trajectory(name):
    exact, _ = train(torch.float32, 150, name)
    nearest, _ = train(torch.bfloat16, 150, name)
    stochastic, opt = train(torch.bfloat16, 150, name, stochastic_rounding=True)
    start, _ = train(torch.bfloat16, 0, name)
    moved = (exact - start).abs().mean()
    assert moved > 0.05  # the float32 run moves ...
    assert (nearest - start).abs().mean() < 0.1 * moved  # ... while round-to-nearest updates mostly vanish
    assert (stochastic - exact).abs().mean() < 0.2 * (nearest - exact).abs().mean()
    assert (stochastic - exact).abs().mean() < 0.01
    assert all(not key.startswith("_") for key in opt.state[opt.param_groups[0]["params"][0]])


@pytest.mark.parametrize("extra", [{}, {"state_bits": 8, "state_min_size": 0, "state_block": 128}])
def test_resumed_run_draws_the_same_bits_as_an_uninterrupted_one(extra):
    whole, _ = train(torch.bfloat16, 20, stochastic_rounding=True, **extra)
    first, opt = train(torch.bfloat16, 10, stochastic_rounding=True, **extra)
    saved = roundtrip(opt.state_dict())
    seed = saved["state"][0]["rounding_seed"]
    assert isinstance(seed, int)
    g = torch.Generator().manual_seed(0)  # the same start as train's, then 10 more steps from the checkpoint
    start = 1.0 + 0.5 * torch.rand(512, generator=g)
    target = start - 0.2 * torch.rand(512, generator=g)
    p = first.bfloat16().requires_grad_()
    opt2 = gw.create("adamw", [p], lr=1e-3, stochastic_rounding=True, **extra)
    opt2.load_state_dict(saved)
    for _ in range(10):
        opt2.zero_grad()
        (p.float() - target).square().sum().backward()
        opt2.step()
    assert torch.equal(p.detach().float(), whole)
    assert opt2.state[p]["rounding_seed"] == seed


def test_the_seed_follows_torch_manual_seed_and_leaves_the_global_generator_alone():
    a, _ = train(torch.bfloat16, 5, stochastic_rounding=True)
    b, _ = train(torch.bfloat16, 5, stochastic_rounding=True)
    assert torch.equal(a, b)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    p = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
    opt = gw.AdamW([p], stochastic_rounding=True)
    p.grad = torch.ones_like(p)
    opt.step()
    assert torch.equal(torch.rand(3), expected)


def test_float32_parameters_are_untouched_by_the_option():
    plain, opt_plain = train(torch.float32, 5)
    flagged, opt = train(torch.float32, 5, stochastic_rounding=True)
    assert torch.equal(plain, flagged)
    assert set(opt.state[opt.param_groups[0]["params"][0]]) == {"step", "exp_avg", "exp_avg_sq"}


def test_bad_stochastic_rounding_value_is_refused_by_name():
    with pytest.raises((TypeError, ValueError), match="stochastic_rounding"):
        gw.AdamW([torch.zeros(3, requires_grad=True)], stochastic_rounding="yes")


@pytest.mark.parametrize("name", [n for n in gw.available() if gw.core.registry.entry(n).kind == "optimizer"
                                  and not getattr(gw.get(n), "needs_loss", False)])
def test_every_optimizer_runs_bfloat16_parameters_with_stochastic_rounding(name):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).bfloat16().requires_grad_() for s in [(16, 20), (5,)]]
    start = [p.detach().clone() for p in params]
    opt = gw.create(name, params, lr=1.0 if name == "adagradnorm" else 1e-2, stochastic_rounding=True)
    for k in range(3):
        opt.zero_grad()
        sum((torch.sin(p.float() * (1 + k)) * p.float()).sum() for p in params).backward()
        opt.step()
    for p, p0 in zip(params, start, strict=True):
        assert p.dtype == torch.bfloat16 and torch.isfinite(p).all() and not torch.equal(p, p0)
        assert all(not key.startswith("_") for key in opt.state[p]) and isinstance(opt.state[p]["rounding_seed"], int)


def test_float32_state_dtype_keeps_float32_moments_for_bfloat16_weights_with_stochastic_rounding():
    _, wide = train(torch.bfloat16, 20, stochastic_rounding=True, state_dtype=torch.float32)
    _, narrow = train(torch.bfloat16, 20, stochastic_rounding=True)
    _, eight = train(torch.bfloat16, 20, stochastic_rounding=True, state_bits=8, state_min_size=0, state_block=128)
    v = wide.state[wide.param_groups[0]["params"][0]]["exp_avg_sq"]
    assert v.dtype == torch.float32 and not torch.equal(v.bfloat16().float(), v)  # not rounded to bfloat16
    assert narrow.state[narrow.param_groups[0]["params"][0]]["exp_avg_sq"].dtype == torch.bfloat16
    assert eight.state[eight.param_groups[0]["params"][0]]["exp_avg_sq"].dtype == torch.uint8


def test_the_step_run_on_the_float32_copy_keeps_its_direction_for_the_cautious_mask():
    from gradwise.state.rounding import on_parameter_copy
    from gradwise.transforms.steps import adam_step, sgd_step

    copy, p, u = torch.randn(5), torch.randn(5).bfloat16(), torch.randn(5)
    s = {"_copy": copy, "exp_avg": torch.randn(5), "exp_avg_sq": torch.rand(5)}
    for step in (adam_step(1e-3, 0.9, 0.999, 1e-8), sgd_step(1e-3)):
        wrapped = on_parameter_copy(step, "_copy")
        c = step.coefficients(1)
        assert wrapped.direction is not None
        assert torch.equal(wrapped.direction(u, p, s, c), step.direction(u, copy, s, c))
    # adam_step's and sgd_step's directions do not read the parameter: a direction that does tells whether the
    # wrapper hands it the float32 copy (as it hands the step itself) or the bf16 parameter
    from gradwise.core import kernel_transform

    reads_p = kernel_transform(lambda u, p, s, c: u, writes=True, direction=lambda u, p, s, c: p)
    assert on_parameter_copy(reads_p, "_copy").direction(u, p, s, ()) is copy
