"""compile= with state_bits=8: the flat path (gradwise.core.compiled_state) gives the eager 8-bit step's codes and
scales, keeps state_dict in the per-parameter 8-bit form, and moves checkpoints between compiled and eager.

The chains run under dynamo's "eager" backend (traced into one graph over the whole bucket, then run op by op),
which keeps the file fast and makes the numbers those of the eager ops: codes equal bit for bit. Inductor
(marked slow) fuses the chain, whose float results may differ from eager's by an ulp (lerp becomes an fma), so
a value on the edge between two codes may round the other way: there, codes may differ by one step, rarely."""

from __future__ import annotations

import pytest
import torch

import gradwise as gw
import gradwise.state  # noqa: F401  (registers state_bits)
from checkpoint_io import roundtrip
from eight_bit_problem import EIGHT_BIT, layouts, parameters, run
from gradwise.core import compiled_state
from gradwise.core.compiled_state import QuantizedLayout
from gradwise.state import native

NAMES = ["adamw", "adabelief", "adan"]
BIG = [(40, 30), (1000,), (333, 3), (256,)]


def make(name, params, compile=False):
    return gw.create(name, params, lr=1e-2, weight_decay=0.1, compile=compile, **EIGHT_BIT)


def assert_same_state(a, b, exact_codes=True):
    for pa, pb in zip(a.param_groups[0]["params"], b.param_groups[0]["params"], strict=True):
        sa, sb = a.state[pa], b.state[pb]
        assert set(sa) == set(sb)
        for key, va in sa.items():
            vb = sb[key]
            assert va.dtype == vb.dtype and va.shape == vb.shape, key
            if va.dtype == torch.uint8:
                if exact_codes:
                    assert torch.equal(va, vb), key
                else:  # one step apart at most, and rarely
                    differ = va != vb
                    assert int(differ.sum()) <= max(2, va.numel() // 1000), key
                    assert int((va.int() - vb.int()).abs().max()) <= 1, key
            else:
                assert torch.allclose(va, vb, rtol=1e-5, atol=1e-7), key


def copy_into(params, source):
    with torch.no_grad():
        for p, q in zip(params, source, strict=True):
            p.copy_(q)


def assert_same_params(a, b):
    for p, q in zip(a, b, strict=True):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_flat_8_bit_steps_equal_eager_ones_and_checkpoints_move_both_ways(name):
    """20 steps: 10 compiled, then eager resumes from the compiled checkpoint and runs 5 (compared with eager
    run alongside), then the compiled optimizer resumes from eager's checkpoint for 5 more."""
    eager_params, flat_params = parameters(shapes=BIG), parameters(shapes=BIG)
    eager, flat = make(name, eager_params), make(name, flat_params, compile="eager")
    run(eager, eager_params, 10)
    run(flat, flat_params, 10)
    (layout,) = layouts(flat)  # one bucket: every parameter with at least state_min_size elements
    assert [tuple(p.shape) for p in layout.members] == BIG
    assert_same_state(eager, flat)
    assert_same_params(eager_params, flat_params)
    # views of one flat buffer per key: every parameter starts on a block boundary of it
    codes = layout.codes["exp_avg"]
    for p, offset in zip(layout.members, (0, 1216, 2240, 3264), strict=True):
        assert flat.state[p]["exp_avg"].data_ptr() == codes.data_ptr() + offset
        assert p.data_ptr() == layout.param.data_ptr() + 4 * offset
    # state_dict: the per-parameter 8-bit form, exactly
    saved = roundtrip(flat.state_dict())
    for i, p in enumerate(flat_params):
        assert set(saved["state"][i]) == set(flat.state[p])
        for key, value in flat.state[p].items():
            assert torch.equal(saved["state"][i][key], value), key
    assert saved["state"][0]["exp_avg"].shape == (40, 30) and saved["state"][0]["exp_avg_absmax"].shape == (19,)
    # eager resumes the compiled run
    resumed_params = [p.detach().clone().requires_grad_() for p in flat_params]
    resumed = make(name, resumed_params)
    resumed.load_state_dict(saved)
    run(resumed, resumed_params, 5, start=10)
    run(eager, eager_params, 5, start=10)
    assert_same_state(eager, resumed)
    # the compiled optimizer resumes eager's run: the buffers are gathered again
    flat.load_state_dict(roundtrip(resumed.state_dict()))
    copy_into(flat_params, resumed_params)
    run(flat, flat_params, 5, start=15)
    run(eager, eager_params, 5, start=15)
    assert len(layouts(flat)) == 1 and layouts(flat)[0] is not layout
    assert_same_state(eager, flat)
    assert_same_params(eager_params, flat_params)
    assert all(float(flat.state[p]["step"]) == 20 for p in flat_params)


@pytest.mark.parametrize("name", NAMES)
def test_a_bucket_in_several_chunks_steps_as_eager(name, monkeypatch):
    """Chunks of 3 blocks (the bucket holds 55 blocks: two empty ones complete the last chunk), each its
    own compiled call over views of the same buffers."""
    monkeypatch.setattr(compiled_state, "_CHUNK_VALUES", 3 * 64)
    eager_params, flat_params = parameters(shapes=BIG), parameters(shapes=BIG)
    eager, flat = make(name, eager_params), make(name, flat_params, compile="eager")
    run(eager, eager_params, 6)
    run(flat, flat_params, 6)
    (layout,) = layouts(flat)
    assert layout.chunk == 3 and len(layout.chunks) == 19 and layout.param.numel() == 57 * 64
    assert float(layout.valid[-1]) == 0 and float(layout.absmax["exp_avg"][-1]) == 0
    assert_same_state(eager, flat)
    assert_same_params(eager_params, flat_params)


def test_small_tensors_keep_32_bit_state_on_the_per_parameter_path():
    eager_params, flat_params = parameters(), parameters()
    eager, flat = make("adamw", eager_params), make("adamw", flat_params, compile="eager")
    run(eager, eager_params, 3)
    run(flat, flat_params, 3)
    assert flat.state[flat_params[2]]["exp_avg"].dtype == torch.float32
    assert all(p is not flat_params[2] for p in layouts(flat)[0].members)
    assert_same_state(eager, flat)
    assert_same_params(eager_params, flat_params)


def test_a_32_bit_checkpoint_takes_the_eager_rule_on_its_first_8_bit_step():
    """Floats loaded under quantized keys are used unrounded for one step (the per-parameter path), then the
    bucket is laid out flat."""
    full_params = parameters()
    full = gw.create("adamw", full_params, lr=1e-2)
    run(full, full_params, 3)
    saved = roundtrip(full.state_dict())
    runs = []
    for compile in (False, "eager"):
        params = [p.detach().clone().requires_grad_() for p in full_params]
        opt = make("adamw", params, compile=compile)
        opt.load_state_dict(saved)
        for group in opt.param_groups:
            group.update(EIGHT_BIT)
        run(opt, params, 4, start=3)
        runs.append((opt, params))
    (eager, eager_params), (flat, flat_params) = runs
    assert len(layouts(flat)) == 1
    assert_same_state(eager, flat)


def test_parameters_without_a_gradient_leave_the_bucket_and_keep_their_state():
    params = parameters(shapes=BIG)
    opt = make("adamw", params, compile="eager")
    reference_params = parameters(shapes=BIG)
    reference = make("adamw", reference_params)
    for ps, o in ((params, opt), (reference_params, reference)):
        run(o, ps, 3)
        o.zero_grad()
        (ps[0] ** 2).sum().backward()  # the others have no gradient
        o.step()
        run(o, ps, 2, start=4)
    assert_same_state(reference, opt)
    assert opt.state[params[1]]["step"] == 5 and opt.state[params[0]]["step"] == 6
    # one layout per step count: both flat
    assert sorted(len(layout.members) for layout in layouts(opt)) == [1, 3]


def test_a_non_contiguous_parameter_runs_per_parameter_and_the_others_stay_flat():
    eager_params, flat_params = parameters(shapes=BIG), parameters(shapes=BIG)
    for params in (eager_params, flat_params):
        params[0] = params[0].detach().t().requires_grad_()  # (30, 40), not contiguous
    eager, flat = make("adamw", eager_params), make("adamw", flat_params, compile="eager")
    run(eager, eager_params, 3)
    run(flat, flat_params, 3)
    (layout,) = layouts(flat)
    assert len(layout.members) == 3 and all(p is not flat_params[0] for p in layout.members)
    assert_same_state(eager, flat)
    assert_same_params(eager_params, flat_params)


def test_eligibility_needs_one_step_count_and_scales_that_fit_the_block():
    params = parameters()[:2]
    states = [{"step": torch.tensor(float(i)), "exp_avg_sq": torch.zeros(p.shape, dtype=torch.uint8),
               "exp_avg_sq_absmax": torch.zeros(-(-p.numel() // 64))} for i, p in enumerate(params)]
    assert QuantizedLayout.eligible(params, states, 64) is None
    states[1]["step"] = torch.tensor(0.0)
    assert QuantizedLayout.eligible(params, states, 64) == ((("exp_avg_sq", False),), 0.0)
    states[1]["exp_avg_sq_absmax"] = torch.zeros(3)  # a count of scales that does not fit the block
    assert QuantizedLayout.eligible(params, states, 64) is None
    states[1]["exp_avg_sq_absmax"] = torch.zeros(16)
    states[1]["exp_avg_sq"] = torch.zeros(params[1].shape)  # floats (a 32-bit checkpoint): not yet
    assert QuantizedLayout.eligible(params, states, 64) is None


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_inductor_flat_8_bit_step_is_the_eager_step_up_to_rare_one_step_codes(name):
    # inductor's generated code, not the native kernel that compile=True takes where it builds
    # (tests/state/test_state_native.py)
    with native.disabled():
        eager_params, flat_params = parameters(), parameters()
        eager, flat = make(name, eager_params), make(name, flat_params, compile=True)
        for k in range(20):  # each step from the same state: the comparison does not compound
            run(flat, flat_params, 1, start=k)
            run(eager, eager_params, 1, start=k)
            assert_same_state(eager, flat, exact_codes=False)
            for p, q in zip(eager_params, flat_params, strict=True):
                assert torch.allclose(p, q, rtol=1e-5, atol=1e-4)
            eager.load_state_dict(roundtrip(flat.state_dict()))
            with torch.no_grad():
                for p, q in zip(eager_params, flat_params, strict=True):
                    p.copy_(q)
        assert len(layouts(flat)) == 1
        functions = flat._compiled._gradwise_quantized.functions  # inductor compiled the step (none failed)
        assert functions and all(fn is not None for fn in functions.values())


def test_invalidate_drops_the_8_bit_layouts_too_and_the_next_step_gathers_again():
    # CompiledStep.invalidate (load_state_dict, state growth) must forget this path's layouts as well as the
    # 32-bit ones: a kept layout would still view the state dicts it was built from
    eager_params, flat_params = parameters(), parameters()
    eager, flat = make("adamw", eager_params), make("adamw", flat_params, compile="eager")
    run(eager, eager_params, 2)
    run(flat, flat_params, 2)
    before = layouts(flat)
    assert before
    flat._compiled.invalidate()
    assert layouts(flat) == []
    run(eager, eager_params, 2, start=2)
    run(flat, flat_params, 2, start=2)
    after = layouts(flat)
    assert after and not any(a is b for a in after for b in before)
    assert_same_state(eager, flat)
    assert_same_params(eager_params, flat_params)
