"""The compiled step's per-step shortcuts: the non-finite check reads one sum per flat gradient buffer, and
each shortcut must still see what the long way sees (every case below ends in the same numbers as eager)."""

from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import gradwise as gw

SHAPES = [(4, 3), (5,), (2, 3, 2)]


def make_params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def backward(params, k):
    sum(((torch.sin(p * (1 + k % 3 + i)) * p).sum() for i, p in enumerate(params))).backward()


def snapshot(opt, params):
    return [p.detach().clone() for p in params] + [
        v.clone() for p in params for v in opt.state[p].values() if isinstance(v, torch.Tensor)
    ]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def pair(nonfinite="skip", dtype=torch.float32):
    params = make_params(dtype)
    eager = clone(params)
    opt = gw.AdamW(params, lr=1e-2, nonfinite=nonfinite, compile="eager")
    ref = gw.AdamW(eager, lr=1e-2, nonfinite=nonfinite)
    return params, eager, opt, ref


def steps(opt, params, ks, set_to_none=False, poison=None):
    for k in ks:
        opt.zero_grad(set_to_none=set_to_none)
        backward(params, k)
        if poison is not None:
            poison(params)
        opt.step()


def skipped_then_matches(opt, ref, params, eager, poison, resume):
    """Step 3 with `poison` applied to both optimizers' gradients: both skip it and the compiled one changes
    nothing; then the steps in `resume` keep them together."""
    before = snapshot(opt, params)
    steps(opt, params, [3], poison=poison)
    steps(ref, eager, [3], poison=poison)
    assert opt.skipped_steps == ref.skipped_steps == 1
    assert same(snapshot(opt, params), before)
    steps(opt, params, resume)
    steps(ref, eager, resume)
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("in_place", [True, False])
def test_a_nonfinite_gradient_in_the_flat_buffer_skips_the_whole_step(bad, in_place):
    params, eager, opt, ref = pair()
    steps(opt, params, range(3))
    steps(ref, eager, range(3))
    assert opt._compiled.layouts  # the flat path: gradients are views of one buffer

    def poison(ps):
        if in_place:  # written into the view of the flat buffer
            ps[1].grad[2] = bad
        else:  # a new gradient tensor (copied into the flat buffer by the step)
            ps[1].grad = ps[1].grad.clone().index_fill_(0, torch.tensor([2]), bad)

    skipped_then_matches(opt, ref, params, eager, poison, range(4, 7))
    for p, q in zip(params, eager, strict=True):
        assert float(opt.state[p]["step"]) == float(ref.state[q]["step"]) == 6


def test_huge_finite_gradients_whose_sum_overflows_still_step():
    # the float32 sum of the buffer is inf; the exact check then finds every element finite: no skip
    params, eager, opt, ref = pair()
    steps(opt, params, range(2))
    steps(ref, eager, range(2))

    def huge(ps):
        ps[0].grad.fill_(3e38)
        ps[2].grad.fill_(3e38)

    steps(opt, params, [2], poison=huge)
    steps(ref, eager, [2], poison=huge)
    assert opt.skipped_steps == ref.skipped_steps == 0
    assert not torch.isfinite(opt._compiled.layouts[next(iter(opt._compiled.layouts))].grad.sum())
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_half_precision_gradients_are_summed_in_float32():
    # 60000 + 60000 overflows float16 but not the float32 sum: the step runs (no fallback is needed either)
    params, _, opt, _ = pair(dtype=torch.float16)
    steps(opt, params, range(2))
    calls = []
    exact = opt._gradients_finite
    opt._gradients_finite = lambda work: calls.append(1) or exact(work)
    steps(opt, params, [2], poison=lambda ps: [p.grad.fill_(60000.0) for p in ps])
    assert opt.skipped_steps == 0 and not calls
    steps(opt, params, [3], poison=lambda ps: ps[0].grad.view(-1)[0].fill_(float("nan")))
    assert opt.skipped_steps == 1 and calls


