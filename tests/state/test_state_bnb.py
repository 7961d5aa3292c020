"""gradwise's 8-bit state against bitsandbytes, the reference implementation of Dettmers et al. (2022).

bitsandbytes (a test dependency, skipped when absent) runs on the CPU: `functional.quantize_blockwise` /
`dequantize_blockwise` through its compiled CPU library, and `optim.AdamW8bit` through its CPU 8-bit kernel
(dequantize, update in float32, quantize again, with blocks of 256 values hard-wired on the CPU).

What differs by design, and what each test asserts instead of equality:

- The code map. Both have the same tree layout: per decade 10^-E * (0.1, 1] (E exponent zeros) the same
  number of linear steps, 2^(6-E) signed and 2^(7-E) unsigned. gradwise takes the right end of each step
  (0.1 + 0.9 k / n), so the largest code is exactly 1 and the map is symmetric (+-1, 0: 255 values);
  bitsandbytes takes the middle of each step (0.1 + 0.9 (k - 1/2) / n) and appends 0 and 1.0, which makes
  its signed map asymmetric (1.0 but no -1: a block's most negative value, when it is the absmax, comes back
  0.993 of its size). So bitsandbytes' codes are the midpoints of neighbouring gradwise codes, and the two
  maps share only 0 and 1. The widest gap, hence the bound on the rounding error, is the same: half of
  0.9 / 64 (signed) or 0.9 / 128 (unsigned) of the block's absmax. Codes can therefore not be compared
  one to one; the round-trip error bounds are.
- Rounding. gradwise rounds to the nearest code. bitsandbytes' CPU quantizer searches its map in a way
  that, for about 0.1 % (signed) to 10 % (unsigned, values far below the absmax) of the values, picks a
  neighbour of the nearest code, erring by at most about 3e-5 of the absmax more. Given gradwise's map, it
  is an independent check that gradwise's choice is never farther from the value than bitsandbytes'.
- Non-finite input (not tested here): bitsandbytes takes the absmax over the finite values and stores a NaN
  as some code (an infinity makes the block's scale infinite); gradwise marks the block with a NaN scale.
- AdamW8bit on the CPU works in float32 whatever the parameter's dtype, so the optimizer tests use float32
  parameters rather than the float64 of the other oracles.
"""

from __future__ import annotations

import pytest
import torch

import gradwise as gw
from gradwise.state import dequantize, dynamic_map, max_error, quantize

bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")

BNB_CPU_BLOCK = 256  # the block size of bitsandbytes' CPU 8-bit optimizer kernel
SEARCH_SLACK = 1e-4  # extra error, in units of the absmax, that bitsandbytes' CPU search may add


def bnb_map(signed: bool) -> torch.Tensor:
    return F.create_dynamic_map(signed=signed).double()


def gradwise_map_for_bnb(signed: bool) -> torch.Tensor:
    """gradwise's map as a 256-entry table for bitsandbytes: the signed map (255 values) repeats its 1, so
    gradwise's code indices read the same values in it."""
    values = dynamic_map(signed)
    return torch.cat([values, values[-1:]]) if values.numel() == 255 else values


def test_bnb_codes_are_the_midpoints_of_neighbouring_gradwise_codes():
    for signed in (True, False):
        ours, theirs = dynamic_map(signed).double(), bnb_map(signed)
        assert theirs.numel() == 256 and torch.equal(theirs, theirs.sort().values)
        positive = ours[ours > 0]  # signed: 127 values up to 1; unsigned: 255 values from 1e-7 to 1
        if signed:  # the smallest step runs from 1e-7 (the decade below gradwise's smallest code, 1e-6)
            positive = torch.cat([positive.new_tensor([1e-7]), positive])
        midpoints = (positive[1:] + positive[:-1]) / 2
        assert midpoints.numel() == 127 if signed else 254
        expected = torch.cat([-midpoints.flip(0), torch.zeros(1), midpoints, torch.ones(1)]) if signed else \
            torch.cat([torch.zeros(1), midpoints, torch.ones(1)])
        torch.testing.assert_close(theirs, expected, rtol=1e-6, atol=0)
        # the two maps share only 0 and 1 (gradwise's -1 has no bitsandbytes counterpart)
        common = set(dynamic_map(signed).tolist()) & set(F.create_dynamic_map(signed=signed).tolist())
        assert common == {0.0, 1.0}
        # the same widest gap, so the same bound on the rounding error, counting [-1, smallest code]
        edges = torch.cat([-torch.ones(1, dtype=torch.float64), theirs]) if signed else theirs
        assert float((edges[1:] - edges[:-1]).max()) / 2 == pytest.approx(max_error(signed), rel=1e-5)
        assert max_error(signed) == pytest.approx(0.9 / (64 if signed else 128) / 2, rel=1e-5)
        # the same number of codes per decade
        for decade in range(6):
            hi, lo = 10.0**-decade * (1 + 1e-6), 10.0 ** -(decade + 1) * (1 + 1e-6)  # above float32 rounding
            inside = ((ours > lo) & (ours <= hi)).sum()  # the right ends, up to 10^-decade
            assert ((theirs > lo) & (theirs <= hi) & (theirs < 1)).sum() == inside  # the midpoints, not bnb's 1.0


