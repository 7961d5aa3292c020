"""Per-parameter (segment) reductions: on a flat buffer they equal the reductions of each tensor, and the
chains that use them (the cautious mask, AdamP/SGDP's radial projection) run compiled on the flat path with
eager's numbers, across every re-gather of the buffers (load_state_dict, a new param group, a parameter
without gradient)."""

from __future__ import annotations

import warnings

import pytest
import torch

import gradwise as gw
from gradwise.core.compiled import ALIGN, FlatLayout
from gradwise.core.segments import (
    COLUMN_FACTOR,
    FACTOR_COLUMNS,
    FACTOR_GATHERS,
    FACTOR_ROWS,
    FULL_FACTOR,
    ROW_FACTOR,
    ROW_IDS,
    SEGMENT_IDS,
    SEGMENT_VALID,
    factor_layout,
    factor_shapes,
    row_layout,
    row_sums,
    rows_to_elements,
    rows_to_params,
    segment_layout,
    segment_mean,
    segment_norm,
    segment_numel,
    segment_sum,
)

SHAPES = [(4, 3), (5,), (1,), (3, 3, 2)]


@pytest.mark.parametrize("shapes", [SHAPES, [(4, 8), (48,), (2, 2, 4)]])  # padded, and blocks all full
def test_segment_reductions_on_a_flat_buffer_equal_per_tensor_reductions(shapes):
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    sizes = [t.numel() for t in tensors]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // ALIGN) * ALIGN
    flat = torch.randn(total, generator=g, dtype=torch.float64) * 100  # padding holds garbage: ignored
    for t, off, n in zip(tensors, offsets, sizes, strict=True):
        flat[off : off + n] = t.reshape(-1)
    for block in (ALIGN, 1):  # blocks of ALIGN elements as the engine lays them out, and single elements
        s = segment_layout(sizes, offsets, total, flat.device, block)
        assert s[SEGMENT_IDS].shape == (total // ALIGN,)  # single elements: grown to the largest block allowed
        assert (SEGMENT_VALID in s) == (total > sum(sizes))  # the mask of partial blocks, only where needed
        check_reductions(flat, tensors, offsets, s)
    # eager: exactly the plain reductions, bit for bit
    t = tensors[0]
    assert torch.equal(segment_sum(t, {}), t.sum()) and torch.equal(segment_mean(t, {}), t.mean())
    assert torch.equal(segment_norm(t, {}), torch.linalg.vector_norm(t)) and segment_numel(t, {}) == t.numel()


def check_reductions(flat, tensors, offsets, s):
    for reduce in (segment_sum, segment_mean, segment_norm, segment_numel):
        whole = reduce(flat, s)
        assert whole.shape == flat.shape
        for t, off in zip(tensors, offsets, strict=True):
            n = t.numel()
            expected = torch.as_tensor(reduce(t, {}), dtype=torch.float64)
            assert expected.dim() == 0  # eager: the plain reduction of the tensor
            torch.testing.assert_close(whole[off : off + n], expected.expand(n), rtol=1e-13, atol=1e-13)


def make_params(dtype=torch.float64, shapes=SHAPES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in shapes]


def backward(params, k, skip=()):
    sum((torch.sin(p * (1 + k % 3 + i)) * p).sum() for i, p in enumerate(params) if i not in skip).backward()


def train(opt, params, steps, start=0, skip=None):
    for k in range(start, start + steps):
        opt.zero_grad()
        backward(params, k, (skip or {}).get(k, ()))
        opt.step()


def assert_close(actual, expected, rtol):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a.detach(), e.detach(), rtol=rtol, atol=rtol)


