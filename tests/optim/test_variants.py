"""Named variants: each equals its base class with the flag it names, and its published rule (a reference
written here from the paper, or torch.optim where torch has it), per step in float64 over 50 steps."""

from __future__ import annotations

import pytest
import torch
from oracle_problem import trajectory, worst_difference
from oracle_references import ReferenceCAdamW, ReferenceLion

import gradwise as gw
from gradwise.optim.variants import (
    CADOPT,
    NAG,
    AMSGrad,
    CAdamW,
    CAdEMAMix,
    CLion,
    SignSGD,
    Signum,
)

DT = torch.float64
STEPS = 50

# name -> (class, the base class and the arguments that make the variant)
VARIANTS = {
    "cadamw": (CAdamW, gw.AdamW, dict(cautious=True)),
    "clion": (CLion, gw.Lion, dict(cautious=True)),
    "cadopt": (CADOPT, gw.ADOPT, dict(cautious=True)),
    "cademamix": (CAdEMAMix, gw.AdEMAMix, dict(cautious=True)),
    "amsgrad": (AMSGrad, gw.AdamW, dict(amsgrad=True)),
    "nag": (NAG, gw.SGD, dict(momentum=0.9, nesterov=True)),
    "signsgd": (SignSGD, gw.Lion, dict(betas=(0.0, 0.0))),
    "signum": (Signum, gw.Lion, dict(betas=(0.9, 0.9))),
}
LRS = {"clion": 1e-3, "signsgd": 1e-3, "signum": 1e-3, "nag": 0.05}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_equals_its_base_class_with_the_flag(name):
    cls, base, flags = VARIANTS[name]
    assert gw.get(name) is cls and issubclass(cls, base)
    lr = LRS.get(name, 1e-2)
    ours, init = trajectory(lambda ps: gw.create(name, ps, lr=lr), STEPS)
    theirs, _ = trajectory(lambda ps: base(ps, lr=lr, **flags), STEPS)
    assert worst_difference(ours, theirs) == 0.0
    moved = max(float((a - b).abs().max()) for a, b in zip(ours[-1], init, strict=True))
    assert moved > 1e-3
    plain, _ = trajectory(lambda ps: base(ps, lr=lr), STEPS)
    assert worst_difference(ours, plain) > 1e-6  # the flag does change the trajectory


class ReferenceSignum:
    """signSGD (beta=0, Algorithm 1) and Signum (Algorithm 3): x <- x - lr sign(m), m the gradient's EMA."""

    def __init__(self, params, lr, beta, weight_decay=0.0):
        self.params, self.lr, self.beta, self.wd = list(params), lr, beta, weight_decay
        self.m = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        for i, p in enumerate(self.params):
            self.m[i] = self.beta * self.m[i] + (1 - self.beta) * p.grad
            p.mul_(1 - self.lr * self.wd)
            p.sub_(self.lr * torch.sign(self.m[i]))


class ReferenceSGDW:
    """Decoupled decay p <- p (1 - lr wd), then torch.optim.SGD without decay."""

    def __init__(self, params, lr, weight_decay, **sgd):
        self.params, self.lr, self.wd = list(params), lr, weight_decay
        self.sgd = torch.optim.SGD(self.params, lr=lr, weight_decay=0.0, foreach=False, **sgd)

    @torch.no_grad()
    def step(self):
        for p in self.params:
            p.mul_(1 - self.lr * self.wd)
        self.sgd.step()