def test_nonfinite_raise_names_the_parameter_on_the_flat_path():
    params, _, opt, _ = pair(nonfinite="raise")
    steps(opt, params, range(2))
    before = snapshot(opt, params)
    with pytest.raises(FloatingPointError, match="parameter 2 of param group 0"):
        steps(opt, params, [2], poison=lambda ps: ps[2].grad.view(-1)[1].fill_(float("inf")))
    assert same(snapshot(opt, params), before)


class Mixed(gw.core.ChainOptimizer):
    """A step whose coefficients are a number, a flag and a tensor passed through (every packed kind)."""

    defaults = dict(lr=1e-2)

    def chain(self, h):
        scale = torch.tensor(0.5, dtype=torch.float64)

        def kernel(u, p, s, c):
            lr, flip, half = c
            p.add_(torch.where(torch.as_tensor(flip), -u, u) * (-lr * half))
            return u

        return (gw.core.kernel_transform(kernel, lambda t: (h.lr * t, t % 2 == 0, scale), writes=True,
                                         elementwise=True),)


def test_packed_coefficients_of_every_kind_match_eager_and_compile_once():
    params = make_params(torch.float64)
    eager = clone(params)
    torch._dynamo.utils.counters.clear()
    opt, ref = Mixed(params, compile="eager"), Mixed(eager)
    for k in range(6):
        for ps, o in ((params, opt), (eager, ref)):
            for group in o.param_groups:
                group["lr"] = 1e-2 / (k + 1)
            steps(o, ps, [k])
    assert opt._compiled.layouts and torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=0)


def test_packed_coefficients_land_where_the_graph_reads_them():
    from gradwise.core.compiled import PackedCoefficients, coefficient_pattern

    scale = torch.tensor(2.0)
    values = [(0.5, True), (scale,), (3, False, 1e-8)]
    packed = PackedCoefficients(coefficient_pattern(values), torch.float64, torch.device("cpu"))
    numbers, flags, tensors = packed(values)
    args = (numbers, flags, tensors)
    rebuilt = [tuple(args[arg][j] for arg, j in row) for row in packed.where]
    assert [[bool(x) if isinstance(v, bool) else float(x) for x, v in zip(r, c, strict=True)]
            for r, c in zip(rebuilt, values, strict=True)] == [[0.5, True], [2.0], [3.0, False, 1e-8]]
    assert rebuilt[1][0] is scale and numbers.dtype == torch.float64 and flags.dtype == torch.bool
    again = packed([(0.25, False), (scale,), (4, True, 0.0)])  # the same tensors, overwritten in place
    assert again[0] is numbers and numbers.tolist() == [0.25, 4.0, 0.0] and flags.tolist() == [False, True]
    with pytest.raises(ValueError):
        packed([(0.25,), (scale,), (4, True, 0.0)])
    # float32 parameters: float32 numbers, rounded as fill_ rounds them
    packed32 = PackedCoefficients(coefficient_pattern([(0.1,), (0.2,)]), torch.float32, torch.device("cpu"))
    assert packed32([(0.1,), (0.2,)])[0].tolist() == [torch.zeros((), dtype=torch.float32).fill_(x).item()
                                                       for x in (0.1, 0.2)]
    with pytest.raises(BufferError):  # a wrong number of values cannot move the memory the tensor views
        packed32([(0.1,), (0.2, 0.3)])


@pytest.mark.parametrize("replaced", [(1,), (0, 1, 2)])
def test_new_gradient_tensors_are_copied_in_and_become_views_again(replaced):
    # one gradient replaced (the pairs path) or every one (the set_to_none path: one copy for all)
    params, eager, opt, ref = pair()
    steps(opt, params, range(2))
    steps(ref, eager, range(2))
    layout = next(iter(opt._compiled.layouts.values()))

    def replace(ps):
        for i in replaced:
            ps[i].grad = ps[i].grad.clone() * 2

    steps(opt, params, [2, 3], poison=replace)
    steps(ref, eager, [2, 3], poison=replace)
    assert next(iter(opt._compiled.layouts.values())) is layout  # not gathered again
    assert all(p.grad is view for p, view in zip(layout.members, layout.grads, strict=True))
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def _replace_one_state_entry(ps, o):
    o.state[ps[1]]["exp_avg"] = o.state[ps[1]]["exp_avg"].clone() * 0.5


