"""Checkpoints between 8-bit and 32-bit state: dequantizing on load, its error bound, and the block size."""

from __future__ import annotations

import pytest
import torch

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.state import NON_NEGATIVE, dequantize, max_error, quantize

N, BLOCK = 4096, 256


def trained_32_bit(steps=5):
    p = torch.randn(N, generator=torch.Generator().manual_seed(5)).requires_grad_()
    opt = gw.AdamW([p], lr=1e-2)
    for k in range(steps):
        opt.zero_grad()
        (torch.sin(p * (1 + k % 3)) * p).sum().backward()
        opt.step()
    return p, opt


def as_8_bit_checkpoint(opt, block=BLOCK):
    """The 32-bit optimizer's state dict as an 8-bit run with this block size would have saved it."""
    sd = roundtrip(opt.state_dict())
    for group in sd["param_groups"]:
        group.update(state_bits=8, state_block=block, state_min_size=0)
    for state in sd["state"].values():
        for key in ("exp_avg", "exp_avg_sq"):
            state[key], state[key + "_absmax"] = quantize(state[key], block, signed=key not in NON_NEGATIVE)
    return sd


def zero_grad_step(opt, p):
    p.grad = torch.zeros_like(p)
    opt.step()


def test_an_8_bit_checkpoint_continues_in_32_bits_within_the_documented_bound():
    a, opt_a = trained_32_bit()
    b = a.detach().clone().requires_grad_()
    opt_b = gw.AdamW([b], lr=1e-2)
    opt_b.load_state_dict(as_8_bit_checkpoint(opt_a))
    assert opt_b.param_groups[0]["state_bits"] == 8  # restored from the checkpoint: ask for 32 again
    opt_b.param_groups[0]["state_bits"] = 32
    exact = {k: v.clone() for k, v in opt_a.state[a].items()}
    zero_grad_step(opt_a, a)
    zero_grad_step(opt_b, b)
    state = opt_b.state[b]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    for key, beta in (("exp_avg", 0.9), ("exp_avg_sq", 0.999)):
        assert state[key].dtype == torch.float32
        scale = exact[key].abs().view(-1, BLOCK).amax(1).repeat_interleave(BLOCK)
        error = (state[key] - opt_a.state[a][key]).abs()
        assert (error <= beta * scale * max_error(key not in NON_NEGATIVE) * (1 + 1e-4)).all()
        assert error.max() > 0.1 * scale.min() * max_error(key not in NON_NEGATIVE)  # a real rounding
    assert (a - b).abs().max() < 1e-3


def test_dequantizing_adds_no_error_the_32_bit_run_continues_from_the_codes_values():
    a, opt_a = trained_32_bit()
    sd = as_8_bit_checkpoint(opt_a)
    values = roundtrip(sd)
    for state in values["state"].values():  # the same checkpoint with the codes' values written out
        for key in ("exp_avg", "exp_avg_sq"):
            codes, absmax = state[key], state.pop(key + "_absmax")
            state[key] = dequantize(codes, absmax, BLOCK, signed=key not in NON_NEGATIVE)
    runs = []
    for checkpoint in (sd, values):
        p = a.detach().clone().requires_grad_()
        opt = gw.AdamW([p], lr=1e-2)
        opt.load_state_dict(checkpoint)
        opt.param_groups[0]["state_bits"] = 32
        for k in range(3):
            opt.zero_grad()
            (torch.cos(p * (2 + k)) * p).sum().backward()
            opt.step()
        runs.append((p, opt.state[p]))
    (p, s), (q, r) = runs
    assert torch.equal(p, q)
    assert all(torch.equal(s[key], r[key]) for key in r)


def test_an_8_bit_checkpoint_continues_with_bfloat16_state():
    a, opt_a = trained_32_bit()
    opt_b = gw.AdamW([b := a.detach().clone().requires_grad_()], lr=1e-2)
    opt_b.load_state_dict(as_8_bit_checkpoint(opt_a))
    opt_b.param_groups[0].update(state_bits=32, state_dtype=torch.bfloat16)
    zero_grad_step(opt_b, b)
    assert set(opt_b.state[b]) == {"step", "exp_avg", "exp_avg_sq"}
    assert all(opt_b.state[b][k].dtype == torch.bfloat16 for k in ("exp_avg", "exp_avg_sq"))
    assert torch.isfinite(b).all()


def test_codes_of_a_tensor_below_a_larger_min_size_become_floats_and_lose_their_scales():
    a, opt_a = trained_32_bit()
    opt_b = gw.AdamW([b := a.detach().clone().requires_grad_()], lr=1e-2)
    opt_b.load_state_dict(as_8_bit_checkpoint(opt_a))
    opt_b.param_groups[0]["state_min_size"] = 10 * N
    zero_grad_step(opt_b, b)
    assert set(opt_b.state[b]) == {"step", "exp_avg", "exp_avg_sq"}
    assert opt_b.state[b]["exp_avg"].dtype == torch.float32


def test_state_dict_of_a_converted_optimizer_holds_the_new_form():
    a, opt_a = trained_32_bit()
    opt_b = gw.AdamW([b := a.detach().clone().requires_grad_()], lr=1e-2)
    opt_b.load_state_dict(as_8_bit_checkpoint(opt_a))
    opt_b.param_groups[0]["state_bits"] = 32
    zero_grad_step(opt_b, b)
    saved = roundtrip(opt_b.state_dict())
    assert saved["param_groups"][0]["state_bits"] == 32
    assert saved["state"][0]["exp_avg"].dtype == torch.float32 and "exp_avg_absmax" not in saved["state"][0]


def test_codes_read_with_another_block_size_are_refused_by_name():
    a, opt_a = trained_32_bit()
    opt_b = gw.AdamW([b := a.detach().clone().requires_grad_()], lr=1e-2)
    opt_b.load_state_dict(as_8_bit_checkpoint(opt_a, block=512))
    opt_b.param_groups[0]["state_block"] = 1024
    with pytest.raises(ValueError, match="state_block=1024"):
        zero_grad_step(opt_b, b)
    opt_b.param_groups[0].update(state_block=512, state_bits=32)  # the saved size reads them
    zero_grad_step(opt_b, b)
    assert opt_b.state[b]["exp_avg"].dtype == torch.float32


def test_switching_a_running_8_bit_group_to_32_bits_dequantizes_its_state():
    a, opt_a = trained_32_bit()
    opt_b = gw.AdamW([b := a.detach().clone().requires_grad_()], lr=1e-2)
    opt_b.load_state_dict(as_8_bit_checkpoint(opt_a))
    zero_grad_step(opt_b, b)  # one step in 8 bits, as loaded
    assert opt_b.state[b]["exp_avg"].dtype == torch.uint8
    opt_b.param_groups[0]["state_bits"] = 32
    zero_grad_step(opt_b, b)
    assert opt_b.state[b]["exp_avg"].dtype == torch.float32 and "exp_avg_absmax" not in opt_b.state[b]
