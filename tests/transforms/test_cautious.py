"""The cautious option against C-AdamW written from the paper (Liang et al., 2024): AdamW whose step
m_hat / (sqrt(v_hat) + eps) is multiplied by phi numel / (sum(phi) + 1), phi = 1[m g > 0], with the weight
decay unmasked. The reference is shared with gradwise.CAdamW's test: tests/optim/oracle_references.py."""

import importlib.util
from pathlib import Path

import pytest
import torch

import gradwise as gw

STEPS = 40


def _load_shared(name):
    """A helper module of tests/optim, loaded from its file (the test folders are not packages)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "optim" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ReferenceCAdamW = _load_shared("oracle_references").ReferenceCAdamW


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2)).double()


def backward(model, i):
    g = torch.Generator().manual_seed(300 + i)
    x, y = torch.randn(12, 5, generator=g, dtype=torch.float64), torch.randn(12, 2, generator=g, dtype=torch.float64)
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


@pytest.mark.parametrize("mode", [True, "mean"])
def test_adamw_cautious_matches_reference_c_adamw(mode):
    ours, theirs = net(), net()
    opt = gw.AdamW(ours.parameters(), lr=2e-2, weight_decay=0.1, cautious=mode)
    ref = ReferenceCAdamW(theirs.parameters(), lr=2e-2, weight_decay=0.1, mode=mode)
    for i in range(STEPS):
        backward(ours, i)
        backward(theirs, i)
        opt.step()
        ref.step()
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert ref.masked_out > 0  # the mask did act


def test_off_by_default_and_changes_the_trajectory_when_on():
    plain, cautious = net(), net()
    opt_plain = gw.AdamW(plain.parameters(), lr=2e-2)
    opt_cautious = gw.create("adamw", cautious.parameters(), lr=2e-2, cautious=True)
    assert opt_plain.param_groups[0]["cautious"] is False
    for i in range(STEPS):
        for model, opt in ((plain, opt_plain), (cautious, opt_cautious)):
            backward(model, i)
            opt.step()
    assert any(not torch.allclose(a, b) for a, b in zip(plain.parameters(), cautious.parameters(), strict=True))


def test_sgd_momentum_cautious_masks_where_the_buffer_disagrees_with_the_gradient():
    p = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    opt = gw.create("sgd", [p], lr=0.1, momentum=0.9, cautious=True)
    p.grad = torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    opt.step()  # buffer = g: every coordinate agrees; scale 4 / 5
    torch.testing.assert_close(p.detach(), torch.full((4,), 1.0 - 0.1 * 0.8, dtype=torch.float64))
    before = p.detach().clone()
    p.grad = torch.tensor([-0.5, -2.0, 1.0, 1.0], dtype=torch.float64)
    opt.step()  # buffer = 0.9 + g = [0.4, -1.1, 1.9, 1.9]: coordinate 0 disagrees with g
    buffer = torch.tensor([0.4, -1.1, 1.9, 1.9], dtype=torch.float64)
    mask = torch.tensor([0.0, 1.0, 1.0, 1.0], dtype=torch.float64) * 4 / 4
    torch.testing.assert_close(p.detach(), before - 0.1 * buffer * mask)


def test_bad_value_names_the_argument():
    with pytest.raises(ValueError, match="cautious"):
        gw.create("adamw", net().parameters(), cautious="always")


def test_options_apply_clipping_then_grokfast_then_the_mask():
    from gradwise.core.engine import engine_options

    names = [o.name for o in engine_options()]
    assert names.index("cautious") < names.index("grokfast") < names.index("clipping")  # wrap order: last is outermost
