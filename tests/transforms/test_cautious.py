"""The cautious option against C-AdamW written from the paper (Liang et al., 2024): AdamW whose step
m_hat / (sqrt(v_hat) + eps) is multiplied by phi numel / (sum(phi) + 1), phi = 1[m g > 0], with the weight
decay unmasked. The reference is shared with gradwise.CAdamW's test: tests/optim/oracle_references.py."""


import pytest
import torch

import gradwise as gw
from script_loader import load_script

STEPS = 40


# a helper module of tests/optim (the test folders are not packages)
ReferenceCAdamW = load_script("tests/optim/oracle_references.py", "oracle_references").ReferenceCAdamW


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


@pytest.mark.parametrize("compile", [False, "eager"])
def test_mask_counts_steps_that_round_away_as_the_authors_rule_does(compile):
    # Half of each float32 tensor sits near 1e4 (one ulp is about 1e-3), where a step of about lr = 1e-3
    # often rounds to no change; the other half sits near 1, where every step shows. The authors' mask
    # (m g > 0) counts the rounded-away coordinates too, and its scale numel / (sum + 1) moves the coordinates
    # near 1; a mask read from the parameter's change would not count them and would scale those moves by
    # about a third more.
    torch.manual_seed(0)
    start = torch.cat([1e4 + torch.randn(4, 256), torch.randn(4, 256)], dim=1)
    params = [torch.nn.Parameter(x.clone()) for x in start]
    refs = [torch.nn.Parameter(x.clone()) for x in start]
    opt = gw.create("cadamw", params, lr=1e-3, weight_decay=0.0, compile=compile)
    ref = ReferenceCAdamW(refs, lr=1e-3, weight_decay=0.0)
    rounded_away = 0
    for _ in range(5):
        grads = [torch.randn(512) for _ in params]
        before = [p.detach().clone() for p in params]
        for p, r, g in zip(params, refs, grads, strict=True):
            p.grad, r.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        rounded_away += sum(int((p.detach()[:256] == b[:256]).sum()) for p, b in zip(params, before, strict=True))
        for p, r in zip(params, refs, strict=True):
            # near 1: within 8 float32 ulps after 5 steps of about 1e-3 (a scale a third too large errs by 3e-4)
            torch.testing.assert_close(p.detach()[256:], r.detach()[256:], rtol=0, atol=1e-6)
            torch.testing.assert_close(p.detach()[:256], r.detach()[:256], rtol=0, atol=1e-2)  # 10 ulps near 1e4
    assert rounded_away > 500  # the case this test is about happened
