"""Every transform of every registered optimizer is in the split form (kernel + coefficients), and its kernel
is tensor-safe: run with its coefficients as 0-dim tensors (as the compiled engine passes them), it gives the
eager step's parameters. Elementwise chains give the same result on a flat buffer of several parameters."""

from __future__ import annotations

import contextlib

import pytest
import torch

import gradwise as gw
from gradwise.core import engine
from gradwise.core.compiled import FlatLayout
from gradwise.core.engine import EngineOption
from gradwise.core.registry import entry
from gradwise.core.segments import row_layout, segment_layout

NAMES = gw.available()
STEPS = 5
LRS = {"adagradnorm": 1.0}
OPTIONS = {  # every engine option that rewrites the chain, each clipping mode once
    "default": {},
    "cautious": {"cautious": True, "clip_component_norm": 1.0},
    "grokfast_ema": {"grokfast": "ema", "clip_grad_norm": 1.0},
    "grokfast_ma": {"grokfast": "ma", "grokfast_window": 3, "clip_grad_value": 0.5},
}

def params():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(s, generator=g, dtype=torch.float64).requires_grad_() for s in ((4, 3), (5,), (1,))]


def gradients(step, ps):
    g = torch.Generator().manual_seed(100 + step)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)


def make(name, ps, options):
    hyper = {"lr": LRS.get(name, 1e-2), **options}
    if entry(name).kind == "sampler":
        hyper["generator"] = torch.Generator().manual_seed(7)
    if name == "adamp" or name == "sgdp":  # make the scale-invariance test fire on the matrix
        hyper["delta"] = 10.0
    try:
        return gw.create(name, ps, **hyper)
    except (ValueError, TypeError) as error:  # an option this optimizer refuses
        pytest.skip(f"{name} with {options}: {error}")


def as_tensors(values):
    """The coefficients as the compiled engine passes them: numbers and flags as 0-dim tensors."""
    out = []
    for x in values:
        if isinstance(x, bool):
            out.append(torch.tensor(x))
        elif isinstance(x, int | float):
            out.append(torch.tensor(float(x), dtype=torch.float64))
        else:
            out.append(x)
    return tuple(out)


def run_step(opt, k):
    gradients(k, [p for group in opt.param_groups for p in group["params"]])
    if getattr(opt, "needs_loss", False):  # Polyak-type step sizes read the loss
        opt.step(loss=torch.tensor(1.0 + k, dtype=torch.float64))
    else:
        opt.step()


def tensor_update(transform):
    def update(u, p, s, t):
        return transform.kernel(u, p, s, as_tensors(transform.coefficients(t)))

    return update