SLOW = pytest.mark.slow  # a few seconds each (dynamo traces every re-gather): the suite keeps one per reduction
# (name, options, drift): drift=False stops before the last phase (a parameter without gradient, then the
# per-parameter path, half the test's time): the default run takes it with cadamw only
CHAINS = [
    ("cadamw", {}, True),
    pytest.param("clion", {}, True, marks=SLOW),
    pytest.param("cadopt", {}, True, marks=SLOW),
    pytest.param("cademamix", {}, True, marks=SLOW),
    pytest.param("cademamix", {"weight_decay": 0.1}, False, marks=SLOW),  # its direction: the whole update
    pytest.param("diffgrad", {"cautious": True}, False, marks=SLOW),  # its direction: m
    pytest.param("adamw", {"cautious": "mean"}, True, marks=SLOW),
    pytest.param("adan", {"cautious": True}, True, marks=SLOW),
    # the radial projection: sums over rows and parameters (delta=10: the test fires on every matrix)
    ("adamp", {"delta": 10.0, "weight_decay": 0.1}, False),
    pytest.param("adamp", {"delta": 10.0, "weight_decay": 0.1}, True, marks=SLOW),
    pytest.param("adamp", {"weight_decay": 0.1, "cautious": True}, True, marks=SLOW),
    pytest.param("sgdp", {"delta": 10.0, "weight_decay": 0.1, "momentum": 0.9}, True, marks=SLOW),
    pytest.param("sgdp", {"nesterov": True, "momentum": 0.9}, True, marks=SLOW),
    # one number per parameter in the state, a column on the flat path (drift: float64 0-dim state on the
    # per-parameter path runs eagerly with a warning; tests/core/test_scalar_state.py covers it)
    ("adagradnorm", {}, False),
    ("sgdsai", {"eps": 0.1}, False),  # eps: the (1,) tensor's gsnr |g| / eps is otherwise 1e8, a chaotic run
]


@pytest.mark.parametrize(("name", "options", "drift"), CHAINS)
def test_segmented_chains_run_flat_and_match_eager_across_regathers(name, options, drift):
    params, eager = make_params(), make_params()
    opt = gw.create(name, params, lr=1e-2, compile="eager", **options)
    ref = gw.create(name, eager, lr=1e-2, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eagerly")
        train(opt, params, 4)
        train(ref, eager, 4)
        assert opt._compiled.layouts, "the chain did not run on the flat path"
        assert_close(params, eager, 1e-12)
        opt.load_state_dict(opt.state_dict())  # gathered again from the loaded state
        train(opt, params, 3, start=4)
        train(ref, eager, 3, start=4)
        assert opt._compiled.layouts
        assert_close(params, eager, 1e-12)
        extra, extra_eager = make_params(seed=1, shapes=[(2, 2), (3,)]), make_params(seed=1, shapes=[(2, 2), (3,)])
        opt.add_param_group({"params": extra, "lr": 3e-3})
        ref.add_param_group({"params": extra_eager, "lr": 3e-3})
        train(opt, params + extra, 3, start=7)
        train(ref, eager + extra_eager, 3, start=7)
        assert {key[0] for key in opt._compiled.layouts} == {0, 1}
        assert_close(params + extra, eager + extra_eager, 1e-12)
        if drift:
            # a parameter without gradient: the bucket is gathered again without it (its step count then
            # drifts from the others', which sends the bucket to the per-parameter path). In the second group:
            # the per-parameter path compiles once per rank, two here
            skip = {10: (5,)}
            train(opt, params + extra, 3, start=10, skip=skip)
            train(ref, eager + extra_eager, 3, start=10, skip=skip)
            assert {key[0] for key in opt._compiled.layouts} == {0}  # the second group runs per parameter
    assert_close(params + extra, eager + extra_eager, 1e-12)
    for p, q in zip(params + extra, eager + extra_eager, strict=True):
        assert opt.state[p].keys() == ref.state[q].keys()
        for key in ref.state[q]:
            torch.testing.assert_close(opt.state[p][key], ref.state[q][key], rtol=1e-12, atol=1e-12)


def test_cautious_mask_differs_per_parameter_on_the_flat_path():
    # one parameter whose every coordinate is masked but one, one whose none is: a mask summed over the whole
    # buffer instead of per parameter would rescale both wrongly
    params, eager = make_params(shapes=[(50,), (3,)]), make_params(shapes=[(50,), (3,)])
    opt = gw.create("cadamw", params, lr=1e-1, weight_decay=0.0, compile="eager")
    ref = gw.create("cadamw", eager, lr=1e-1, weight_decay=0.0)
    for k in range(4):
        for ps, o in ((params, opt), (eager, ref)):
            o.zero_grad()
            grads = [torch.ones(50, dtype=torch.float64) * (1 if k % 2 else -1), torch.ones(3, dtype=torch.float64)]
            grads[0][0] = 1.0
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
            o.step()
    assert opt._compiled.layouts
    assert_close(params, eager, 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "options"), [("cadamw", {}), ("adamp", {"delta": 10.0, "weight_decay": 0.1})])
