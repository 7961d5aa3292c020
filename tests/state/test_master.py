"""Float32 master weights for bfloat16/float16 parameters: the master copy is the float32 trajectory, bit for bit."""

from __future__ import annotations

import warnings

import pytest
import torch

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.state.master import MASTER, master_weight

OPTIMIZERS = [n for n in gw.available() if gw.core.registry.entry(n).kind == "optimizer"
              and not getattr(gw.get(n), "needs_loss", False)]


def problem(dtype=torch.bfloat16, shapes=((24, 40), (7,))):
    g = torch.Generator().manual_seed(0)
    return [(1.0 + 0.5 * torch.randn(s, generator=g)).to(dtype).requires_grad_() for s in shapes]


def loss_of(params, k):
    """A loss computed in the parameters' dtype (bfloat16 gradients), different at every step k."""
    return sum((torch.sin(p * (1 + k % 3)) * p).sum() for p in params)


def hyper(name):
    return {"lr": 1.0 if name == "adagradnorm" else 1e-2}


def lockstep(name, steps, dtype=torch.bfloat16, **extra):
    """Low-precision parameters with master_weights, and a float32 optimizer from the same start fed the same
    (low-precision) gradients, upcast; yields both after every step."""
    params = problem(dtype)
    reference = [p.detach().float().requires_grad_() for p in params]
    torch.manual_seed(0)
    opt = gw.create(name, params, **hyper(name), master_weights=True, **extra)
    torch.manual_seed(0)
    ref = gw.create(name, reference, **hyper(name), **extra)
    for k in range(steps):
        opt.zero_grad()
        loss_of(params, k).backward()
        for p, q in zip(params, reference, strict=True):
            q.grad = p.grad.float()
        torch.manual_seed(k)
        opt.step()
        torch.manual_seed(k)
        ref.step()
        yield opt, params, reference