REFERENCES = {
    "cadamw": (lambda ps: gw.CAdamW(ps, lr=1e-2, weight_decay=0.1),
               lambda ps: ReferenceCAdamW(ps, lr=1e-2, weight_decay=0.1)),
    "clion": (lambda ps: gw.CLion(ps, lr=1e-3, weight_decay=0.3),
              lambda ps: ReferenceLion(ps, lr=1e-3, betas=(0.9, 0.99), weight_decay=0.3, cautious=True)),
    "signsgd": (lambda ps: gw.SignSGD(ps, lr=1e-3, weight_decay=0.2),
                lambda ps: ReferenceSignum(ps, lr=1e-3, beta=0.0, weight_decay=0.2)),
    "signum": (lambda ps: gw.Signum(ps, lr=1e-3), lambda ps: ReferenceSignum(ps, lr=1e-3, beta=0.9)),
    "amsgrad": (lambda ps: gw.AMSGrad(ps, lr=1e-2, weight_decay=0.1),
                lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)),
    "adam": (lambda ps: gw.Adam(ps, lr=1e-2, weight_decay=0.1),
             lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, foreach=False)),
    "adam-amsgrad": (lambda ps: gw.Adam(ps, lr=1e-2, weight_decay=0.1, amsgrad=True),
                     lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)),
    "nag": (lambda ps: gw.NAG(ps, lr=0.05, weight_decay=0.01),
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01, foreach=False)),
    "sgdw": (lambda ps: gw.SGDW(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
             lambda ps: ReferenceSGDW(ps, lr=0.05, momentum=0.9, weight_decay=0.1)),
    "sgdw-nesterov": (lambda ps: gw.SGDW(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1),
                      lambda ps: ReferenceSGDW(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
}
TOLERANCE = {"cadamw": 1e-13, "clion": 1e-13}  # the references multiply in another order


@pytest.mark.parametrize("case", sorted(REFERENCES))
def test_trajectory_equals_the_published_rule(case):
    ours_fn, theirs_fn = REFERENCES[case]
    ours, init = trajectory(ours_fn, STEPS)
    theirs, _ = trajectory(theirs_fn, STEPS)
    assert worst_difference(ours, theirs) <= TOLERANCE.get(case, 0.0)
    moved = max(float((a - b).abs().max()) for a, b in zip(theirs[-1], init, strict=True))
    assert moved > 1e-3


def test_the_cautious_references_do_mask():
    """Some coordinates disagree with the gradient on this problem, so C-AdamW differs from AdamW."""
    cautious, _ = trajectory(lambda ps: ReferenceCAdamW(ps, lr=1e-2, weight_decay=0.1), STEPS)
    plain, _ = trajectory(lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1), STEPS)
    assert worst_difference(cautious, plain) > 1e-4


def test_adam_decay_is_coupled_and_sgdw_decay_decoupled():
    """The decay form is what separates Adam from AdamW and SGDW from SGD."""
    adam, _ = trajectory(lambda ps: gw.Adam(ps, lr=1e-2, weight_decay=0.1), 20)
    adamw, _ = trajectory(lambda ps: gw.AdamW(ps, lr=1e-2, weight_decay=0.1), 20)
    assert worst_difference(adam, adamw) > 1e-4
    sgdw, _ = trajectory(lambda ps: gw.SGDW(ps, lr=0.05, momentum=0.9, weight_decay=0.1), 20)
    sgd, _ = trajectory(lambda ps: gw.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1), 20)
    assert worst_difference(sgdw, sgd) > 1e-4


def test_defaults_follow_their_sources():
    import inspect

    adam = inspect.signature(torch.optim.Adam).parameters
    for key, value in gw.Adam.defaults.items():
        assert adam[key].default == value, key
    assert gw.NAG.defaults["momentum"] == 0.9 and gw.NAG.defaults["nesterov"] is True
    assert gw.Signum.defaults["betas"] == (0.9, 0.9) and gw.SignSGD.defaults["betas"] == (0.0, 0.0)
    assert gw.SGDW.defaults == gw.SGD.defaults


def test_nag_still_refuses_momentum_zero():
    with pytest.raises(ValueError, match="nesterov"):
        gw.NAG([torch.nn.Parameter(torch.ones(2))], momentum=0.0)


def test_variants_are_exported_and_listed():
    for name in [*VARIANTS, "adam", "sgdw"]:
        assert name in gw.available()
        assert getattr(gw, gw.get(name).__name__) is gw.get(name)
