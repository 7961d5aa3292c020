"""The suite every registered optimizer passes: saving, resuming, validation, non-finite policy, groups, dtypes."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.core import Betas, Flag, Integer, Interval, OneOf, Optional
from gradwise.core.registry import entry

NAMES = gw.available()
OPTIMIZERS = [n for n in NAMES if entry(n).kind == "optimizer"]
LR = 1e-2
# AdaGrad-Norm's lr is the total distance of a step: at 1e-2 nothing moves in bfloat16 and the quadratic
# is not solved in the suite's step budget; 1.0 is its default and the paper's scale.
LRS = {"adagradnorm": 1.0}


# Optimizers that read the loss (Polyak step sizes: SPS, ALR-SMAG) take it as step(loss=...); this suite's
# objectives can be negative, so they get a lower bound below every loss here (the step is then capped by lr).
NEEDS_LOSS = {n for n in NAMES if getattr(gw.get(n), "needs_loss", False)}
LOSS_LOWER_BOUND = -100.0


def make(name, params, **hyper):
    hyper.setdefault("lr", LRS.get(name, LR))
    if name in NEEDS_LOSS:
        hyper.setdefault("f_star", LOSS_LOWER_BOUND)
    return gw.create(name, params, **hyper)


def step(opt, loss):
    """opt.step(), or opt.step(loss=loss) for an optimizer that reads the loss."""
    return opt.step(loss=loss.detach()) if getattr(opt, "needs_loss", False) else opt.step()


def model_params(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (3,), (2, 3, 2, 2), (1,)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def loss_fn(params, batch):
    """A small non-convex objective whose gradient changes from batch to batch."""
    total = 0.0
    for i, p in enumerate(params):
        total = total + (torch.sin(p * (1 + batch + i)) * p).sum() + 0.1 * (p**2).sum()
    return total


def run(opt, params, steps, start=0):
    for k in range(start, start + steps):
        opt.zero_grad()
        loss = loss_fn(params, k % 3)
        loss.backward()
        step(opt, loss)


def clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype, k
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_is_exact(name):
    torch.manual_seed(0)
    params = model_params()
    opt = make(name, params)
    run(opt, params, 3)
    saved = roundtrip(opt.state_dict())
    fresh = make(name, clone(params))
    fresh.load_state_dict(saved)
    original, loaded = opt.state_dict(), fresh.state_dict()
    assert original["param_groups"] == loaded["param_groups"]
    assert original["state"].keys() == loaded["state"].keys()
    for i in original["state"]:
        assert_same_state(original["state"][i], loaded["state"][i])


@pytest.mark.parametrize("name", NAMES)
def test_resume_equals_uninterrupted(name):
    torch.manual_seed(1)
    straight = model_params()
    opt = make(name, straight)
    run(opt, straight, 10)

    torch.manual_seed(1)
    resumed = model_params()
    first = make(name, resumed)
    run(first, resumed, 5)
    checkpoint = roundtrip({"params": [p.detach() for p in resumed], "opt": first.state_dict()})
    resumed = [p.clone().requires_grad_() for p in checkpoint["params"]]
    second = make(name, resumed)
    second.load_state_dict(checkpoint["opt"])
    run(second, resumed, 5, start=5)
    for a, b in zip(straight, resumed, strict=True):
        assert torch.equal(a, b)


def bad_values(rng):
    if isinstance(rng, Interval):
        out = [math.nan, math.inf, "0.1"]
        if math.isfinite(rng.low):
            out.append(rng.low - 1.0 if rng.low_closed else rng.low)
        if math.isfinite(rng.high):
            out.append(rng.high + 1.0 if rng.high_closed else rng.high)
        return out
    if isinstance(rng, Betas):
        return [(1.0,) * rng.n, (-0.1,) * rng.n, (0.5,) * (rng.n + 1), 0.9]
    if isinstance(rng, Flag):
        return ["yes", 1]
    if isinstance(rng, OneOf):
        return ["no-such-choice"]
    if isinstance(rng, Integer):
        return [rng.low - 1, 1.5]
    if isinstance(rng, Optional):
        return bad_values(rng.inner)
    raise AssertionError(f"the generic suite does not know how to break {rng!r}: add it here")


BAD = [
    (name, key, value)
    for name in NAMES
    for key, rng in gw.get(name).all_ranges().items()
    for value in bad_values(rng)
]


@pytest.mark.parametrize("name,key,value", BAD, ids=[f"{n}-{k}-{v!r}" for n, k, v in BAD])
def test_bad_hyper_parameter_raises_at_construction_with_its_name(name, key, value):
    with pytest.raises((ValueError, TypeError)) as error:
        make(name, model_params(), **{key: value})
    assert key in str(error.value)


@pytest.mark.parametrize("name", NAMES)
def test_bad_hyper_parameter_in_a_param_group_is_refused(name):
    params = model_params()
    with pytest.raises(ValueError, match="lr"):
        make(name, [{"params": params[:2]}, {"params": params[2:], "lr": -1.0}])


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyper_parameter_lists_accepted_ones(name):
    with pytest.raises(TypeError, match="Accepted: .*lr"):
        make(name, model_params(), learning_rate=0.1)


def test_refuses_empty_and_integer_parameters():
    with pytest.raises(ValueError, match="empty"):
        gw.AdamW([])
    with pytest.raises(TypeError, match="floating-point"):
        gw.AdamW([torch.zeros(3, dtype=torch.int64)])


def test_sparse_gradient_raises_a_clear_error():
    p = torch.zeros(4, requires_grad=True)
    p.grad = torch.sparse_coo_tensor([[1]], [1.0], (4,))
    with pytest.raises(RuntimeError, match="sparse gradients"):
        gw.AdamW([p]).step()


def poison(params, index=1):
    loss = loss_fn(params, 0)
    loss.backward()
    params[index].grad.view(-1)[0] = math.nan
    return loss


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_skip_leaves_everything_untouched_and_counts(name):
    params = model_params()
    opt = make(name, params)
    run(opt, params, 2)
    before_params = clone(params)
    before_state = roundtrip(opt.state_dict())
    opt.zero_grad()
    loss = poison(params)
    step(opt, loss)
    assert opt.skipped_steps == 1
    for a, b in zip(params, before_params, strict=True):
        assert torch.equal(a, b)
    after = opt.state_dict()
    for i in before_state["state"]:
        assert_same_state(before_state["state"][i], after["state"][i])
    assert roundtrip(opt.state_dict())["gradwise"]["skipped_steps"] == 1


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_raise_names_the_parameter(name):
    params = model_params()
    opt = make(name, [{"params": params[:1]}, {"params": params[1:]}], nonfinite="raise")
    loss = poison(params, index=2)
    with pytest.raises(FloatingPointError, match="parameter 1 of param group 1"):
        step(opt, loss)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_ignore_behaves_like_torch(name):
    params = model_params()
    opt = make(name, params, nonfinite="ignore")
    loss = poison(params)
    step(opt, loss)
    step(opt, loss)  # a second step: ADOPT's first step only records the second moment (its NaN shows next step)
    assert opt.skipped_steps == 0
    assert not torch.isfinite(params[1]).all()


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_keep_their_own_hyper_parameters(name):
    params = model_params()
    frozen = clone(params[2:])
    opt = make(name, [{"params": params[:2]}, {"params": params[2:], "lr": 0.0}])
    before = clone(params[:2])
    run(opt, params, 3)
    for a, b in zip(params[2:], frozen, strict=True):
        assert torch.equal(a, b)
    assert all(not torch.equal(a, b) for a, b in zip(params[:2], before, strict=True))


@pytest.mark.parametrize("name", NAMES)
def test_closure_is_evaluated_with_gradients(name):
    torch.manual_seed(2)
    params = model_params()
    opt = make(name, params)

    def closure():
        opt.zero_grad()
        loss = loss_fn(params, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert torch.is_tensor(loss) and torch.isfinite(loss)
    torch.manual_seed(2)
    manual = model_params()
    other = make(name, manual)
    manual_loss = loss_fn(manual, 0)
    manual_loss.backward()
    step(other, manual_loss)
    for a, b in zip(params, manual, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_maximize_equals_minimizing_the_negated_objective(name):
    up, down = model_params(), model_params()
    a, b = make(name, up, maximize=True), make(name, down)
    for k in range(4):
        a.zero_grad(), b.zero_grad()
        negated, loss = -loss_fn(up, k), loss_fn(down, k)
        negated.backward()
        loss.backward()
        step(a, negated), step(b, loss)
    for p, q in zip(up, down, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_dtypes(name, dtype):
    torch.manual_seed(3)
    params = model_params(dtype)
    before = clone(params)
    opt = make(name, params)
    run(opt, params, 5)
    for p, b in zip(params, before, strict=True):
        assert p.dtype == dtype
        assert torch.isfinite(p).all()
        assert not torch.equal(p, b)


@pytest.mark.parametrize("name", NAMES)
def test_parameters_without_gradient_are_left_alone(name):
    params = model_params()
    opt = make(name, params)
    untouched = params[1].detach().clone()
    for _ in range(2):
        opt.zero_grad()
        loss = loss_fn([params[0]], 0)
        loss.backward()
        step(opt, loss)
    assert torch.equal(params[1], untouched)
    assert params[1] not in opt.state


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_converges_on_an_ill_conditioned_quadratic(name):
    curvature = torch.logspace(0, 1, 10, dtype=torch.float64)
    x = torch.ones(10, dtype=torch.float64, requires_grad=True)
    opt = make(name, [x], weight_decay=0.0) if "weight_decay" in gw.get(name).ranges else make(name, [x])

    def f():
        return 0.5 * (curvature * x**2).sum()

    start = f().item()
    for _ in range(400):
        opt.zero_grad()
        loss = f()
        loss.backward()
        step(opt, loss)
    assert f().item() < 0.05 * start


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    lr=st.floats(0.0, 0.1),
    scale=st.floats(1e-6, 1e3),
    seed=st.integers(0, 2**16),
)
def test_finite_gradients_never_give_non_finite_parameters(name, shape, lr, scale, seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(shape, generator=g, dtype=torch.float32).requires_grad_()
    opt = make(name, [p], lr=lr)
    for _ in range(5):
        p.grad = torch.randn(shape, generator=g) * scale
        step(opt, torch.tensor(1.0))  # any loss: the gradients are not its
    assert torch.isfinite(p).all()