def _replace_one_step_count(ps, o):
    o.state[ps[2]]["step"] = o.state[ps[2]]["step"].clone()


def _move_the_last_state_to_another_key(ps, o):
    # the state's values stay the same objects in the same order; only the key of the last one changes: the last
    # parameter (its state was the last added) starts again from fresh state, as in eager
    o.state[torch.zeros(1)] = o.state.pop(ps[-1])


def _swap_data(ps, o):
    ps[0].data = ps[0].data.clone()


@pytest.mark.parametrize("change", [_replace_one_state_entry, _replace_one_step_count,
                                    _move_the_last_state_to_another_key, _swap_data])
def test_a_change_between_steps_is_seen_by_the_fast_path(change):
    # the fast path compares identities over precomputed lists; each change here must still reach eager's numbers
    params, eager, opt, ref = pair()
    steps(opt, params, range(3))
    steps(ref, eager, range(3))
    change(params, opt)
    change(eager, ref)
    steps(opt, params, range(3, 6))
    steps(ref, eager, range(3, 6))
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        for key, value in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][key], value, rtol=1e-6, atol=1e-7)


def _hooked_calls(opt, params):
    """The hooks that ran in one step(closure), in order, and the loss it returned."""
    calls = []
    handles = [
        opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", len(args)))),
        opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", len(args)))),
        register_optimizer_step_pre_hook(lambda o, args, kwargs: calls.append(("global pre",))),
    ]

    def closure():
        opt.zero_grad()
        with torch.enable_grad():
            loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    try:
        loss = opt.step(closure)
    finally:
        for handle in handles:
            handle.remove()
    return calls, float(loss.detach())


@pytest.mark.parametrize("name", ["adamw", "sps"])
def test_step_hooks_run_once_per_step(name):
    # ChainOptimizer.step runs torch.optim's step hooks itself (torch's wrapper is kept off it); a subclass that
    # overrides step (the Polyak optimizers) keeps torch's wrapper, and the hooks still run once
    params = make_params()
    calls, loss = _hooked_calls(gw.create(name, params), params)
    assert loss > 0
    assert calls == [("global pre",), ("pre", 2), ("post", 2)]


def test_a_pre_hook_may_replace_the_arguments_and_the_profiler_sees_the_step():
    opt = gw.AdamW(make_params(), lr=1e-2)
    handle = opt.register_step_pre_hook(lambda o, args, kwargs: ((args[0],), {"closure": lambda: torch.tensor(7.0)}))
    assert float(opt.step()) == 7.0
    handle.remove()
    with torch.profiler.profile() as prof:
        opt.step()
    assert any(event.name == "Optimizer.step#AdamW.step" for event in prof.events())


# -- the streamed sum of a large flat gradient buffer (under inductor on CPU from 24 MB on): forced here for small
# buffers under the "eager" backend, which runs the same graph without compiling code (inductor's C++ build would
# cost seconds a test)
@pytest.fixture
def streamed(monkeypatch):
    from gradwise.core import compiled

    monkeypatch.setattr(compiled, "STREAMED_MIN_BYTES", 0)
    monkeypatch.setattr(compiled, "STREAMED_BACKENDS", frozenset({"eager"}))
    monkeypatch.setattr(compiled, "_streamed", {})
    return compiled


def _inf_and_minus_inf(ps):
    ps[0].grad.view(-1)[3] = float("inf")
    ps[2].grad.view(-1)[5] = float("-inf")


POISONS = {
    "nan": lambda ps: ps[1].grad.view(-1).__setitem__(2, float("nan")),
    "+inf": lambda ps: ps[2].grad.view(-1).__setitem__(11, float("inf")),
    "-inf": lambda ps: ps[0].grad.view(-1).__setitem__(0, float("-inf")),
    "inf and -inf": _inf_and_minus_inf,
}


