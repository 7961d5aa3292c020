"""compile=True: the same numbers as eager, one graph for any lr schedule, state_dicts shared with eager, flat
views that keep the model's parameters and gradients working, and an eager fallback with a warning."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import gradwise as gw
from checkpoint_io import roundtrip
from gradwise.core import ChainOptimizer, Transform
from gradwise.core.compiled import SCALAR_DOUBLE
from gradwise.core.registry import entry
from gradwise.transforms import sgd_step

SHAPES = [(4, 3), (3,), (2, 3, 2, 2), (1,)]
LRS = {"adagradnorm": 1.0}  # its lr is the length of a step (as in tests/optim/test_generic.py)


def make_params(dtypes=(torch.float64,), shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for dtype in dtypes for s in shapes]


def clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def backward(params, k, skip=()):
    total = sum((torch.sin(p * (1 + k % 3 + i)) * p).sum() + 0.1 * (p**2).sum()
                for i, p in enumerate(params) if i not in skip)
    total.backward()


def train(opt, params, steps, start=0, set_to_none=True, lrs=None, skip=None):
    for k in range(start, start + steps):
        opt.zero_grad(set_to_none=set_to_none)
        backward(params, k, skip=(skip or {}).get(k, ()))
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[k]
        opt.step()


def train_with_closure(opt, params, steps):
    """Through step(closure), which every optimizer accepts (Polyak step sizes need the loss)."""
    for k in range(steps):
        def closure(k=k):
            opt.zero_grad()
            with torch.enable_grad():
                loss = sum((torch.sin(p * (1 + k % 3 + i)) * p).sum() + 0.1 * (p**2).sum()
                           for i, p in enumerate(params))
            loss.backward()
            return loss
        opt.step(closure)


def assert_close(actual, expected, rtol):
    for a, e in zip(actual, expected, strict=True):
        a, e = torch.as_tensor(a).detach(), torch.as_tensor(e).detach()
        assert a.dtype == e.dtype and a.shape == e.shape
        scale = e.abs().max().clamp(min=1e-30) if e.numel() else 1
        assert float((a - e).abs().max() / scale) <= rtol if e.numel() else True


def graphs():
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


RTOL = {torch.float32: 1e-6, torch.float64: 1e-12}


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_changing_lr_compiles_once_per_bucket_and_matches_eager(backend):
    # one param group holding float32 and float64 parameters: two buckets, two graphs for 50 steps of a new lr
    params = make_params((torch.float32, torch.float64))
    lrs = [1e-2 * (1 + 0.5 * torch.cos(torch.tensor(k / 7.0)).item()) for k in range(50)]
    eager = clone(params)
    torch._dynamo.utils.counters.clear()
    opt = gw.AdamW(params, compile=backend)
    train(opt, params, 50, lrs=lrs)
    assert graphs() == 2
    ref = gw.AdamW(eager)
    train(ref, eager, 50, lrs=lrs)
    for dtype in (torch.float32, torch.float64):
        pick = [i for i, p in enumerate(params) if p.dtype == dtype]
        assert_close([params[i] for i in pick], [eager[i] for i in pick], RTOL[dtype])
        for key in ("exp_avg", "exp_avg_sq"):
            assert_close([opt.state[params[i]][key] for i in pick], [ref.state[eager[i]][key] for i in pick],
                         RTOL[dtype])
    assert [float(opt.state[p]["step"]) for p in params] == [50.0] * len(params)


@pytest.mark.parametrize("first,second", [("aot_eager", False), (False, "aot_eager")])
def test_state_dict_moves_between_compiled_and_eager(first, second):
    params = make_params()
    reference = clone(params)
    ref_opt = gw.AdamW(reference, lr=1e-2, amsgrad=True)
    train(ref_opt, reference, 10)

    opt = gw.AdamW(params, lr=1e-2, amsgrad=True, compile=first)
    train(opt, params, 5)
    saved = roundtrip(opt.state_dict())
    resumed = clone(params)
    opt2 = gw.AdamW(resumed, lr=1e-2, amsgrad=True, compile=second)
    opt2.load_state_dict(saved)
    train(opt2, resumed, 5, start=5)
    assert_close(resumed, reference, 1e-12)
    for p, q in zip(resumed, reference, strict=True):
        assert opt2.state[p].keys() == ref_opt.state[q].keys()
        assert_close([opt2.state[p][k] for k in ref_opt.state[q]], list(ref_opt.state[q].values()), 1e-12)
    # the state_dict of a compiled optimizer is torch's: one tensor per parameter, of its shape
    sd = opt.state_dict()
    assert [sd["state"][i]["exp_avg"].shape for i in range(len(params))] == [p.shape for p in params]


def test_parameter_without_gradient_is_left_alone_as_in_eager():
    # step 2 leaves out parameter 1, step 3 parameter 0: their step counts then differ for the rest of the run
    skip = {2: (1,), 3: (0,)}
    params = make_params(shapes=[(5,), (3,), (4,), (2,)])  # one rank: the per-parameter path compiles once
    eager = clone(params)
    opt = gw.AdamW(params, lr=1e-2, compile="aot_eager")
    ref = gw.AdamW(eager, lr=1e-2)
    train(opt, params, 3, skip=skip)
    train(ref, eager, 3, skip=skip)
    assert_close(params, eager, 1e-12)
    train(opt, params, 4, start=3, skip=skip)
    train(ref, eager, 4, start=3, skip=skip)
    assert_close(params, eager, 1e-12)
    assert [float(opt.state[p]["step"]) for p in params] == [float(ref.state[p]["step"]) for p in eager] == [6, 6, 7, 7]


def _plain_update(u, p, s, t):
    return u * 0.5


class HalvedSGD(ChainOptimizer):
    """SGD on half the gradient, the halving written as a plain (not yet converted) transform."""

    defaults = dict(lr=1e-2)

    def chain(self, h):
        return (Transform(_plain_update), sgd_step(h.lr))


def test_unconverted_transform_falls_back_to_eager_with_one_warning():
    params = make_params()
    eager = clone(params)
    opt = HalvedSGD(params, compile="aot_eager")
    with pytest.warns(UserWarning, match=r"param group 0 runs eagerly: transform 0 of the chain .* has no kernel"):
        train(opt, params, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(opt, params, 2, start=1)
    train(HalvedSGD(eager), eager, 3)
    assert_close(params, eager, 0.0)


def test_kernel_capturing_an_object_falls_back():
    def kernel(u, p, s, c):
        p.add_(u * c[0] * holder.scale)
        return u

    holder = type("Holder", (), {"scale": 1.0})()

    class Odd(ChainOptimizer):
        defaults = dict(lr=1e-2)

        def chain(self, h):
            return (gw.core.kernel_transform(kernel, lambda t: (-h.lr,), writes=True, elementwise=True),)

    params = make_params()
    opt = Odd(params, compile="aot_eager")
    with pytest.warns(UserWarning, match=r"captures a .*Holder"):
        train(opt, params, 1)


def test_a_fresh_captured_object_each_step_warns_once():
    # the chain is built each step: an object made anew each time must not make a new warning each step
    class Holder:
        scale = 1.0

    class Fresh(ChainOptimizer):
        defaults = dict(lr=1e-2)

        def chain(self, h):
            holder = Holder()

            def kernel(u, p, s, c):
                p.add_(u * c[0] * holder.scale)
                return u

            return (gw.core.kernel_transform(kernel, lambda t: (-h.lr,), writes=True, elementwise=True),)

    params = make_params()
    opt = Fresh(params, compile="aot_eager")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(opt, params, 4)
    assert len([w for w in caught if "runs eagerly" in str(w.message)]) == 1


def test_flat_views_keep_the_model_and_its_gradients_working():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
    reference = copy.deepcopy(model)
    x = torch.randn(8, 5)
    opt = gw.create("adamw", model, lr=1e-2, compile="aot_eager")
    ref = gw.create("adamw", reference, lr=1e-2)
    for k in range(6):
        for m, o in ((model, opt), (reference, ref)):
            o.zero_grad(set_to_none=k % 2 == 0)
            (m(x * (k + 1)) ** 2).mean().backward()
            o.step()
        for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), name
    # parameters and gradients are views of the flat buffers (two groups: decayed and not)
    layouts = list(opt._compiled.layouts.values())
    assert sum(len(layout.members) for layout in layouts) == 4
    for layout in layouts:
        for p, g in zip(layout.members, layout.grads, strict=True):
            assert p.untyped_storage().data_ptr() == layout.param.untyped_storage().data_ptr()
            assert p.grad is g
    # backward after zero_grad(set_to_none=False) accumulates into the flat gradient buffer itself
    opt.zero_grad(set_to_none=False)
    (model(x) ** 2).mean().backward()
    expected = torch.cat([layout.grad for layout in layouts]).abs().sum()
    assert float(expected) > 0
    assert torch.allclose(expected, sum(p.grad.abs().sum() for p in model.parameters()))
    # loading a model state_dict writes into the views
    model.load_state_dict(reference.state_dict())
    for layout in layouts:
        p = layout.members[0]
        assert torch.equal(layout.param[: p.numel()], p.detach().reshape(-1))
    # model.double() replaces the views: the next step gathers float64 buffers and still matches eager
    for m, o in ((model, opt), (reference, ref)):
        m.double()
        for state in o.state.values():
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state[key].double()
        o.zero_grad()
        (m(x.double()) ** 2).mean().backward()
        o.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        assert a.dtype == torch.float64 and torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert all(key[1][0] == torch.float64 for key in opt._compiled.layouts)


# dynamo's own backend (traces the chain into one graph and runs it op by op) keeps the suite fast; the
# aot_eager variant (functionalization, decompositions: what inductor sees) is marked slow
@pytest.mark.parametrize("backend", ["eager", pytest.param("aot_eager", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", gw.available())
def test_every_optimizer_compiled_matches_eager(name, backend):
    # samplers draw their noise from a generator of their own: the compiled step draws it before the graph, in the
    # eager order, so both runs see the same noise (with torch's global generator inductor draws its own stream)
    def extra() -> dict:
        return {"generator": torch.Generator().manual_seed(0)} if entry(name).kind == "sampler" else {}

    lr = LRS.get(name, 1e-2)
    for dtype in (torch.float64, torch.float32):
        params = make_params((dtype,), shapes=[(4, 3), (2, 5)])  # one rank: one graph on the per-parameter path
        eager = clone(params)
        opt = gw.create(name, params, lr=lr, compile=backend, **extra())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_with_closure(opt, params, 5)
        fallbacks = [str(w.message) for w in caught if "runs eagerly" in str(w.message)]
        unconverted = [message for message in fallbacks if "has no kernel yet" in message]
        if unconverted:  # until its transforms are in the split form: then this test holds it to eager's numbers
            pytest.skip(unconverted[0])
        if fallbacks and all(SCALAR_DOUBLE in message for message in fallbacks):
            continue  # float64 scalar state (a torch bug, see gradwise.core.compiled): compare in float32
        assert not fallbacks
        break
    ref = gw.create(name, eager, lr=lr, **extra())
    train_with_closure(ref, eager, 5)
    assert_close(params, eager, 1e-10 if dtype == torch.float64 else 1e-5)
    # the saved state has the same keys (a compiled sampler with a generator also keeps its drawn noise in
    # opt.state, which state_dict leaves out)
    saved, expected = opt.state_dict()["state"], ref.state_dict()["state"]
    assert saved.keys() == expected.keys()
    assert all(saved[i].keys() == expected[i].keys() for i in expected)


def test_state_storage_runs_per_parameter_inside_the_compiled_function():
    # state_dtype=bfloat16: storage open/close run in the compiled per-parameter function (dynamo only here)
    params = make_params((torch.float32,), shapes=[(6, 4), (5, 3)])
    eager = clone(params)
    opt = gw.AdamW(params, lr=1e-2, state_dtype=torch.bfloat16, compile="eager")
    ref = gw.AdamW(eager, lr=1e-2, state_dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        train(opt, params, 4)
    train(ref, eager, 4)
    assert_close(params, eager, 1e-6)
    assert opt.state[params[0]]["exp_avg"].dtype == torch.bfloat16
    assert not opt._compiled.layouts  # storage: no flat buffers


def test_compile_flag_is_checked_and_not_saved():
    params = make_params()
    with pytest.raises(ValueError, match="compile"):
        gw.create("adamw", params, compile="fast")
    opt = gw.create("adamw", params, compile="aot_eager")
    assert opt.compile == "aot_eager" and "compile" not in opt.state_dict()["param_groups"][0]
    assert gw.AdamW(params).compile is False


def test_fast_path_skips_the_scan_and_every_change_between_steps_is_seen():
    # steps with set_to_none=False keep the same gradient tensors: the compiled optimizer then skips the
    # per-parameter scan (_params_with_grad); each change made between two steps must send it back to the scan
    params = make_params(shapes=[(5,), (3,), (4,), (2,)])
    eager = clone(params)
    opt = gw.AdamW(params, lr=1e-2, compile="eager")
    ref = gw.AdamW(eager, lr=1e-2)
    scans = []
    scan = opt._params_with_grad
    opt._params_with_grad = lambda: scans.append(1) or scan()

    def no_grad(ps, o):  # parameter 1 gets no gradient
        ps[1].grad = None

    def new_data(ps, o):  # p.data replaced by a tensor of the same dtype
        ps[0].data = ps[0].data.clone()

    def reload(ps, o):
        o.load_state_dict(roundtrip(o.state_dict()))

    def new_state(ps, o):  # a parameter's state dict replaced by copies
        o.state[ps[2]] = {k: v.clone() for k, v in o.state[ps[2]].items()}

    def to_double(ps, o):  # what model.to(float64) does: p.data and p.grad.data replaced
        for p in ps:
            p.data = p.data.double()
            if p.grad is not None:
                p.grad.data = p.grad.data.double()
        for st in o.state.values():
            st.update({k: v.double() for k, v in st.items() if k != "step"})

    def new_group(ps, o):
        o.add_param_group({"params": [ps[4]]})

    # parameter 1 missing a step sends its bucket to the per-parameter path (step counts differ): last
    changes = {4: lambda ps, o: o.zero_grad(set_to_none=True), 6: new_data, 8: reload, 10: new_state,
               12: to_double, 14: new_group, 16: no_grad}
    params.append(torch.ones(3, dtype=torch.float32, requires_grad=True))
    eager.append(params[-1].detach().clone().requires_grad_())
    for k in range(20):
        for ps, o in ((params, opt), (eager, ref)):
            if k in changes:
                changes[k](ps, o)
            skip = (1,) if k == 16 else ()
            o.zero_grad(set_to_none=False)
            backward(ps[:4] if k < 14 else ps, k, skip=skip)
            o.step()
        assert_close(params, eager, 1e-12 if params[0].dtype == torch.float64 else 1e-6)
        for p, q in zip(params, eager, strict=True):
            if q in ref.state:
                assert_close([opt.state[p][key] for key in ref.state[q]], list(ref.state[q].values()), 1e-12)
        scanned = bool(scans)
        scans.clear()
        # the numbers above show each change was seen; a step after a change may scan, and so may the next
        # (a layout gathered again) and the first two (the first re-points the gradients); no other step does
        if k == 4:  # new gradient tensors for the same parameters: copied into the flat buffer, no scan
            assert not scanned
        if k >= 2 and k not in changes and k - 1 not in changes:
            assert not scanned, k
            assert k > 16 or opt._compiled._last.plan is not None, k  # every parameter in a flat layout
    assert [float(opt.state[p]["step"]) for p in params] == [20, 19, 20, 20, 6]


def test_float64_scalar_state_runs_flat_from_the_first_step():
    """AdaGrad-Norm keeps a 0-dim float64 state in float64. The flat path holds it in a column that the state
    entries view (tests/core/test_scalar_state.py); the first step, which allocates it, must already update
    it in place, or every later step is off. (On the per-parameter path the same state runs eagerly, with a
    warning: tests/core/test_scalar_state.py.)"""
    params = make_params((torch.float64,), shapes=[(4, 3), (2, 5)])
    eager = clone(params)
    opt = gw.create("adagradnorm", params, lr=1.0, compile="aot_eager")
    train(opt, params, 4)
    assert opt._compiled.layouts
    ref = gw.create("adagradnorm", eager, lr=1.0)
    train(ref, eager, 4)
    assert_close(params, eager, 1e-12)  # ||G||^2 is summed over the flat buffers: another order of additions


@pytest.mark.parametrize("name", ["adamw", "cadamw"])  # elementwise and segmented chains: both on the flat path
def test_a_flat_step_moves_the_parameters_version_counters_as_an_in_place_step_does(name):
    # the flat path writes a buffer whose counter the parameters (p.data re-pointed) do not share; autograd
    # must still see the step, so that a graph that saved a parameter before it refuses its backward after
    params = make_params(shapes=[(5,), (3, 4)])
    opt = gw.create(name, params, lr=1e-2, compile="eager")
    loss = sum((p * p).sum() for p in params)
    loss.backward()
    opt.step()  # lays the buffers out
    saved = (params[1] * params[1]).sum()
    before = [p._version for p in params]
    opt.step()
    assert opt._compiled.layouts  # the flat path ran
    assert all(p._version > v for p, v in zip(params, before, strict=True))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.backward()
