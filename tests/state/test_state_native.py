"""The native fused 8-bit step (gradwise.state.native, _native8bit.c).

Its decoding and rounding are checked bit for bit against the eager quantizer (`quantize_rows`,
`dequantize_rows`) on every code and on adversarial values (ties between codes, one float32 step either side,
zeros of both signs, non-finite blocks, every decade), through the kernel's test ops "set" (s <- u) and "get"
(p <- s). The vector build is compared bit for bit with a build without -march=native (the scalar code), and
runs with several threads with one thread. Whole optimizers under compile=True take the kernel (no inductor
compile) and stay with the eager 8-bit step up to the rare one-step code difference that inductor's code
also shows; a resumed native run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import pytest
import torch

import gradwise as gw
import gradwise.state  # noqa: F401  (registers state_bits)
from checkpoint_io import roundtrip
from eight_bit_problem import EIGHT_BIT, layouts, parameters, quantized, run
from gradwise.core import compiled_state
from gradwise.core.engine import hyper_parameters
from gradwise.optim.adopt import ADOPT
from gradwise.state import native

quantize = importlib.import_module("gradwise.state.quantize")  # the package exports a function of that name

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not native.available(), reason=f"native kernel not built: {native.build_error()}"),
]


def op(name, *keys, coefficients=()):
    """A stand-in transform that carries only a native form."""
    return SimpleNamespace(native=(name, *keys), coefficients=lambda t: coefficients)


def native_round(rows, signed, valid=None, lib=None, threads=1):
    """Codes and scales of float32 `rows` (blocks, block) by the kernel: s <- u, then the block's re-quantization."""
    blocks, block = rows.shape
    codes = torch.full((blocks * block,), 127 if signed else 0, dtype=torch.uint8)
    absmax = torch.zeros(blocks)
    valid = torch.full((blocks,), block, dtype=torch.int32) if valid is None else valid
    ops, count = native.program([op("set", "s")], ["s"], 1)
    native.run_program(ops, count, torch.zeros(blocks * block), rows.reshape(-1).contiguous(), [codes], [absmax],
                       [signed], valid, block, maximize=False, threads=threads, lib=lib)
    return codes.view(blocks, block), absmax


def native_decode(codes, absmax, signed, lib=None):
    """The kernel's decoded values of (blocks, block) codes: p <- s."""
    blocks, block = codes.shape
    param = torch.zeros(blocks * block)
    ops, count = native.program([op("get", "s")], ["s"], 1)
    native.run_program(ops, count, param, torch.zeros(blocks * block), [codes.reshape(-1).clone()], [absmax.clone()],
                       [signed], torch.full((blocks,), block, dtype=torch.int32), block, maximize=False, lib=lib)
    return param.view(blocks, block)


def assert_rounds_as_eager(rows, signed):
    codes, absmax = native_round(rows, signed)
    expected_codes, expected_absmax = quantize.quantize_rows(rows, signed)
    assert torch.equal(absmax, expected_absmax)
    assert torch.equal(codes, expected_codes), int((codes != expected_codes).sum())