@pytest.mark.parametrize("bad", list(POISONS))
def test_the_streamed_sum_finds_every_nonfinite_gradient(streamed, bad):
    params, eager, opt, ref = pair()
    steps(opt, params, range(3))
    steps(ref, eager, range(3))
    assert list(streamed._streamed) == [("eager", torch.float32, 48)]  # the buffer took the streams
    skipped_then_matches(opt, ref, params, eager, POISONS[bad], range(4, 6))


@pytest.mark.parametrize("where", ["across streams", "within a stream"])
def test_a_streamed_sum_that_overflows_falls_back_to_the_exact_check(streamed, where):
    # the 48-element buffer is 4 streams of 12: parameters 0 and 2 start streams 0 and 2 (offsets 0 and 32), so
    # their elementwise sum overflows; parameter 0 alone overflows only in the final sum of its stream
    params, eager, opt, ref = pair()
    steps(opt, params, range(2))
    steps(ref, eager, range(2))
    calls = []
    exact = opt._gradients_finite
    opt._gradients_finite = lambda work: calls.append(1) or exact(work)

    def huge(ps):
        ps[0].grad.fill_(3e38)
        if where == "across streams":
            ps[2].grad.fill_(3e38)

    steps(opt, params, [2], poison=huge)
    steps(ref, eager, [2], poison=huge)
    assert calls and opt.skipped_steps == ref.skipped_steps == 0
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_the_streamed_sum_of_half_precision_is_taken_in_float32(streamed):
    params, _, opt, _ = pair(dtype=torch.float16)
    steps(opt, params, range(2))
    g = next(iter(opt._compiled.layouts.values())).grad
    g.fill_(60000.0)  # every element finite; a float16 sum overflows at the second, a float32 one never here
    total = streamed._buffer_sum(g, "eager")
    assert total.dtype == torch.float32 and torch.isfinite(total)
    assert list(streamed._streamed) == [("eager", torch.float16, 48)]  # the buffer took the streamed sum


@pytest.mark.parametrize("bad", ["nan", "inf and -inf"])
def test_nonfinite_raise_names_the_parameter_on_the_streamed_path(streamed, bad):
    params, _, opt, _ = pair(nonfinite="raise")
    steps(opt, params, range(2))
    before = snapshot(opt, params)
    expected = "parameter 1" if bad == "nan" else "parameter 0"
    with pytest.raises(FloatingPointError, match=f"{expected} of param group 0"):
        steps(opt, params, [2], poison=POISONS[bad])
    assert same(snapshot(opt, params), before)


def test_the_streamed_sums_compile_once_per_buffer_length(streamed):
    from torch._dynamo.utils import counters

    params = make_params()
    extra = [torch.randn(50, requires_grad=True)]  # a second group: a flat buffer of 64 elements beside the 48
    opt = gw.AdamW([{"params": params}, {"params": extra, "lr": 1e-3}], lr=1e-2, compile="eager")
    for k in range(20):
        opt.zero_grad()
        backward(params, k)
        (extra[0] ** 2).sum().backward()
        opt.step()
        if k == 1:
            graphs = counters["stats"]["unique_graphs"]
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled after the second step
    assert sorted(streamed._streamed, key=str) == [("eager", torch.float32, 48), ("eager", torch.float32, 64)]
    assert len(opt._compiled.layouts) == 2


def test_a_streamed_sum_that_fails_to_compile_falls_back_to_the_eager_sum(streamed, monkeypatch):
    def broken(dtype):
        def streamed_sum(g):
            torch._dynamo.graph_break()  # fullgraph=True: compiling raises
            return g.sum()

        return streamed_sum

    monkeypatch.setattr(streamed, "_streamed_sum_function", broken)
    params, eager, opt, ref = pair()
    with pytest.warns(UserWarning, match="the non-finite check sums eagerly") as record:
        steps(opt, params, range(2))
    assert record[0].filename == __file__  # attributed to the caller of step()
    steps(ref, eager, range(2))
    assert streamed._streamed == {("eager", torch.float32, 48): None}
    steps(opt, params, [2], poison=POISONS["nan"])
    assert opt.skipped_steps == 1
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
