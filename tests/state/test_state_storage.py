"""8-bit and narrow-float optimizer state as an engine option: memory, accuracy, saving and loading."""

from __future__ import annotations

import pytest
import torch

import gradwise as gw
import gradwise.state  # noqa: F401  (registers the option until gradwise imports it itself)
from checkpoint_io import roundtrip
from gradwise.state import NON_NEGATIVE, max_error

pytestmark = pytest.mark.usefixtures("one_thread")


def state_bytes(opt):
    return sum(v.numel() * v.element_size() for s in opt.state.values() for k, v in s.items() if k != "step")


def quadratic_step(opt, p, target):
    opt.zero_grad()
    ((p - target) ** 2).sum().backward()
    opt.step()


def test_adamw_8bit_state_is_at_most_2_1_bytes_per_parameter():
    p = torch.zeros(1_000_000, requires_grad=True)
    target = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    full, lean = gw.AdamW([p], lr=1e-3), gw.AdamW([q := p.detach().clone().requires_grad_()], lr=1e-3, state_bits=8)
    quadratic_step(full, p, target)
    quadratic_step(lean, q, target)
    assert state_bytes(full) / p.numel() == 8
    assert state_bytes(lean) / q.numel() <= 2.1
    s = lean.state[q]
    assert s["exp_avg"].dtype == torch.uint8 and s["exp_avg_sq"].dtype == torch.uint8
    assert s["exp_avg_absmax"].shape == (489,) and s["step"].dtype == torch.float32
    assert torch.allclose(q, p, atol=1e-5)  # the first step's moments round trip closely enough


def test_small_tensors_keep_full_precision_and_bits_32_changes_nothing():
    big, small = torch.randn(5000, requires_grad=True), torch.randn(10, requires_grad=True)
    opt = gw.AdamW([big, small], state_bits=8)
    ((big**2).sum() + (small**2).sum()).backward()
    opt.step()
    assert opt.state[big]["exp_avg"].dtype == torch.uint8
    assert opt.state[small]["exp_avg"].dtype == torch.float32 and "exp_avg_absmax" not in opt.state[small]
    plain = gw.AdamW([torch.randn(5000, requires_grad=True)], state_bits=32)
    plain.param_groups[0]["params"][0].grad = torch.ones(5000)
    plain.step()
    assert set(next(iter(plain.state.values()))) == {"step", "exp_avg", "exp_avg_sq"}


