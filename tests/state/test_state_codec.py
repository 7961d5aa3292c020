"""The compiled 8-bit codec (`gradwise.state.quantize` under torch.compile) against the tables of the eager one.

Decoding computes a code's value from its index (`_decode_arithmetic`) and, in the flat compiled layout, reads the
codes as int32 words (`_code_indices`); both must give the table's float32 values bit for bit, for every code.
Rounding keeps the table look-up, which must stay the nearest code with ties to the lower code."""

from __future__ import annotations

import importlib

import pytest
import torch

quantize = importlib.import_module("gradwise.state.quantize")


def table(signed):
    return quantize._lookup(signed, torch.device("cpu"))


def same_bits(a, b):
    return bool(((a == b) | (torch.isnan(a) & torch.isnan(b))).all()) and bool(
        (torch.signbit(a) == torch.signbit(b))[~torch.isnan(a)].all())


@pytest.mark.parametrize("signed", [True, False])
def test_arithmetic_decoding_is_the_table_for_every_code(signed):
    codes = torch.arange(256, dtype=torch.float32)
    assert same_bits(quantize._decode_arithmetic(codes, signed), table(signed))
    if signed:
        assert torch.isnan(quantize._decode_arithmetic(torch.tensor([255.0]), True)).all()  # the unused code


@pytest.mark.parametrize("signed", [True, False])
def test_compiled_decoding_of_word_packed_codes_is_the_table(signed):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 255 if signed else 256, (3, 32, 8), generator=g, dtype=torch.uint8)
    codes[0, 0] = torch.arange(8, dtype=torch.uint8)  # every lane of a word pair
    codes.view(-1)[: 256 if not signed else 255] = torch.arange(256 if not signed else 255, dtype=torch.uint8)
    absmax = torch.tensor([1.0, 0.5, 3.0])
    compiled = torch.compile(quantize.dequantize_rows, backend="eager", fullgraph=True)
    expected = table(signed)[codes.long()] * absmax[:, None, None]
    assert same_bits(compiled(codes, absmax, signed, True), expected)
    assert same_bits(compiled(codes, absmax, signed), expected)
    assert same_bits(quantize.dequantize_rows(codes, absmax, signed), expected)  # eager: the table itself
    assert torch.equal(quantize._code_indices(codes), codes.float())


def probes(signed):
    """Every float32 midpoint between codes with its four neighbours on each side, a fine grid over [-1, 1],
    log-uniform magnitudes down to 1e-9 and the special values."""
    _, midpoints = quantize._tables(signed, torch.device("cpu"))
    xs = [midpoints]
    up, down = midpoints.clone(), midpoints.clone()
    for _ in range(4):
        up, down = torch.nextafter(up, torch.tensor(2.0)), torch.nextafter(down, torch.tensor(-2.0))
        xs += [up, down]
    g = torch.Generator().manual_seed(0)
    xs.append(torch.linspace(-1, 1, 200_001))
    xs.append((torch.rand(200_000, generator=g) * 2 - 1) * 10 ** (-9 * torch.rand(200_000, generator=g)))
    xs.append(torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e-45, -1e-45]))
    return torch.cat(xs).clamp(-1, 1)


@pytest.mark.parametrize("signed", [True, False])
def test_rounding_is_the_nearest_code_with_ties_to_the_lower_code(signed):
    x = probes(signed)
    values, midpoints = quantize._tables(signed, torch.device("cpu"))
    expected = torch.bucketize(x if signed else x.clamp_min(0), midpoints)
    assert torch.equal(quantize._nearest_codes(x, signed).long(), expected)


@pytest.mark.parametrize("signed", [True, False])
def test_compiled_quantize_rows_gives_the_eager_codes_on_word_packed_rows(signed):
    x = probes(signed)
    rows = torch.cat([x, x.new_zeros(-len(x) % 2048)]).view(-1, 2048)
    rows[:, 0] = 1.0  # absmax 1: the probes are the normalized values themselves
    codes, absmax = quantize.quantize_rows(rows, signed)
    compiled = torch.compile(quantize.quantize_rows, backend="eager", fullgraph=True)
    codes3, absmax3 = compiled(rows.view(len(rows), 256, 8), signed)
    assert torch.equal(codes3.view(codes.shape), codes) and torch.equal(absmax3, absmax)


@pytest.mark.parametrize("signed", [True, False])
def test_compiled_quantize_rows_gives_the_eager_codes_and_scales_on_blocks_that_are_not_finite(signed):
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(6, 2048, generator=g)
    rows[0, 5] = float("nan")  # NaN: scale NaN, the NaN itself 0, the rest normalized by 1 and clamped
    rows[1, 7], rows[1, 9] = float("inf"), -float("inf")  # infinities: +-1
    rows[2] = 0.0  # scale 1, every code the code of 0
    rows[3, :1024] = -0.0
    rows[4] *= 1e-30  # below the smallest code: 0 (normalized by a tiny scale, so not all 0)
    rows[5, 3], rows[5, 4] = float("nan"), -float("inf")
    codes, absmax = quantize.quantize_rows(rows.clone(), signed)
    compiled = torch.compile(quantize.quantize_rows, backend="eager", fullgraph=True)
    codes3, absmax3 = compiled(rows.clone().view(6, 256, 8), signed)
    assert torch.equal(codes3.view(codes.shape), codes)
    assert same_bits(absmax3, absmax) and torch.isnan(absmax[[0, 1, 5]]).all() and absmax[2] == 0
    assert codes[0, 5] == codes[2, 0] == (127 if signed else 0)  # NaN stored as the code of 0
    if signed:
        assert codes[1, 7] == 254 and codes[1, 9] == 0  # +-1: the ends of the signed map (255 codes)
    else:
        assert codes[1, 7] == 255 and codes[1, 9] == 0  # unsigned: +1 the last code, -inf (negative) 0


@pytest.mark.parametrize("signed", [True, False])
def test_eager_and_compiled_rounding_agree_on_signed_zeros_and_nan(signed):
    x = torch.tensor([0.0, -0.0, float("nan"), 1.0, -1.0, 5e-8, -5e-8])
    compiled = torch.compile(quantize._nearest_codes, backend="eager", fullgraph=True)
    eager = quantize._nearest_codes(x, signed)
    assert torch.equal(compiled(x, signed), eager)
    if not signed:
        assert eager[2] == 0 and eager[1] == 0 and eager[4] == 0
