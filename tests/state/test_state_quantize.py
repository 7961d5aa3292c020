"""The block-wise dynamic quantizer: code map, error bounds per block, edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from gradwise.state import dequantize, dynamic_map, max_error, quantize


def roundtrip(x, block=256, signed=True):
    codes, absmax = quantize(x, block, signed)
    return codes, absmax, dequantize(codes, absmax, block, signed, dtype=x.dtype)


def test_code_maps_follow_the_tree_layout():
    signed, unsigned = dynamic_map(True), dynamic_map(False)
    assert len(signed) == 255 and len(unsigned) == 256  # +0 and -0 coincide
    assert signed[0] == -1 and signed[-1] == 1 and 0 in signed.tolist()
    assert unsigned[0] == 0 and unsigned[-1] == 1
    assert torch.equal(signed, -signed.flip(0))
    # top decade: 6 (signed) or 7 (unsigned) linear fraction bits over (0.1, 1]
    assert max_error(True) == pytest.approx(0.9 / 64 / 2, rel=1e-5)
    assert max_error(False) == pytest.approx(0.9 / 128 / 2, rel=1e-5)
    # smallest non-zero magnitude: six (signed) or seven (unsigned) exponent zeros
    assert float(signed[signed > 0].min()) == pytest.approx(1e-6)
    assert float(unsigned[unsigned > 0].min()) == pytest.approx(1e-7)
    # relative precision is kept across decades: each decade holds codes
    for decade in range(6):
        hi, lo = 10.0**-decade, 10.0 ** -(decade + 1)
        assert ((signed > lo) & (signed <= hi)).sum() == 2 ** (6 - decade)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("block", [64, 256, 2048])
def test_error_is_within_half_the_widest_gap_of_each_blocks_absmax(signed, block):
    g = torch.Generator().manual_seed(block)
    x = torch.randn(7 * block, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, 7 * block, dtype=torch.float64)
    if not signed:
        x = x.abs()
    codes, absmax, y = roundtrip(x, block, signed)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and absmax.dtype == torch.float32
    rows, back = x.view(-1, block), y.view(-1, block)
    assert torch.allclose(absmax.double(), rows.abs().amax(1), rtol=1e-6)
    bound = absmax.double()[:, None] * max_error(signed) * (1 + 1e-5)
    assert ((rows - back).abs() <= bound).all()
    # the block's largest magnitude is stored exactly (up to float32), and the bound is not loose
    assert torch.allclose(back.abs().amax(1), rows.abs().amax(1), rtol=1e-6)
    assert ((rows - back).abs() / absmax.double()[:, None]).max() > 0.5 * max_error(signed)


def test_values_far_below_the_absmax_keep_relative_precision():
    x = torch.tensor([1.0, 3e-3, -4.2e-4, 7.7e-5, 0.5])
    _, _, y = roundtrip(x, 64)
    # each decade has its own linear grid: relative error <= 0.9 / 2^F / 0.1 / 2 for that decade
    rel = ((y - x) / x).abs()
    assert rel[1] < 0.9 / 8 / 0.1 / 2 and rel[2] < 0.9 / 4 / 0.1 / 2 and rel[3] < 0.9 / 2 / 0.1 / 2


def test_zero_block_and_constant_block_are_exact():
    x = torch.cat([torch.zeros(64), torch.full((64,), -3.25), torch.full((64,), 0.125)])
    codes, absmax, y = roundtrip(x, 64)
    assert torch.equal(y, x)
    assert absmax.tolist() == [0.0, 3.25, 0.125]
    _, _, y = roundtrip(torch.zeros(100), 64, signed=False)
    assert torch.equal(y, torch.zeros(100))


@pytest.mark.parametrize("n", [1, 63, 65, 2047, 2049, 5000])
def test_odd_sizes_pad_the_last_block(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n)) + 10.0 * (torch.arange(n) == n - 1)
    codes, absmax, y = roundtrip(x, 64)
    assert codes.shape == (n,) and absmax.shape == (math.ceil(n / 64),)
    bound = absmax.repeat_interleave(64)[:n] * max_error(True) * (1 + 1e-5)
    assert ((x - y).abs() <= bound).all()
    assert y[-1] == x[-1]  # the last (padded) block's absmax is its own


def test_shape_is_kept_and_memory_order_defines_the_blocks():
    x = torch.randn(3, 5, 7)
    codes, absmax, y = roundtrip(x, 64)
    assert codes.shape == x.shape and y.shape == x.shape
    assert absmax.shape == (2,)
    assert torch.allclose(absmax, torch.stack([x.view(-1)[:64].abs().max(), x.view(-1)[64:].abs().max()]))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_makes_its_block_nan_and_leaves_other_blocks_intact(bad):
    x = torch.randn(3 * 64, generator=torch.Generator().manual_seed(1))
    x[70] = bad
    codes, absmax, y = roundtrip(x, 64)
    assert math.isnan(absmax[1])
    assert torch.isnan(y[64:128]).all()
    finite = torch.cat([x[:64], x[128:]])
    back = torch.cat([y[:64], y[128:]])
    assert ((finite - back).abs() <= finite.abs().max() * max_error(True) * (1 + 1e-5)).all()


def test_unsigned_map_stores_negative_values_as_zero():
    x = torch.tensor([1.0, -0.5, 0.25])
    _, _, y = roundtrip(x, 64, signed=False)
    assert y[0] == 1.0 and y[1] == 0.0 and abs(y[2] - 0.25) <= max_error(False)


def test_quantize_refuses_a_non_positive_block():
    with pytest.raises(ValueError, match="block"):
        quantize(torch.ones(3), 0)


@pytest.mark.parametrize("signed", [True, False])
def test_table_look_up_picks_the_same_code_as_a_search_over_the_midpoints(signed):
    from gradwise.state.quantize import _nearest_codes, _tables

    values, midpoints = _tables(signed, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    x = torch.cat([
        values, midpoints, -midpoints,  # codes, and ties between them
        torch.nextafter(midpoints, up), torch.nextafter(midpoints, down),  # one float32 step either side
        -torch.nextafter(midpoints, up), -torch.nextafter(midpoints, down),
        torch.rand(200_000, generator=g) * 2 - 1,
        (torch.rand(200_000, generator=g) * 2 - 1) * torch.logspace(-12, 0, 200_000),  # every decade
        torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 5e-8, -5e-8, 4.9e-8, 2.0**-30, 2.0**-31]),
    ]).clamp(-1.0, 1.0)
    expected = torch.bucketize(x, midpoints)
    assert torch.equal(_nearest_codes(x, signed).long(), expected)
    assert torch.equal(_nearest_codes(x.view(-1, 1), signed).long().view(-1), expected)  # any shape


def test_signed_zero_index_is_the_position_of_zero_in_the_signed_map():
    from gradwise.state.quantize import _SIGNED_ZERO

    assert dynamic_map(True)[_SIGNED_ZERO] == 0 and (dynamic_map(True) < 0).sum() == _SIGNED_ZERO