def random_tensor(n: int, signed: bool, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-2, 2, n).roll(n // 3)
    return x if signed else x.square()


def normalized_error(x: torch.Tensor, y: torch.Tensor, absmax: torch.Tensor, block: int) -> torch.Tensor:
    scale = absmax.repeat_interleave(block)[: x.numel()]
    return ((x - y).abs() / torch.where(scale > 0, scale, torch.ones_like(scale))).double()


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("block", [256, 2048])
@pytest.mark.parametrize("n", [1, 255, 257, 5000, 3 * 2048 + 1])
def test_round_trip_errors_have_the_same_bound(n, block, signed):
    x = random_tensor(n, signed, seed=n + block)
    codes, absmax = quantize(x, block, signed)
    ours = dequantize(codes, absmax, block, signed)
    q, st = F.quantize_blockwise(x, code=F.create_dynamic_map(signed=signed), blocksize=block)
    theirs = F.dequantize_blockwise(q, st)
    assert torch.equal(absmax, st.absmax)  # the same float32 absmax per block, the last block padded alike
    bound = max_error(signed)
    err_ours, err_theirs = normalized_error(x, ours, absmax, block), normalized_error(x, theirs, absmax, block)
    assert err_ours.max() <= bound * (1 + 1e-5)
    assert err_theirs.max() <= bound + SEARCH_SLACK
    if n >= 5000:  # enough values: both grids have the same resolution, so the same typical error
        assert 0.8 < float(err_ours.mean() / err_theirs.mean()) < 1.2
        assert err_ours.max() > 0.5 * bound and err_theirs.max() > 0.5 * bound  # the bound is not loose


def test_zero_and_constant_blocks():
    x = torch.cat([torch.zeros(256), torch.full((256,), 3.25), torch.full((256,), -3.25), torch.zeros(100)])
    codes, absmax = quantize(x, 256, signed=True)
    ours = dequantize(codes, absmax, 256, signed=True)
    q, st = F.quantize_blockwise(x, code=F.create_dynamic_map(signed=True), blocksize=256)
    theirs = F.dequantize_blockwise(q, st)
    assert torch.equal(absmax, st.absmax) and absmax.tolist() == [0.0, 3.25, 3.25, 0.0]
    assert torch.equal(ours, x)  # zeros, and +-absmax exactly: gradwise's map holds -1 and 1
    assert torch.equal(theirs[:512], x[:512]) and torch.equal(theirs[768:], x[768:])
    # bitsandbytes' signed map has no -1: a negative constant block comes back at its most negative code
    most_negative = float(F.create_dynamic_map(signed=True).min())
    assert most_negative == pytest.approx(-(1 - 0.9 / 128), rel=1e-6)
    assert torch.equal(theirs[512:768], torch.full((256,), most_negative) * 3.25)
    assert (3.25 - most_negative * -3.25) / 3.25 == pytest.approx(max_error(True), rel=1e-5)  # within the bound
    # zeros beside non-zero values: gradwise's nearest code is 0 exactly; bitsandbytes' CPU search stops at a
    # small code next to 0 (measured: 2.1e-5 of the absmax, signed; 1.6e-5, unsigned), within its slack
    y = torch.cat([torch.zeros(300), torch.full((300,), 0.7)])
    for signed in (True, False):
        c, a = quantize(y, 256, signed)
        q, st = F.quantize_blockwise(y, code=F.create_dynamic_map(signed=signed), blocksize=256)
        assert torch.equal(dequantize(c, a, 256, signed), y)
        assert (F.dequantize_blockwise(q, st) - y).abs().max() <= 0.7 * SEARCH_SLACK


@pytest.mark.parametrize("signed", [True, False])
def test_with_gradwise_map_bnb_reads_gradwise_codes_and_never_rounds_nearer(signed):
    """Storage format: bitsandbytes, given gradwise's map, dequantizes gradwise's codes and scales to the same
    values bit for bit. Rounding: quantizing with that map, bitsandbytes agrees on almost every code, and
    where it does not, gradwise's code is the nearer one (gradwise rounds to the nearest code)."""
    block = 256
    x = random_tensor(20_000, signed, seed=7)
    table = gradwise_map_for_bnb(signed)
    codes, absmax = quantize(x, block, signed)
    ours = dequantize(codes, absmax, block, signed)
    st = F.QuantState(absmax=absmax, code=table, blocksize=block, dtype=torch.float32)
    assert torch.equal(F.dequantize_blockwise(codes, st), ours)
    q, st = F.quantize_blockwise(x, code=table, blocksize=block)
    assert torch.equal(st.absmax, absmax)
    theirs = F.dequantize_blockwise(q, st)
    agree = (table[q.long()] == table[codes.long()]).double().mean()
    assert agree > (0.99 if signed else 0.85)
    err_ours, err_theirs = normalized_error(x, ours, absmax, block), normalized_error(x, theirs, absmax, block)
    assert (err_ours <= err_theirs + 1e-6).all()


def float_state(state: dict, key: str, signed: bool) -> torch.Tensor:
    if key + "_absmax" in state:
        return dequantize(state[key], state[key + "_absmax"], BNB_CPU_BLOCK, signed)
    return state[key]


def test_adamw_8bit_steps_like_bnb_adamw8bit_from_the_same_state(one_thread):
    """Lock-step trajectory, 45 steps: before each step bitsandbytes' AdamW8bit is given gradwise's parameters
    and state (codes, block scales and gradwise's code map; the 32-bit state of the small tensor), then both
    take the step on the same gradient. Configured alike: blocks of 256 (bitsandbytes' CPU kernel), tensors
    under 4096 values in 32-bit state (min_8bit_size, state_min_size), decoupled weight decay.
    Asserted each step: parameters equal to float32 rounding (the update's formula, bias corrections, eps
    and decay agree); the new block scales equal to float32 rounding; the new codes equal on >= 99 % of the
    values and, where not, gradwise's code the nearer one to the exact moment, computed here in float64
    from the common previous state."""
    lr, betas, eps, wd, block = 1e-2, (0.9, 0.999), 1e-8, 0.1, BNB_CPU_BLOCK
    g = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(80, 64, generator=g), torch.randn(100, generator=g)
    ours = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
    theirs = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
    opt = gw.create("adamw", ours, lr=lr, betas=betas, eps=eps, weight_decay=wd, state_bits=8,
                    state_block=block, state_min_size=4096)
    ref = bnb.optim.AdamW8bit(theirs, lr=lr, betas=betas, eps=eps, weight_decay=wd, min_8bit_size=4096)
    maps = {"qmap1": gradwise_map_for_bnb(True), "qmap2": gradwise_map_for_bnb(False)}
    keys = {"state1": ("exp_avg", True, "absmax1"), "state2": ("exp_avg_sq", False, "absmax2")}
    for t in range(1, 46):
        grads = [torch.randn(p.shape, generator=g) * (1 + t % 4) for p in ours]
        previous = []
        for p, q in zip(ours, theirs, strict=True):
            with torch.no_grad():
                q.copy_(p)
            s, r = opt.state.get(p, {}), ref.state.get(q, {})
            previous.append({k: float_state(s, k, signed).double() for k, signed in
                             (("exp_avg", True), ("exp_avg_sq", False))} if s else None)
            if s:
                for name, (key, _, scale) in keys.items():
                    r[name].copy_(s[key])
                    if key + "_absmax" in s:
                        r[scale].copy_(s[key + "_absmax"])
                if "qmap1" in r:
                    r.update(maps)
        for p, q, grad in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = grad.clone(), grad.clone()
        opt.step()
        ref.step()
        for p, q, grad, prev in zip(ours, theirs, grads, previous, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
            s, r = opt.state[p], ref.state[q]
            if p.numel() < 4096:  # 32-bit state in both
                torch.testing.assert_close(s["exp_avg"], r["state1"], rtol=1e-6, atol=1e-6 * r["state1"].abs().max())
                torch.testing.assert_close(s["exp_avg_sq"], r["state2"], rtol=1e-6, atol=0)
                continue
            assert "qmap1" in r and s["exp_avg"].dtype == torch.uint8
            if prev is None:
                r.update(maps)  # from here on bitsandbytes reads and writes codes of gradwise's map
                continue
            for name, (key, signed, scale) in keys.items():
                torch.testing.assert_close(s[key + "_absmax"], r[scale], rtol=1e-6, atol=0)
                table = gradwise_map_for_bnb(signed)
                agree = (table[s[key].long()] == table[r[name].long()]).double().mean()
                assert agree >= 0.99, (t, key, float(agree))
                beta = betas[0] if signed else betas[1]
                new = grad.double() if signed else grad.double().square()
                exact = beta * prev[key] + (1 - beta) * new
                ours_value = float_state(s, key, signed).double()
                theirs_value = (table[r[name].long()].view(-1).double()
                                * r[scale].double().repeat_interleave(block)[: p.numel()]).view(p.shape)
                unit = s[key + "_absmax"].double().repeat_interleave(block)[: p.numel()].view(p.shape)
                assert ((ours_value - exact).abs() <= (theirs_value - exact).abs() + 1e-6 * unit).all()


def regression_run(make, seed: int, steps: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, target = torch.randn(256, 64, generator=g), torch.randn(64, 64, generator=g)
    y = x @ target.T + 0.1 * torch.randn(256, 64, generator=g)
    weight = torch.nn.Parameter(0.1 * torch.randn(64, 64, generator=g))  # 4096 values: 8-bit state in both
    bias = torch.nn.Parameter(torch.zeros(64))  # 64 values: 32-bit state in both
    opt = make([weight, bias])
    losses = []
    for t in range(steps):
        rows = slice(t * 32 % 256, t * 32 % 256 + 32)
        loss = (x[rows] @ weight.T + bias - y[rows]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            losses.append(float((x @ weight.T + bias - y).square().mean()))
    return torch.tensor(losses), weight.detach()


@pytest.mark.parametrize("seed", [0, 1])
def test_free_running_trajectories_with_each_own_map_stay_together(seed, one_thread):
    """50 steps of mini-batch least squares, each library with its own code map (and bitsandbytes with its
    CPU search), configured alike (blocks of 256, min size 4096, lr 3e-2, decoupled decay 0.01): the 64x64
    weight (4096 values) has 8-bit state in both, the bias 32-bit state. The maps differ by half a step
    everywhere, so the runs are not equal; both make 8-bit errors of the same size. Asserted: full-data
    loss within 1 % of bitsandbytes' at every step (measured, seeds 0-3: <= 0.26 %; each differs from
    32-bit AdamW by up to 0.54 %), and gradwise's final weights no farther from 32-bit AdamW's than 1.2
    times bitsandbytes' (measured: 0.99 to 1.04)."""
    kw = dict(lr=3e-2, weight_decay=0.01)
    ours, w_ours = regression_run(lambda p: gw.create("adamw", p, state_bits=8, state_block=BNB_CPU_BLOCK, **kw),
                                  seed)
    theirs, w_theirs = regression_run(lambda p: bnb.optim.AdamW8bit(p, min_8bit_size=4096, **kw), seed)
    full, w_full = regression_run(lambda p: torch.optim.AdamW(p, **kw), seed)
    assert float(full[-1]) < 0.2 * float(full[0])  # the problem trains
    assert float(((ours - theirs) / theirs).abs().max()) < 0.01
    assert float((w_ours - w_full).norm()) < 1.2 * float((w_theirs - w_full).norm())
    assert float((w_ours - w_theirs).norm()) > 0  # not the same run: the maps differ