def test_segmented_inductor_float32_matches_eager(name, options):
    params, eager = make_params(torch.float32), make_params(torch.float32)
    flat_run_matches_eager(name, options, params, eager, steps=6, compile=True, rtol=1e-5)


def flat_run_matches_eager(name, options, params, eager, steps, compile, rtol):
    """Train `params` compiled (no fallback to eager allowed) and `eager` eagerly; they must agree within rtol.
    Returns the compiled optimizer."""
    opt = gw.create(name, params, lr=1e-2, compile=compile, **options)
    ref = gw.create(name, eager, lr=1e-2, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*runs eagerly")
        train(opt, params, steps)
    train(ref, eager, steps)
    assert opt._compiled.layouts
    assert_close(params, eager, rtol)
    return opt


@pytest.mark.parametrize("shapes", [[(5,), (20, 16), (8, 32), (3, 16, 2)], [(5,), (4, 3), (20, 16)],
                                    [(256, 64), (64,), (4, 128)]])
def test_row_sums_per_block_or_per_element_equal_per_row_sums(shapes):
    # rows of 16k elements: counted per block of a multiple of ALIGN (64 for the last case, where every offset
    # and row length allows it); a row of 3 anywhere: per element
    tensors = make_params(shapes=shapes)
    sizes = [t.numel() for t in tensors]
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // ALIGN) * ALIGN
    flat = torch.zeros(total, dtype=torch.float64)
    for t, off, n in zip(tensors, offsets, sizes, strict=True):
        flat[off : off + n] = t.detach().reshape(-1)
    s = {**segment_layout(sizes, offsets, total, flat.device, ALIGN),
         **row_layout([t.shape for t in tensors], offsets, total, flat.device, ALIGN)}
    aligned = all(len(sh) < 2 or torch.Size(sh).numel() // sh[0] % ALIGN == 0 for sh in shapes)
    blocks = s[ROW_IDS].shape[0]
    if aligned:
        assert total % blocks == 0 and (total // blocks) % ALIGN == 0
        assert total // blocks == (64 if shapes[0] == (256, 64) else ALIGN)
    else:
        assert blocks == total
    per_row = rows_to_elements(row_sums(flat, s), flat, s)
    for t, off, n in zip(tensors, offsets, sizes, strict=True):
        if t.dim() >= 2:
            expected = t.detach().reshape(t.size(0), -1).sum(1, keepdim=True).expand(t.size(0), n // t.size(0))
            torch.testing.assert_close(per_row[off : off + n], expected.reshape(-1), rtol=1e-13, atol=1e-13)
    row_counts = rows_to_params(torch.ones_like(row_sums(flat, s)), s, "sum")
    assert [float(row_counts[i]) for i in range(len(shapes))] == [sh[0] if len(sh) >= 2 else 0 for sh in shapes]


@pytest.mark.parametrize(("shapes", "block"), [([(5,), (20, 16), (8, 32), (3, 16, 2)], ALIGN),
                                               ([(64, 64), (64,), (4, 128)], 64)])
def test_projection_with_rows_per_block_runs_flat_and_matches_eager(shapes, block):
    params, eager = make_params(shapes=shapes), make_params(shapes=shapes)
    opt = flat_run_matches_eager("adamp", {"delta": 10.0, "weight_decay": 0.1}, params, eager, steps=4,
                                 compile="eager", rtol=1e-12)
    (layout,) = opt._compiled.layouts.values()
    assert layout.param.numel() // layout.segments(rows=True)[ROW_IDS].shape[0] == block  # rows counted per block


def _aligned(shapes, align=ALIGN):
    offsets, total = [], 0
    for shape in shapes:
        offsets.append(total)
        total += -(-torch.Size(shape).numel() // align) * align
    return offsets, total


@pytest.mark.parametrize("shapes", [[(2, 3, 32), (5,), (), (16, 16), (48,), (1, 64)],  # blocks of 16
                                    [(6, 5), (7,), (3, 4, 5), (), (1, 4)]])  # rows of 5: blocks of one element
def test_factor_layout_sums_rows_and_columns_of_each_parameter(shapes):
    """Rows (FACTOR_ROWS, one index per block) and column blocks (FACTOR_GATHERS) of a flat buffer give each
    matrix's sums over its last and second-to-last dimension, and each vector's elements, at the places the
    layout hands its state; every block of a parameter is gathered exactly once."""
    shapes = [torch.Size(s) for s in shapes]
    offsets, total = _aligned(shapes)
    layout, row_count, width, places = factor_layout(shapes, offsets, total, torch.device("cpu"), ALIGN)
    flat = torch.zeros(total, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    for p, off in zip(params, offsets, strict=True):
        flat[off : off + p.numel()] = p.reshape(-1)
    blocks = flat.view(layout[FACTOR_ROWS].shape[0], -1)
    block = blocks.shape[1]
    assert (block > 1) == (shapes[0][-1] % ALIGN == 0)
    rows = torch.zeros(row_count, dtype=torch.float64).index_add_(0, layout[FACTOR_ROWS], blocks.sum(1))
    columns = torch.cat([blocks[sources].sum(1) for sources in layout[FACTOR_GATHERS]]).reshape(-1)
    assert columns.numel() == width
    gathered = torch.cat([sources.reshape(-1) for sources in layout[FACTOR_GATHERS]])
    assert torch.equal(gathered.sort().values, torch.arange(blocks.shape[0]))  # each block once
    assert float(rows[-1]) == pytest.approx(float(sum(p.sum() for p in params if p.dim() < 2)))  # the rest
    for p, shape, place in zip(params, shapes, places, strict=True):
        for key, state_shape in factor_shapes(shape).items():
            region = slice(place[key], place[key] + torch.Size(state_shape).numel())
            if key == ROW_FACTOR:
                torch.testing.assert_close(rows[region].view(state_shape), p.sum(-1, keepdim=True))
            elif key == COLUMN_FACTOR:
                torch.testing.assert_close(columns[region].view(state_shape), p.sum(-2, keepdim=True))
            else:
                assert key == FULL_FACTOR and torch.equal(columns[region].view(state_shape), p)
    # each block's column block holds its columns: reading the column buffer back per block finds every column
    for p, shape, off in zip(params, shapes, offsets, strict=True):
        if len(shape) >= 2:
            first = off // block
            count = shape.numel() // block
            where = layout[FACTOR_COLUMNS][first : first + count]
            expected = p.sum(-2, keepdim=True).expand(shape).reshape(count, block)
            torch.testing.assert_close(columns.view(-1, block)[where], expected)


def test_flat_layout_takes_factored_state_only_when_asked_and_well_shaped():
    params = [torch.zeros(4, 16), torch.zeros(16), torch.zeros(2, 3, 16)]
    for p in params:
        p.grad = torch.ones_like(p)
    states = [{"step": torch.zeros(()), **{k: torch.zeros(s) for k, s in factor_shapes(p.shape).items()}}
              for p in params]
    assert FlatLayout.eligible(params, states, True) is None  # not a factored chain: not shaped like p
    assert FlatLayout.eligible(params, states, True, factored=True) == 0.0
    layout = FlatLayout(params, states, 0.0)
    assert layout.state[ROW_FACTOR].numel() == 4 + 6 + 1 and layout.still_in_place()
    states[0][ROW_FACTOR] = torch.zeros(4, 1)  # a state replaced (load_state_dict): the views are gone
    assert not layout.still_in_place()
    odd = [torch.zeros(4, 12), torch.zeros(16)]  # rows of 12: blocks of single elements, refused
    odd_states = [{"step": torch.zeros(()), **{k: torch.zeros(s) for k, s in factor_shapes(p.shape).items()}}
                  for p in odd]
    assert FlatLayout.eligible(odd, odd_states, True, factored=True) is None
    wrong = [dict(st) for st in states]
    wrong[0][COLUMN_FACTOR] = torch.zeros(4, 1)
    assert FlatLayout.eligible(params, wrong, True, factored=True) is None
    missing = [dict(st) for st in states]
    del missing[2][COLUMN_FACTOR]
    assert FlatLayout.eligible(params, missing, True, factored=True) is None
    empty = [torch.zeros(0, 16), torch.zeros(16)]
    empty_states = [{"step": torch.zeros(()), **{k: torch.zeros(s) for k, s in factor_shapes(p.shape).items()}}
                    for p in empty]
    assert FlatLayout.eligible(empty, empty_states, True, factored=True) is None