@contextlib.contextmanager
def kernels_with_tensor_coefficients(record):
    """Within: every step runs each transform of its final chain (after every engine option) as
    kernel(u, p, s, tensor coefficients); the chains are appended to `record`. An engine option of the test,
    registered last, so applied last."""

    def wrap(h, chain, context):
        record.append(chain)
        return tuple(tr._replace(update=tensor_update(tr)) if tr.kernel is not None else tr for tr in chain)

    option = EngineOption(name="test_tensor_coefficients", defaults={}, ranges={}, wrap=wrap)
    original = engine.engine_options
    engine.engine_options = lambda: [*original(), option]
    try:
        yield
    finally:
        engine.engine_options = original


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("name", NAMES)
def test_kernels_with_tensor_coefficients_match_the_eager_step(name, option):
    eager_params, kernel_params = params(), params()
    eager, kernel = make(name, eager_params, OPTIONS[option]), make(name, kernel_params, OPTIONS[option])
    chains = []
    for k in range(STEPS):
        run_step(eager, k)
        with kernels_with_tensor_coefficients(chains):
            run_step(kernel, k)
        for a, b in zip(eager_params, kernel_params, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert chains, "no chain ran"
    for chain in chains:
        for i, transform in enumerate(chain):
            assert transform.kernel is not None, (name, option, i, transform.update)
            assert transform.coefficients is not None, (name, option, i, transform.update)
    assert any(not torch.equal(a, b) for a, b in zip(eager_params, params(), strict=True)), "nothing moved"


OPTIMIZERS = [n for n in NAMES if entry(n).kind == "optimizer"]


FLAT_OPTIONS = {"default": {}, "cautious": {"cautious": True}, "cautious_mean": {"cautious": "mean"}}


# Adafactor's factored state is not shaped like its parameters: its flat path is tested in tests/optim/test_adafactor.py
@pytest.mark.parametrize("option", list(FLAT_OPTIONS))
@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "adafactor"])
def test_elementwise_chains_run_on_a_flat_buffer(name, option):
    # segmented transforms (the cautious mask) reduce per parameter through gradwise.core.segments, which
    # the flat state dict tells where each parameter lies
    chains = []
    with kernels_with_tensor_coefficients(chains):
        run_step(make(name, params(), FLAT_OPTIONS[option]), 0)
    chain = chains[0]
    if not all(tr.elementwise or tr.segmented for tr in chain):
        pytest.skip(f"{name}'s chain has a transform that is neither elementwise nor segmented")
    if option != "default":
        assert any(tr.segmented for tr in chain)
    separate = [p.detach().clone() for p in params()[:2]]
    flat = torch.cat([p.reshape(-1) for p in separate])
    states = [{} for _ in separate]
    sizes = [p.numel() for p in separate]
    segments = segment_layout(sizes, [0, sizes[0]], sum(sizes), flat.device)
    if any(tr.segmented == "rows" for tr in chain):  # AdamP's projection: rows of the (4, 3) matrix too
        segments.update(row_layout([p.shape for p in separate], [0, sizes[0]], sum(sizes), flat.device))
    flat_state: dict = dict(segments) if any(tr.segmented for tr in chain) else {}
    with torch.no_grad():
        for step in range(1, STEPS + 1):
            gradients(step, separate)
            grads = [p.grad for p in separate]
            if step == 1:  # state allocated at the first step, as the engine does (SGD-SaI's reads the gradient)
                for tr in chain:
                    for p, st in zip(separate, states, strict=True):
                        st.update(tr.init(p))
                assert flat_layout_holds(separate, states), f"{name}'s state is not shaped like its parameters"
                flat_state.update(flat_layout_state(states))
            u_flat = torch.cat([g.reshape(-1) for g in grads])
            flat.grad = u_flat  # kernels that read p.grad (AdamP's projection) find the flat gradient
            for tr in chain:
                u_flat = tr.kernel(u_flat, flat, flat_state, as_tensors(tr.coefficients(float(step))))
            for p, st, g in zip(separate, states, grads, strict=True):
                u = g
                for tr in chain:
                    u = tr.kernel(u, p, st, tr.coefficients(float(step)))
    for key in segments:
        flat_state.pop(key, None)
    torch.testing.assert_close(flat, torch.cat([p.reshape(-1) for p in separate]), rtol=1e-13, atol=1e-15)
    assert flat_state.keys() == states[0].keys()
    for key, value in flat_state.items():
        if value.dim() == 2:  # one number per parameter: a column, its last row the padding's
            value = value[:-1, 0]
        torch.testing.assert_close(value, torch.cat([st[key].reshape(-1) for st in states]), rtol=1e-13, atol=1e-15)


def flat_layout_holds(params, states):
    """Whether the engine's flat layout takes these states (FlatLayout.eligible, with a common step count)."""
    return FlatLayout.eligible(params, [{**st, "step": torch.zeros(())} for st in states], scalars=True) is not None


def flat_layout_state(states):
    """The per-parameter states as the flat layout holds them: per-element state concatenated, 0-dim state (one
    number per parameter: AdaGrad-Norm's b^2, SGD-SaI's gsnr) as a column with a row for the padding."""
    out = {}
    for key, first in states[0].items():
        if first.dim() == 0:
            out[key] = torch.stack([*(st[key] for st in states), torch.zeros_like(first)])[:, None]
        else:
            out[key] = torch.cat([st[key].reshape(-1) for st in states])
    return out
