import math

import pytest
import torch

from gradwise.core import Betas, Flag, Integer, Interval, NonNegative, OneOf, Optional


def test_interval_message_names_value_and_range():
    with pytest.raises(ValueError, match=r"lr=-1\.0 is out of range: lr must be finite and in \[0, inf\)"):
        NonNegative.check("lr", -1.0)
    with pytest.raises(ValueError, match="finite"):
        NonNegative.check("lr", math.inf)
    with pytest.raises(TypeError, match="real number"):
        NonNegative.check("lr", True)
    assert NonNegative.check("lr", 0) == 0
    assert NonNegative.check("lr", torch.tensor(0.5)) is not None


def test_open_and_closed_ends():
    beta = Interval(0.0, 1.0, high_closed=False)
    assert beta.describe() == "[0, 1)"
    beta.check("b", 0.0)
    with pytest.raises(ValueError):
        beta.check("b", 1.0)


def test_betas_checks_each_entry_and_the_length():
    assert Betas(3).check("betas", [0.1, 0.2, 0.3]) == (0.1, 0.2, 0.3)
    with pytest.raises(ValueError, match=r"betas\[1\]"):
        Betas(2).check("betas", (0.9, 1.0))
    with pytest.raises(ValueError, match="tuple of 2"):
        Betas(2).check("betas", (0.9,))


def test_other_ranges():
    with pytest.raises(TypeError, match="True or False"):
        Flag().check("amsgrad", 1)
    with pytest.raises(ValueError, match="one of 'a', 'b'"):
        OneOf(("a", "b")).check("mode", "c")
    with pytest.raises(ValueError, match=">= 1"):
        Integer(1).check("k", 0)
    assert Optional(NonNegative).check("clip", None) is None
    with pytest.raises(ValueError, match="clip"):
        Optional(NonNegative).check("clip", -2.0)