@pytest.mark.parametrize("name", ["adamw", "sgd", "lion", "adafactor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_master_copy_is_the_float32_trajectory_and_the_parameter_its_rounding(name, dtype):
    moved = False
    for opt, params, reference in lockstep(name, 40, dtype):
        for p, q in zip(params, reference, strict=True):
            master = master_weight(opt, p)
            assert master.dtype == torch.float32 and torch.equal(master, q.detach())
            assert p.dtype == dtype and torch.equal(p.detach(), master.to(dtype))
            moved = moved or not torch.equal(master, master.to(dtype).float())
    assert moved  # the master copy holds what the low-precision parameter cannot


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_steps_its_master_copy_as_it_steps_float32_parameters(name):
    *_, (opt, params, reference) = lockstep(name, 3)
    for p, q in zip(params, reference, strict=True):
        master = master_weight(opt, p)
        assert torch.isfinite(master).all()
        torch.testing.assert_close(master, q.detach(), rtol=1e-5, atol=1e-6)
        assert torch.equal(p.detach(), master.bfloat16())
        assert all(not key.startswith("_") for key in opt.state[p])
        assert all(v.dtype != torch.bfloat16 for v in opt.state[p].values() if isinstance(v, torch.Tensor))


@pytest.mark.parametrize("extra", [{"state_bits": 8, "state_min_size": 0, "state_block": 128},
                                   {"state_dtype": torch.float32}, {"state_dtype": torch.bfloat16}])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_with_a_state_storage_the_master_copy_is_still_the_float32_trajectory(extra, dtype):
    """The storage works on float32 state for the master copy exactly as for float32 parameters."""
    for opt, params, reference in lockstep("adamw", 40, dtype, **extra):
        for p, q in zip(params, reference, strict=True):
            assert torch.equal(master_weight(opt, p), q.detach())
    kept = opt.state[params[0]]["exp_avg_sq"]
    assert kept.dtype == {8: torch.uint8}.get(extra.get("state_bits"), extra.get("state_dtype"))
    assert opt.state[params[0]][MASTER].dtype == torch.int32


def test_small_updates_that_round_to_nearest_loses_add_up_in_the_master_copy():
    p = torch.ones(64, dtype=torch.bfloat16, requires_grad=True)
    plain = torch.ones(64, dtype=torch.bfloat16, requires_grad=True)
    opt = gw.SGD([p], lr=1e-3, master_weights=True)
    opt_plain = gw.SGD([plain], lr=1e-3)
    for _ in range(10):
        p.grad = torch.ones_like(p)
        plain.grad = torch.ones_like(plain)
        opt.step()
        opt_plain.step()
    assert torch.equal(plain, torch.ones_like(plain))  # 1 - 1e-3 rounds back to 1 in bfloat16, every step
    assert torch.allclose(master_weight(opt, p), torch.full((64,), 0.99), atol=1e-6)
    assert torch.equal(p, torch.full((64,), 0.99).bfloat16())


def run(steps, state=None, params=None, **extra):
    params = params if params is not None else problem()
    opt = gw.create("adamw", params, lr=1e-2, master_weights=True, **extra)
    if state is not None:
        opt.load_state_dict(state)
    for k in range(steps):
        opt.zero_grad()
        loss_of(params, k).backward()
        opt.step()
    return params, opt


@pytest.mark.parametrize("extra", [{}, {"state_bits": 8, "state_min_size": 0, "state_block": 128},
                                   {"stochastic_rounding": True}, {"state_dtype": torch.bfloat16}])
def test_state_dict_round_trip_is_bit_exact_and_resuming_equals_an_uninterrupted_run(extra):
    whole, opt_whole = run(20, **extra)
    first, opt = run(10, **extra)
    saved = roundtrip(opt.state_dict())
    for i, p in enumerate(first):
        bits = saved["state"][i][MASTER]
        assert bits.dtype == torch.int32 and torch.equal(bits.view(torch.float32), master_weight(opt, p))
    resumed = [p.detach().clone().requires_grad_() for p in first]
    opt2 = gw.create("adamw", resumed, lr=1e-2, master_weights=True, **extra)
    opt2.load_state_dict(saved)
    for k in range(10, 20):
        opt2.zero_grad()
        loss_of(resumed, k).backward()
        opt2.step()
    for p, q in zip(whole, resumed, strict=True):
        assert torch.equal(p, q) and torch.equal(master_weight(opt_whole, p), master_weight(opt2, q))


def test_with_stochastic_rounding_the_parameter_is_a_bfloat16_neighbour_of_the_master_copy():
    for opt, params, reference in lockstep("adamw", 20, stochastic_rounding=True):
        for p, q in zip(params, reference, strict=True):
            master = master_weight(opt, p)
            assert torch.equal(master, q.detach())  # the rounding of the parameter never feeds back
            down = (master.view(torch.int32) & -65536).view(torch.float32)
            up = ((master.view(torch.int32) & -65536) + 65536).view(torch.float32)
            value = p.detach().float()
            assert ((value == down) | (value == up)).all()
    assert isinstance(opt.state[params[0]]["rounding_seed"], int)
    nearest = [master_weight(opt, p).bfloat16() for p in params]
    assert any(not torch.equal(p.detach(), n) for p, n in zip(params, nearest, strict=True))  # not to nearest


def test_float32_parameters_are_untouched_by_the_option():
    params = problem(torch.float32)
    plain = [p.detach().clone().requires_grad_() for p in params]
    _, opt = run(5, params=params)
    run_plain = gw.create("adamw", plain, lr=1e-2)
    for k in range(5):
        run_plain.zero_grad()
        loss_of(plain, k).backward()
        run_plain.step()
    for p, q in zip(params, plain, strict=True):
        assert torch.equal(p, q)
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"} and master_weight(opt, p) is None


def test_eight_bit_state_quantizes_the_moments_and_never_the_master_copy():
    params, opt = run(10, state_bits=8, state_min_size=0, state_block=128)
    exact, _ = run(10)
    state = opt.state[params[0]]
    assert state["exp_avg"].dtype == torch.uint8 and state[MASTER].dtype == torch.int32
    for p, q in zip(params, exact, strict=True):
        assert (master_weight(opt, p) - q.detach().float()).abs().max() < 0.02


def test_the_compiled_step_runs_the_master_copy_without_falling_back():
    eager, opt_eager = run(6)
    params = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager would warn
        compiled, opt = run(6, params=params, compile="eager")
    for p, q in zip(eager, compiled, strict=True):
        # compiled coefficients are float32 0-dim tensors, eager's Python floats: equal up to float32 rounding
        torch.testing.assert_close(master_weight(opt, q), master_weight(opt_eager, p), rtol=1e-6, atol=1e-6)
        assert torch.equal(q.detach(), master_weight(opt, q).bfloat16())
        assert opt.state[q]["exp_avg"].dtype == torch.float32


def test_switching_the_option_on_mid_run_starts_the_master_copy_from_the_parameter():
    params, opt = run(0)
    opt.param_groups[0]["master_weights"] = False
    for k in range(3):
        opt.zero_grad()
        loss_of(params, k).backward()
        opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16 and master_weight(opt, params[0]) is None
    opt.param_groups[0]["master_weights"] = True
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss_of(params, 3).backward()
    opt.step()
    assert opt.state[params[0]]["exp_avg"].dtype == torch.float32  # the state is float32 from now on
    assert not torch.equal(params[0], before[0]) and torch.isfinite(master_weight(opt, params[0])).all()


def test_bad_master_weights_value_is_refused_by_name():
    with pytest.raises((TypeError, ValueError), match="master_weights"):
        gw.AdamW([torch.zeros(3, requires_grad=True)], master_weights="yes")


def test_memory_cost_is_the_documented_bytes_per_parameter():
    """AdamW on bfloat16 weights: 4 bytes of master copy + 8 of float32 moments, against 4 (bfloat16 moments)."""
    def state_bytes(**extra):
        p = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
        opt = gw.AdamW([p], **extra)
        p.grad = torch.ones_like(p)
        opt.step()
        return sum(v.nbytes for k, v in opt.state[p].items() if k != "step" and isinstance(v, torch.Tensor))

    assert state_bytes() == 4 * 4096
    assert state_bytes(master_weights=True) == 12 * 4096
    assert state_bytes(master_weights=True, state_dtype=torch.bfloat16) == 8 * 4096