def regression_loss(bits, steps=300, **extra):
    """Multi-output least squares (a 64x32 weight: 2048 values, quantized in blocks of 256) with noise, so
    the loss converges to a known floor, 0.25 * (1 - 32/1024), instead of to zero."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 32, generator=g)
    y = x @ torch.randn(32, 64, generator=g) + 0.5 * torch.randn(1024, 64, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 64)
    opt = gw.AdamW(model.parameters(), lr=2e-2, state_bits=bits, state_block=256, state_min_size=1024, **extra)
    for _ in range(steps):  # one thread (the file's `one_thread`): threads only add overhead to a tiny problem
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x), y)), opt


def test_adamw_8bit_matches_32bit_final_loss_within_2_percent_on_a_regression():
    full, _ = regression_loss(32)
    lean, opt = regression_loss(8)
    assert opt.state[opt.param_groups[0]["params"][0]]["exp_avg"].dtype == torch.uint8  # the weight is quantized
    assert full < 0.25  # converged to the noise floor, so the comparison means something
    assert abs(lean - full) <= 0.02 * full


def test_bfloat16_state_dtype_stores_narrow_floats_and_still_learns():
    full, _ = regression_loss(32)
    narrow, opt = regression_loss(32, state_dtype=torch.bfloat16)
    assert all(s["exp_avg_sq"].dtype == torch.bfloat16 for s in opt.state.values())
    assert abs(narrow - full) <= 0.02 * full


@pytest.mark.parametrize("extra", [{}, {"state_dtype": torch.bfloat16}])
def test_state_dict_round_trip_is_exact_with_8_bits(extra):
    def run(opt, p, start, steps):
        for k in range(start, start + steps):
            opt.zero_grad()
            (torch.sin(p * (1 + k % 3)) * p).sum().backward()
            opt.step()

    p0 = torch.randn(5000, generator=torch.Generator().manual_seed(3))
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    sizes = dict(state_bits=8, state_block=512, state_min_size=1000, **extra)
    opt_a = gw.AdamW([a], lr=1e-2, **sizes)
    run(opt_a, a, 0, 10)
    saved = roundtrip(opt_a.state_dict())
    assert saved["state"][0]["exp_avg"].dtype == torch.uint8
    opt_b = gw.AdamW([b], lr=1e-2, **sizes)
    opt_b.load_state_dict(saved)
    with torch.no_grad():
        b.copy_(a)
    for key, value in opt_a.state[a].items():
        assert opt_b.state[b][key].dtype == value.dtype and torch.equal(opt_b.state[b][key], value)
    run(opt_a, a, 10, 10)
    run(opt_b, b, 10, 10)
    assert torch.equal(a, b)
    for key, value in opt_a.state[a].items():
        assert torch.equal(opt_b.state[b][key], value)


def test_a_32_bit_checkpoint_loads_into_an_8_bit_optimizer_with_one_rounding():
    p0 = torch.randn(4096, generator=torch.Generator().manual_seed(5))
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    opt_a = gw.AdamW([a], lr=1e-2)
    for _ in range(5):
        quadratic_step(opt_a, a, torch.ones(4096))
    opt_b = gw.AdamW([b], lr=1e-2, state_bits=8, state_block=256, state_min_size=0)
    opt_b.load_state_dict(roundtrip(opt_a.state_dict()))
    # loading restores the saved group's hyper-parameters, state_bits=32 included: ask for 8 bits again
    assert opt_b.param_groups[0]["state_bits"] == 32
    opt_b.param_groups[0].update(state_bits=8, state_block=256, state_min_size=0)
    with torch.no_grad():
        b.copy_(a)
    assert opt_b.state[b]["exp_avg"].dtype == torch.float32  # loaded as saved; quantized on the next close
    # with a zero gradient AdamW's moments only decay: compare the stored moments with the exact ones
    saved = {k: v.clone() for k, v in opt_a.state[a].items()}
    a.grad, b.grad = torch.zeros(4096), torch.zeros(4096)
    opt_a.step()
    opt_b.step()
    work = gw.state.QuantizedStorage(block=256, min_size=0).open(b, opt_b.state[b])
    for key, beta in (("exp_avg", 0.9), ("exp_avg_sq", 0.999)):
        assert opt_b.state[b][key].dtype == torch.uint8
        exact = saved[key] * beta
        scale = exact.abs().view(-1, 256).amax(1).repeat_interleave(256)
        assert ((work[key] - exact).abs() <= scale * max_error(key not in NON_NEGATIVE) * (1 + 1e-4)).all()
        assert not torch.equal(work[key], exact)  # it was rounded


def test_quantized_and_plain_param_groups_coexist():
    w, v = torch.randn(5000, requires_grad=True), torch.randn(5000, requires_grad=True)
    opt = gw.AdamW([{"params": [w], "state_bits": 8}, {"params": [v]}])
    ((w**2).sum() + (v**2).sum()).backward()
    opt.step()
    assert opt.state[w]["exp_avg"].dtype == torch.uint8 and opt.state[v]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("key,value", [("state_bits", 4), ("state_block", 32), ("state_min_size", -1),
                                       ("state_dtype", torch.int8), ("state_bits", "8")])
def test_bad_state_options_are_refused_with_their_name(key, value):
    with pytest.raises((ValueError, TypeError), match=key):
        gw.AdamW([torch.zeros(3, requires_grad=True)], **{key: value})


@pytest.mark.parametrize("name", ["sgd", "lion", "adan", "adabelief", "adafactor", "ademamix"])
def test_other_optimizers_run_with_8_bit_state(name):
    p = torch.randn(64, 80, generator=torch.Generator().manual_seed(0)).requires_grad_()
    hyper = {"lr": 1e-3} if name != "sgd" else {"lr": 1e-2, "momentum": 0.9}
    if name == "adafactor":
        hyper = {"lr": 1e-3}
    full = gw.create(name, [q := p.detach().clone().requires_grad_()], **hyper)
    lean = gw.create(name, [p], state_bits=8, state_block=256, state_min_size=1024, **hyper)
    for _ in range(20):
        quadratic_step(full, q, torch.zeros(64, 80))
        quadratic_step(lean, p, torch.zeros(64, 80))
    assert torch.isfinite(p).all()
    assert (p - q).norm() <= 0.05 * (q - p.detach().new_tensor(0)).norm() + 1e-3