def adversarial(signed, block):
    """Blocks of values that probe the rounding: every code, every tie and the float32 numbers either side of
    it, random values in every decade; each block holds 1.0 so that its values are the normalized ones."""
    values, midpoints = quantize._tables(signed, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    up, down = torch.tensor(2.0), torch.tensor(-2.0)
    x = torch.cat([
        values, midpoints, -midpoints,
        torch.nextafter(midpoints, up), torch.nextafter(midpoints, down),
        -torch.nextafter(midpoints, up), -torch.nextafter(midpoints, down),
        torch.rand(20_000, generator=g) * 2 - 1,
        (torch.rand(20_000, generator=g) * 2 - 1) * torch.logspace(-12, 0, 20_000),
        torch.tensor([0.0, -0.0, 1e-45, -1e-45, 5e-8, -5e-8, 4.9e-8, 2.0**-30, 2.0**-31]),
    ]).clamp(-1.0, 1.0)
    per_block = block - 1
    x = torch.cat([x, torch.zeros(-len(x) % per_block)]).view(-1, per_block)
    return torch.cat([torch.ones(len(x), 1), x], dim=1)  # absmax 1 in every block


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("block", [256, 100, 7])  # 100 and 7: the scalar tail after the 16-value vectors
def test_rounding_gives_the_eager_codes_and_scales_bit_for_bit(signed, block):
    rows = adversarial(signed, block)
    for scale in (1.0, 3.7, 2.0**-20):  # exact ties at 1; at other scales the division moves them
        assert_rounds_as_eager(rows * scale, signed)


@pytest.mark.parametrize("signed", [True, False])
def test_a_million_random_values_round_as_eager(signed):
    # every block its own scale and spread: heavy tails put values in every decade
    g = torch.Generator().manual_seed(6)
    assert_rounds_as_eager(torch.randn(4096, 256, generator=g) ** 3 * torch.logspace(-20, 20, 4096).view(-1, 1),
                           signed)


@pytest.mark.parametrize("signed", [True, False])
def test_zero_constant_and_non_finite_blocks_round_as_eager(signed):
    block = 32
    nan, inf = float("nan"), float("inf")
    rows = torch.randn(8, block, generator=torch.Generator().manual_seed(2))
    rows[0] = 0.0
    rows[1] = -0.0
    rows[2] = 0.25  # constant
    rows[3, 5] = nan
    rows[4, 0] = inf
    rows[5, 31] = -inf
    rows[6, 3], rows[6, 4] = inf, -inf
    rows[7] = -rows[7].abs()  # all negative: unsigned codes are all 0, its absmax is still taken
    codes, absmax = native_round(rows, signed)
    expected_codes, expected_absmax = quantize.quantize_rows(rows, signed)
    assert torch.equal(absmax.isnan(), expected_absmax.isnan()) and absmax[3:7].isnan().all()
    assert torch.equal(absmax.nan_to_num(), expected_absmax.nan_to_num())
    assert torch.equal(codes, expected_codes)


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("size", [1e-39, 1e-40, 8e-45, 3e-39, 1.2e-38, 3e38])
def test_blocks_of_denormal_or_huge_values_round_as_eager(signed, size):
    # below 2^-128 the reciprocal of the absmax overflows: such blocks take the table's rule on the quotient
    rows = (torch.rand(4, 32, generator=torch.Generator().manual_seed(7)) * 2 - 1) * size
    rows[:, 0] = size
    assert_rounds_as_eager(rows, signed)


def test_the_padding_of_a_block_rounds_as_zero():
    rows = torch.randn(3, 64, generator=torch.Generator().manual_seed(3)) * 5
    valid = torch.tensor([64, 10, 0], dtype=torch.int32)  # the last block is empty: left alone
    codes, absmax = native_round(rows, True, valid=valid)
    expected = rows.clone()
    expected[1, 10:] = 0
    expected_codes, expected_absmax = quantize.quantize_rows(expected[:2], True)
    assert torch.equal(codes[:2], expected_codes) and torch.equal(absmax[:2], expected_absmax)
    assert (codes[2] == 127).all() and absmax[2] == 0  # as it was


@pytest.mark.parametrize("signed", [True, False])
def test_decoding_every_code_gives_the_eager_values(signed):
    codes = torch.arange(256, dtype=torch.uint8).repeat(4).view(4, 256)
    absmax = torch.tensor([1.0, 0.37, 3e5, 1e-30])
    decoded = native_decode(codes, absmax, signed)
    expected = quantize.dequantize_rows(codes, absmax, signed)
    assert torch.equal(decoded.isnan(), expected.isnan())  # the signed map's unused code 255
    assert torch.equal(decoded.nan_to_num(), expected.nan_to_num())


def test_the_vector_build_equals_the_portable_build_bit_for_bit():
    portable, error = native.load(native._FLAGS)  # without -march=native: plain C loops, no AVX2
    assert portable is not None, error
    vector = native.library()
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        has_avx2 = " avx2" in f.read()
    assert vector.gw8_vectorised() == int(has_avx2)  # on such a CPU the tests above ran the vector code
    for signed in (True, False):
        rows = adversarial(signed, 256) * 0.9
        a, b = native_round(rows, signed, lib=vector), native_round(rows, signed, lib=portable)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        codes = torch.randint(0, 256, (16, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
        scales = torch.rand(16) + 0.1
        x, y = native_decode(codes, scales, signed, lib=vector), native_decode(codes, scales, signed, lib=portable)
        assert torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num())


def test_the_kernel_joins_torchs_openmp_runtime_instead_of_starting_its_own():
    if not native._torch_openmp():
        pytest.skip("torch does not run on a libgomp.so.1 here: the kernel uses POSIX threads")
    assert native.library().gw8_openmp() == 1
    with open("/proc/self/maps", encoding="utf-8") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    # the kernel asks for libgomp.so.1: one object of that name in the process, the one torch loaded before it
    # (other packages may bring their own OpenMP under other names, e.g. scikit-learn's libgomp-<hash>.so)
    gomp = {p for p in paths if os.path.basename(p) == "libgomp.so.1"}
    torch_lib = os.path.dirname(torch.__file__)
    assert len(gomp) == 1
    torch_gomp = [p for p in paths if p.startswith(torch_lib) and "gomp" in os.path.basename(p)]
    assert not torch_gomp or torch_gomp == list(gomp)  # a wheel that bundles it: that very file


def test_a_step_does_not_depend_on_the_number_of_threads():
    blocks, block = 40, 128
    g = torch.Generator().manual_seed(5)
    grad = torch.randn(blocks * block, generator=g)
    start = torch.randn(blocks * block, generator=g)
    m_codes, m_scale = quantize.quantize(torch.randn(blocks * block, generator=g) * 0.1, block, True)
    v_codes, v_scale = quantize.quantize(torch.rand(blocks * block, generator=g) * 0.01, block, False)
    adamw = gw.create("adamw", [torch.zeros(1, requires_grad=True)], lr=1e-2, weight_decay=0.1)
    chain = adamw.chain(hyper_parameters(adamw.param_groups[0]))
    ops, count = native.program(chain, ["exp_avg", "exp_avg_sq"], 3)
    posix, error = native.load((*native._FLAGS, *native._NATIVE_FLAGS))  # POSIX threads instead of OpenMP
    assert posix is not None and not posix.gw8_openmp(), error
    results = []
    for threads, lib in ((1, None), (3, None), (8, None), (3, posix)):
        p, mc, ms, vc, vs = start.clone(), m_codes.clone(), m_scale.clone(), v_codes.clone(), v_scale.clone()
        native.run_program(ops, count, p, grad, [mc, vc], [ms, vs], [True, False],
                           torch.full((blocks,), block, dtype=torch.int32), block, maximize=False, threads=threads,
                           lib=lib)
        results.append((p, mc, ms, vc, vs))
    assert not torch.equal(results[0][0], start)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


CONFIGS = [
    ("adamw", {}),
    ("adamw", dict(amsgrad=True)),
    ("adamw", dict(maximize=True)),
    ("adamw", dict(weight_decay=0.0)),
    ("adam", dict(weight_decay=0.1)),  # the L2 penalty: u + wd p
    ("adabelief", {}),
    ("adabelief", dict(rectify=True)),
    ("adabelief", dict(rectify=False, amsgrad=True)),
    ("adan", {}),
    ("adan", dict(no_prox=True)),
    ("adan", dict(max_grad_norm=0.5)),
    ("lion", {}),
    ("signum", {}),
    ("sgd", dict(momentum=0.9)),
    ("sgd", dict(momentum=0.9, dampening=0.5)),
    ("sgdw", dict(momentum=0.8, nesterov=True)),
    ("nag", {}),
    ("nag", dict(maximize=True, weight_decay=0.0)),
    ("adopt", {}),  # coupled decay, clipped
    ("adopt", dict(clip_exp=None)),
    ("adopt", dict(decouple=True, clip_exp=0.0)),  # decay from the second step on; the clip at 1
    ("ademamix", {}),  # weight decay inside the step
    ("ademamix", dict(weight_decay=0.0, alpha_warmup=20, beta3_warmup=30)),
    ("adabound", dict(final_lr=0.01, gamma=0.1)),  # a band that clips from the first steps
    ("adabound", dict(gamma=0.0)),  # the open band [0, inf)
    ("amsbound", dict(final_lr=0.01, gamma=0.1)),
    ("diffgrad", {}),
    ("diffgrad", dict(weight_decay=0.0, maximize=True)),
]
@pytest.fixture
def native_calls(monkeypatch):
    """The kernel's calls (`native.Bound.__call__`, through which every step on the kernel goes), counted."""
    calls = []
    real = native.Bound.__call__

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(native.Bound, "__call__", counted)
    return calls


@pytest.mark.parametrize(("name", "extra"), CONFIGS, ids=[f"{n}-{'-'.join(e) or 'default'}" for n, e in CONFIGS])
def test_compiled_8_bit_optimizers_run_the_kernel_and_follow_the_eager_step(name, extra, native_calls):
    lr = 1e-3 if name == "lion" else 1e-2
    kwargs = dict(lr=lr, **EIGHT_BIT, **({"weight_decay": 0.1} | extra))
    eager_params, flat_params = parameters(), parameters()
    eager = gw.create(name, eager_params, **kwargs)
    flat = gw.create(name, flat_params, compile=True, **kwargs)
    differing = total = 0
    for k in range(12):  # each step from the same state: the comparison does not compound
        run(flat, flat_params, 1, start=k)
        run(eager, eager_params, 1, start=k)
        for p, q in zip(eager_params, flat_params, strict=True):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), (k, float((p - q).abs().max()))
            for key, value in eager.state[p].items():
                other = flat.state[q][key]
                if value.dtype == torch.uint8:
                    step_apart = (value.int() - other.int()).abs()
                    assert int(step_apart.max()) <= 1, key
                    differing += int((step_apart > 0).sum())
                    total += value.numel()
                else:
                    assert torch.allclose(value, other, rtol=1e-5, atol=1e-7), key
        eager.load_state_dict(roundtrip(flat.state_dict()))
        with torch.no_grad():
            for p, q in zip(eager_params, flat_params, strict=True):
                p.copy_(q)
    assert len(native_calls) == 12  # one call a step for the bucket
    assert not quantized(flat).functions  # nothing was compiled by inductor
    assert total > 0 and differing <= max(2, total // 1000)


def test_the_kernels_writes_move_autograds_version_counters(native_calls):
    # the kernel writes memory behind torch's back; autograd must see it as it sees an in-place op, so that a
    # tensor saved for backward and then overwritten by the step raises instead of giving a silent wrong grad
    params = parameters()
    opt = gw.create("adamw", params, lr=1e-2, compile=True, **EIGHT_BIT)
    run(opt, params, 1)
    big = params[0]
    product = (big * big).sum()  # saves `big` for backward
    state = opt.state[big]
    versions = big._version, state["exp_avg"]._version, state["exp_avg_absmax"]._version
    opt.step()
    assert len(native_calls) == 2  # both steps ran on the kernel
    assert big._version > versions[0]
    assert state["exp_avg"]._version > versions[1] and state["exp_avg_absmax"]._version > versions[2]
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.backward()


def test_inductors_8_bit_code_moves_the_parameters_version_counters_too(monkeypatch, native_calls):
    monkeypatch.setattr(compiled_state.torch, "compile", lambda fn, **kwargs: fn)  # run uncompiled: no build
    params = parameters()
    with native.disabled():
        opt = gw.create("adamw", params, lr=1e-2, compile=True, **EIGHT_BIT)
        run(opt, params, 1)
        product = (params[0] * params[0]).sum()
        before = params[0]._version
        opt.step()
    assert not native_calls and quantized(opt).functions
    assert params[0]._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        product.backward()


def test_other_backends_keep_the_compiled_function(native_calls):
    # the kernel stands in for inductor's code only: "eager" and "aot_eager" trace the eager ops (exact codes)
    params = parameters()
    opt = gw.create("adamw", params, lr=1e-2, compile="eager", **EIGHT_BIT)
    run(opt, params, 2)
    assert not native_calls and quantized(opt).functions and not quantized(opt).native


def test_parameters_with_different_step_counts_and_a_reload_stay_on_the_kernel(native_calls):
    # a parameter without a gradient misses steps: its step count differs and it gets its own layout; loading a
    # state dict into the running optimizer gathers the buffers again. Compared with eager all along.
    eager_params, flat_params = parameters(), parameters()
    eager = gw.create("adamw", eager_params, lr=1e-2, **EIGHT_BIT)
    flat = gw.create("adamw", flat_params, lr=1e-2, compile=True, **EIGHT_BIT)
    for opt, params in ((eager, eager_params), (flat, flat_params)):
        run(opt, params, 2)
        params[1].requires_grad_(False)  # (1000,) misses the next two steps
        run(opt, params[:1] + params[2:], 2, start=2)
        params[1].requires_grad_(True)
        run(opt, params, 2, start=4)
    assert len(layouts(flat)) == 2  # two step counts
    flat.load_state_dict(roundtrip(flat.state_dict()))
    run(flat, flat_params, 2, start=6)
    run(eager, eager_params, 2, start=6)
    assert len(native_calls) == 2 + 2 + 2 * 2 + 2 * 2  # one call per layout and step
    for p, q in zip(eager_params, flat_params, strict=True):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)
        for key, value in eager.state[p].items():
            other = flat.state[q][key]
            if value.dtype == torch.uint8:
                assert int((value.int() - other.int()).abs().max()) <= 1, key
            else:
                assert torch.allclose(value, other, rtol=1e-5, atol=1e-7), key
    assert float(flat.state[flat_params[1]]["step"]) == 6 and float(flat.state[flat_params[0]]["step"]) == 8


def test_a_resumed_native_run_repeats_an_uninterrupted_one_exactly(native_calls):
    straight_params, resumed_params = parameters(), parameters()
    straight = gw.create("adan", straight_params, lr=1e-2, compile=True, **EIGHT_BIT)
    first = gw.create("adan", resumed_params, lr=1e-2, compile=True, **EIGHT_BIT)
    run(straight, straight_params, 15)
    run(first, resumed_params, 8)
    saved = roundtrip(first.state_dict())
    second = gw.create("adan", resumed_params, lr=1e-2, compile=True, **EIGHT_BIT)
    second.load_state_dict(saved)
    run(second, resumed_params, 7, start=8)
    assert len(native_calls) == 15 + 8 + 7 and not quantized(second).functions  # all on the kernel
    for p, q in zip(straight_params, resumed_params, strict=True):
        assert torch.equal(p, q)
        for key, value in straight.state[p].items():
            assert torch.equal(value, second.state[q][key]), key


def test_a_chain_without_a_native_form_keeps_inductors_path(monkeypatch, native_calls):
    # ADOPT with its momentum's native op taken away: the kernel is not used, the compiled function is (run
    # uncompiled here: torch.compile is replaced by the identity, so that the test needs no inductor build)
    monkeypatch.setattr(compiled_state.torch, "compile", lambda fn, **kwargs: fn)
    adopt_chain = ADOPT.chain
    monkeypatch.setattr(ADOPT, "chain", lambda self, h: tuple(
        tr._replace(native=None) if tr.native and tr.native[0].startswith("adopt") else tr
        for tr in adopt_chain(self, h)))
    params = parameters()
    opt = gw.create("adopt", params, lr=1e-2, compile=True, **EIGHT_BIT)
    with pytest.raises(native.NativeUnsupported, match="without a native form"):
        native.program(opt.chain(hyper_parameters(opt.param_groups[0])), ["exp_avg", "exp_avg_sq"], 1)
    run(opt, params, 2)
    assert not native_calls and quantized(opt).functions and set(quantized(opt).native.values()) == {False}


def test_switched_off_the_compiled_step_uses_inductors_code(monkeypatch, native_calls):
    monkeypatch.setattr(compiled_state.torch, "compile", lambda fn, **kwargs: fn)
    with native.disabled():
        assert not native.available()
        eager_params, flat_params = parameters(), parameters()
        eager = gw.create("adamw", eager_params, lr=1e-2, **EIGHT_BIT)
        flat = gw.create("adamw", flat_params, lr=1e-2, compile=True, **EIGHT_BIT)
        run(eager, eager_params, 3)
        run(flat, flat_params, 3)
    assert native.available()  # the previous setting is back
    assert not native_calls and quantized(flat).functions
    for p, q in zip(eager_params, flat_params, strict=True):  # the uncompiled function is the eager arithmetic
        assert torch.equal(p, q)


def test_a_program_refuses_unknown_ops_missing_keys_and_too_many_coefficients():
    with pytest.raises(native.NativeUnsupported, match="without a native form"):
        native.program([SimpleNamespace(native=None, coefficients=None)], ["s"], 1)
    with pytest.raises(native.NativeUnsupported, match="unknown native op"):
        native.program([op("nope")], ["s"], 1)
    with pytest.raises(native.NativeUnsupported, match="not in the layout"):
        native.program([op("lerp", "exp_avg")], ["s"], 1)
    with pytest.raises(native.NativeUnsupported, match="more than 8"):
        native.program([op("decay_p", coefficients=(1.0,) * 9)], ["s"], 1)


def test_the_empty_blocks_that_complete_the_last_chunk_are_not_handed_to_the_kernel(monkeypatch, native_calls):
    # inductor's path pads a bucket to whole chunks; the kernel's threads share only the blocks that hold values
    monkeypatch.setattr(compiled_state, "_CHUNK_VALUES", 3 * 64)
    params = parameters(shapes=[(40, 30), (1000,), (333, 3), (256,)])
    opt = gw.create("adamw", params, lr=1e-2, compile=True, **EIGHT_BIT)
    run(opt, params, 2)
    (layout,) = layouts(opt)
    assert layout.param.numel() == 57 * 64 and len(native_calls) == 2
    assert layout.native_call.blocks == 55  # 19 + 16 + 16 + 4 blocks of 64
