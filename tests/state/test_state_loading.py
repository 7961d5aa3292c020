"""Loading an 8-bit checkpoint into a 32-bit group: every parameter's codes become floats before the first step,
including parameters that have no gradient on that step (the scan runs once per loaded state)."""

from __future__ import annotations

import torch

import gradwise as gw
import gradwise.state  # noqa: F401  (registers state_bits)
from gradwise.state import dequantize


def test_a_parameter_without_gradient_on_the_first_step_after_loading_is_dequantized_too():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(5000, generator=g).requires_grad_() for _ in range(2)]
    eight = gw.AdamW(params, lr=1e-2, state_bits=8)
    sum((p**2).sum() for p in params).backward()
    eight.step()
    saved = eight.state_dict()
    codes, scales = saved["state"][1]["exp_avg"].clone(), saved["state"][1]["exp_avg_absmax"].clone()

    def loaded():
        copies = [p.detach().clone().requires_grad_() for p in params]
        opt = gw.AdamW(copies, lr=1e-2)
        opt.load_state_dict(saved)
        opt.param_groups[0]["state_bits"] = 32
        return opt, copies

    opt, copies = loaded()
    copies[0].grad = torch.ones(5000)
    opt.step()  # the second parameter has no gradient: its 8-bit state is converted all the same
    state = opt.state[copies[1]]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}
    assert torch.equal(state["exp_avg"], dequantize(codes, scales, 2048))
    copies[0].grad, copies[1].grad = None, torch.ones(5000)
    opt.step()  # before the fix: the uint8 codes reached the transforms ("expected dtype unsigned char")
    reference, reference_copies = loaded()
    reference_copies[1].grad = torch.ones(5000)
    reference.step()
    assert torch.equal(copies[1], reference_copies[1])
    assert torch.equal(opt.state[copies[1]]["exp_avg_sq"], reference.state[reference_copies[1]]["exp_avg_sq"])
