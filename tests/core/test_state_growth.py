"""State that a chain needs only after a hyper-parameter change: SGD whose momentum is raised from 0, AdamW with
amsgrad switched on, Grokfast switched on. The engine adds the missing keys from the transforms' `init` (keys
present keep their values) and, compiled, gathers its flat layouts again: eager and compiled go on without a
KeyError and without falling back to eager."""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch

import gradwise as gw
from gradwise.core import registry
from gradwise.core.engine import _init_structure, hyper_parameters

SHAPES = [(4, 3), (5,), (2, 3, 2)]
COMPILES = [False, "eager"]


def make_params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def clone(params):
    return [p.detach().clone().requires_grad_() for p in params]


def set_grads(params, k, skip=()):
    """A smooth gradient (the minimum at 0.3 i, plus a step-dependent pull): rounding differences stay small."""
    for i, p in enumerate(params):
        p.grad = None if i in skip else (p.detach() - 0.3 * i + 0.1 * math.sin(k + i)).clone()


def no_eager_fallback(recwarn):
    return not [w for w in recwarn if "runs eagerly" in str(w.message)]


def assert_all_close(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compile", COMPILES)
def test_sgd_momentum_raised_from_zero_goes_on_as_torch_sgd(compile, recwarn):
    """torch.optim.SGD creates the buffer as a clone of the gradient at its first step with momentum; with
    dampening 0 that equals the zero buffer gradwise starts. Parameter 1 has no gradient at the change: it
    gets its buffer at its next step with one."""
    ours, theirs = make_params(), make_params()
    opt = gw.SGD(ours, lr=0.05, momentum=0, weight_decay=1e-2, compile=compile)
    ref = torch.optim.SGD(theirs, lr=0.05, momentum=0, weight_decay=1e-2)
    for k in range(26):
        if k == 4:
            for o in (opt, ref):
                o.param_groups[0]["momentum"] = 0.9
        skip = (1,) if k in (4, 5) else ()
        for params, o in ((ours, opt), (theirs, ref)):
            set_grads(params, k, skip)
            o.step()
    assert_all_close(ours, theirs)
    assert all("momentum_buffer" in opt.state[p] for p in ours)
    assert no_eager_fallback(recwarn)


def adamw_reference(params, steps, switch_at, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=1e-2):
    """AdamW from its update rule; amsgrad from step `switch_at` on, its running max starting from zeros."""
    beta1, beta2 = betas
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    vmax = [torch.zeros_like(p) for p in params]
    with torch.no_grad():
        for k in range(steps):
            set_grads(params, k)
            t = k + 1
            for i, p in enumerate(params):
                g = p.grad
                p.mul_(1 - lr * weight_decay)
                m[i] = beta1 * m[i] + (1 - beta1) * g
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                second = v[i]
                if k >= switch_at:
                    vmax[i] = torch.maximum(vmax[i], v[i])
                    second = vmax[i]
                denom = second.sqrt() / math.sqrt(1 - beta2**t) + eps
                p.sub_(lr / (1 - beta1**t) * m[i] / denom)


@pytest.mark.parametrize("compile", COMPILES)
def test_adamw_amsgrad_switched_on_starts_its_running_max_at_zero(compile, recwarn):
    ours, theirs = make_params(), make_params()
    opt = gw.AdamW(ours, lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2, amsgrad=False, compile=compile)
    for k in range(30):
        if k == 5:
            opt.param_groups[0]["amsgrad"] = True
        set_grads(ours, k)
        opt.step()
    adamw_reference(theirs, 30, switch_at=5)
    assert_all_close(ours, theirs)
    assert no_eager_fallback(recwarn)


def grokfast_reference(params, steps, switch_at, lr=0.05, alpha=0.9, lamb=2.0):
    """SGD with Grokfast's EMA filter from step `switch_at` on, its average starting at the first gradient it
    sees (the authors' gradfilter_ema)."""
    ema: list[torch.Tensor | None] = [None for _ in params]
    with torch.no_grad():
        for k in range(steps):
            set_grads(params, k)
            for i, p in enumerate(params):
                u = p.grad
                if k >= switch_at:
                    ema[i] = u.clone() if ema[i] is None else alpha * ema[i] + (1 - alpha) * u
                    u = u + lamb * ema[i]
                p.sub_(lr * u)


@pytest.mark.parametrize("compile", COMPILES)
def test_grokfast_switched_on_mid_run_allocates_its_average(compile, recwarn):
    ours, theirs = make_params(), make_params()
    opt = gw.SGD(ours, lr=0.05, grokfast_alpha=0.9, grokfast_lamb=2.0, compile=compile)
    for k in range(25):
        if k == 3:
            opt.param_groups[0]["grokfast"] = "ema"
        set_grads(ours, k)
        opt.step()
    grokfast_reference(theirs, 25, switch_at=3)
    assert_all_close(ours, theirs)
    assert all("grokfast_ema" in opt.state[p] for p in ours)
    assert no_eager_fallback(recwarn)


@pytest.mark.parametrize("compile", COMPILES)
def test_only_the_group_whose_momentum_is_raised_grows(compile, recwarn):
    """Two groups: the first has momentum all along, the second's is raised from 0 mid-run."""
    ours, theirs = make_params(), make_params()

    def groups(params):
        return [{"params": params[:1], "momentum": 0.5}, {"params": params[1:], "momentum": 0.0}]

    opt = gw.SGD(groups(ours), lr=0.05, compile=compile)
    ref = torch.optim.SGD(groups(theirs), lr=0.05)
    for k in range(25):
        if k == 4:
            for o in (opt, ref):
                o.param_groups[1]["momentum"] = 0.9
        for params, o in ((ours, opt), (theirs, ref)):
            set_grads(params, k)
            o.step()
    assert_all_close(ours, theirs)
    assert no_eager_fallback(recwarn)


def test_cautious_switched_on_mid_run_steps_the_same_eager_and_compiled(recwarn):
    """The cautious mask wraps the chain (a new init structure, no new state): eager and compiled agree."""
    runs = []
    for compile, switch in [*((c, True) for c in COMPILES), (False, False)]:
        params = make_params()
        opt = gw.AdamW(params, lr=1e-2, compile=compile)
        for k in range(12):
            if k == 4:
                opt.param_groups[0]["cautious"] = switch
            set_grads(params, k)
            opt.step()
        runs.append(params)
    *switched, plain = runs
    assert_all_close(*switched)
    # the switch took effect: the masked run left the plain one
    assert max(float((a - b).abs().max()) for a, b in zip(switched[0], plain, strict=True)) > 1e-6
    assert no_eager_fallback(recwarn)


@pytest.mark.parametrize("compile", COMPILES)
def test_state_dict_round_trip_after_the_change_continues_exactly(compile, recwarn):
    params = make_params()
    opt = gw.AdamW(params, lr=1e-2, amsgrad=False, compile=compile)
    for k in range(6):
        if k == 3:
            opt.param_groups[0]["amsgrad"] = True
        set_grads(params, k)
        opt.step()
    resumed_params = clone(params)
    resumed = gw.AdamW(resumed_params, lr=1e-2, amsgrad=False, compile=compile)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.param_groups[0]["amsgrad"] is True
    for k in range(6, 12):
        for ps, o in ((params, opt), (resumed_params, resumed)):
            set_grads(ps, k)
            o.step()
    for a, b in zip(params, resumed_params, strict=True):
        assert torch.equal(a, b)
        assert set(opt.state[a]) == set(resumed.state[b]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        for key in opt.state[a]:
            assert torch.equal(opt.state[a][key], resumed.state[b][key])
    assert no_eager_fallback(recwarn)


@pytest.mark.parametrize("compile", COMPILES)
def test_checkpoint_without_the_buffer_loaded_into_a_group_with_momentum(compile, recwarn):
    """A checkpoint saved with momentum 0 (no buffer), loaded into an SGD whose momentum is then raised."""
    params, twin = make_params(), make_params()
    saved = gw.SGD(params, lr=0.05, momentum=0)
    ref = torch.optim.SGD(twin, lr=0.05, momentum=0)
    for k in range(3):
        for ps, o in ((params, saved), (twin, ref)):
            set_grads(ps, k)
            o.step()
    loaded_params = clone(params)
    loaded = gw.SGD(loaded_params, lr=0.05, compile=compile)
    loaded.load_state_dict(saved.state_dict())
    for o in (loaded, ref):
        o.param_groups[0]["momentum"] = 0.9
    for k in range(3, 25):
        for ps, o in ((loaded_params, loaded), (twin, ref)):
            set_grads(ps, k)
            o.step()
    assert_all_close(loaded_params, twin)
    assert no_eager_fallback(recwarn)


@pytest.mark.parametrize("compile", COMPILES)
def test_8bit_state_converts_the_new_keys_only(compile, recwarn):
    """state_bits=8: the running max added mid-run is stored as codes, the moments stay as they were stored."""
    runs = []
    for switch in (True, False):  # the twin never switches: its moments are what the switched run's must be
        g = torch.Generator().manual_seed(1)
        p = torch.randn(64, 128, generator=g).requires_grad_()
        opt = gw.AdamW([p], lr=1e-3, state_bits=8, compile=compile)
        for k in range(6):
            if k == 3:
                before = {key: value.clone() for key, value in opt.state[p].items()}
                opt.param_groups[0]["amsgrad"] = switch
            p.grad = torch.randn(p.shape, generator=g)  # the same gradients: they do not depend on p
            opt.step()
        runs.append(opt.state[p])
        assert torch.isfinite(p).all()
    state, twin = runs
    assert state["max_exp_avg_sq"].dtype == torch.uint8 and "max_exp_avg_sq" not in twin
    assert before["exp_avg_sq"].dtype == torch.uint8
    for key, value in twin.items():  # the moments (codes and block scales) went on as stored, untouched
        assert torch.equal(state[key], value), key
    assert no_eager_fallback(recwarn)


def test_unchanged_hyper_parameters_check_nothing(monkeypatch):
    """The per-step cost when nothing changes, or only non-zero numbers (an lr schedule): one comparison of the
    group's hyper-parameters, no scan."""
    params = make_params()
    opt = gw.AdamW(params, lr=1e-2)
    calls = []
    real = type(opt)._grow_state
    monkeypatch.setattr(type(opt), "_grow_state", lambda self, *a: (calls.append(a[0]), real(self, *a)))
    for k in range(4):
        set_grads(params, k)
        opt.step()
    assert calls == [0]
    for k, lr in enumerate((5e-3, 2e-3, 1e-3)):  # a schedule: non-zero numbers rescaled, nothing checked
        opt.param_groups[0]["lr"] = lr
        set_grads(params, 4 + k)
        opt.step()
    assert calls == [0]

    class CountedState(defaultdict):  # counts the growth check's reads of a parameter's state
        reads = 0

        def get(self, key, default=None):
            CountedState.reads += 1
            return super().get(key, default)

    opt.state = CountedState(dict, opt.state)
    set_grads(params, 7)
    opt.step()  # a new state dict: the state option's one-off scan for loaded 8-bit codes reads it here
    CountedState.reads = 0
    opt.param_groups[0]["weight_decay"] = 0.0  # a rate to 0: the init structure is checked again, no parameter scanned
    set_grads(params, 8)
    opt.step()
    assert calls == [0, 0]
    assert CountedState.reads == 0


@pytest.mark.parametrize("name", registry.available())
def test_every_optimizer_chain_has_a_stable_init_structure(name):
    """Two chains built from the same hyper-parameters have equal init structures (else a learning-rate
    schedule would make every step scan the parameters)."""
    p = torch.zeros(3, 2, requires_grad=True)
    try:
        opt = registry.create(name, [p])
    except TypeError:
        opt = registry.create(name, [p], lr=0.1)
    p.grad = torch.ones_like(p)
    h = hyper_parameters(opt.param_groups[0])
    structures = []
    for _ in range(2):
        if getattr(opt, "needs_loss", False):  # SPS, ALR-SMAG: the step's loss, which a chain reads
            opt._loss = torch.tensor(1.0)
        opt.prepare(opt._params_with_grad())  # what a chain may read (AdaGrad-Norm's squared norm)
        structures.append(_init_structure(opt.chain(h)))
    assert structures[0] == structures[1]
