"""The NaN-keeping sign of Lion's direction: the same numbers as the form it replaced,
torch.where(x.isnan(), x, x.sign()), eager and under inductor (whose CPU code vectorises the new form)."""

import pytest
import torch

from gradwise.transforms.sign import sign_keeping_nan

INF, NAN = float("inf"), float("nan")
TINY = torch.finfo(torch.float32).tiny


def old_form(x):
    return torch.where(x.isnan(), x, x.sign())


def special_values(dtype):
    specials = torch.tensor([0.0, -0.0, INF, -INF, NAN, -NAN, TINY, -TINY, TINY / 8, -TINY / 8, 1.0, -1.0,
                             3e38, -3e38, 1e-30, -1e-30], dtype=dtype)
    random = torch.randn(61, generator=torch.Generator().manual_seed(0), dtype=dtype) * 10.0 ** torch.randint(
        -20, 20, (61,), generator=torch.Generator().manual_seed(1))
    return torch.cat([specials, random.to(dtype)])  # 77 elements: vector loops and their scalar tails


def assert_same(actual, expected):
    assert torch.equal(actual.isnan(), expected.isnan())
    keep = ~expected.isnan()
    assert torch.equal(actual[keep], expected[keep])
    assert torch.equal(actual[keep].signbit(), expected[keep].signbit())  # sign(-0.0) = 0.0, both forms


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sign_keeping_nan_equals_the_old_form_eager(dtype):
    x = special_values(dtype)
    out = sign_keeping_nan(x)
    assert_same(out, old_form(x))
    assert out.isnan().sum() == 2 and set(out[~out.isnan()].tolist()) == {-1.0, 0.0, 1.0}


@pytest.mark.slow  # an inductor compile: 5-15 s on 2 cores
def test_sign_keeping_nan_equals_the_old_form_under_inductor():
    x = special_values(torch.float32)
    compiled = torch.compile(lambda m, u: sign_keeping_nan(m * 0.5 + u), backend="inductor", fullgraph=True)
    assert_same(compiled(x, torch.zeros_like(x)), old_form(x * 0.5))
    assert_same(compiled(x, x), old_form(x * 0.5 + x))  # inf + inf, NaN, overflow to inf
