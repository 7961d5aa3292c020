"""EMA, SwitchEMA, LAWA and SWA: hand references, AveragedModel's own result, saving, compile, no syncs."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils._python_dispatch import TorchDispatchMode

from checkpoint_io import roundtrip
from gradwise.averaging import EMA, LAWA, SWA, SwitchEMA


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 1)).double()


def perturb(model, k):
    """Stands in for an optimizer step: deterministic, different at every step."""
    g = torch.Generator().manual_seed(100 + k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def weights(module):
    return [p.detach().clone() for p in module.parameters()]


def assert_weights(actual, expected, tol=1e-12):
    for a, b in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("warmup,every", [(False, 1), (True, 1), (True, 3)])
def test_ema_equals_a_hand_reference_over_100_steps(warmup, every):
    model = make_model()
    ema = EMA(model, decay=0.95, warmup=warmup, every=every)
    reference, n = None, 0
    for k in range(1, 101):
        perturb(model, k)
        ema.update(model)
        if k % every == 0:
            current = weights(model)
            if reference is None:
                reference = current
            else:
                d = min(0.95, (1 + n) / (10 + n)) if warmup else 0.95
                reference = [d * e + (1 - d) * w for e, w in zip(reference, current, strict=True)]
            n += 1
        if reference is not None:
            assert_weights(weights(ema.module), reference)
    assert ema.averaged == 100 // every and ema.calls == 100


def test_lawa_equals_the_mean_of_the_latest_k_checkpoints():
    model = make_model()
    lawa = LAWA(model, k=4, every=5)
    stored = []
    for k in range(1, 61):
        perturb(model, k)
        lawa.update(model)
        if k % 5 == 0:
            stored = ([weights(model)] + stored)[:4]
        if stored:
            mean = [torch.stack(ws).mean(0) for ws in zip(*stored, strict=True)]
            assert_weights(weights(lawa.module), mean)
    assert lawa.stored == 4


def test_switch_ema_switches_exactly_at_epoch_ends():
    model = make_model()
    sema = SwitchEMA(model, decay=0.9, steps_per_epoch=7)
    for k in range(1, 36):
        perturb(model, k)
        sema.update(model)
        same = all(torch.equal(a, b) for a, b in zip(model.parameters(), sema.module.parameters(), strict=True))
        if k > 1:  # (the first average is a copy of the model)
            assert same == (k % 7 == 0), k
    assert sema.switches == 5
    # by hand: switch() copies the EMA in
    perturb(model, 99)
    sema.switch(model)
    assert_weights(weights(model), weights(sema.module), tol=0)


@pytest.mark.parametrize("start,every", [(0, 1), (10, 4)])
def test_swa_matches_averaged_models_own_result(start, every):
    model = make_model()
    swa, reference = SWA(model, start=start, every=every), AveragedModel(model)
    for k in range(1, 51):
        perturb(model, k)
        swa.update(model)
        if k > start and (k - start) % every == 0:
            reference.update_parameters(model)
    assert swa.averaged == int(reference.n_averaged)
    assert_weights(weights(swa.module), weights(reference.module), tol=1e-14)
    for a, b in zip(swa.module.buffers(), reference.module.buffers(), strict=True):
        assert torch.equal(a, b)


def test_swa_update_bn_recomputes_batchnorm_statistics():
    model = make_model()
    swa = SWA(model)
    swa.update(model)
    data = [torch.randn(16, 3, dtype=torch.float64) + 2.0 for _ in range(4)]
    swa.update_bn(data)
    bn = swa.module[1]
    assert bn.num_batches_tracked.item() == 4 and bn.running_mean.abs().sum() > 0


AVERAGERS = {
    "ema": lambda m: EMA(m, decay=0.9, warmup=True, every=2),
    "switch_ema": lambda m: SwitchEMA(m, decay=0.9, steps_per_epoch=4),
    "lawa": lambda m: LAWA(m, k=3, every=2),
    "swa": lambda m: SWA(m, start=3, every=2),
    "ema_buffers": lambda m: EMA(m, decay=0.8, use_buffers=True),
}


@pytest.mark.parametrize("name", sorted(AVERAGERS))
def test_state_dict_round_trip_and_resume_equal_uninterrupted(name):
    def train(model, averager, steps):
        for k in steps:
            perturb(model, k)
            model(torch.randn(8, 3, generator=torch.Generator().manual_seed(k), dtype=torch.float64))  # BatchNorm stats
            averager.update(model)

    model = make_model()
    straight = AVERAGERS[name](model)
    train(model, straight, range(1, 21))

    model = make_model()
    first = AVERAGERS[name](model)
    train(model, first, range(1, 11))
    saved = roundtrip({"model": model.state_dict(), "avg": first.state_dict()})
    model = make_model(seed=5)
    model.load_state_dict(saved["model"])
    second = AVERAGERS[name](model)
    second.load_state_dict(saved["avg"])
    assert second.state_dict()["_extra_state"] == first.state_dict()["_extra_state"]
    train(model, second, range(11, 21))
    a, b = straight.state_dict(), second.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


class NoHostReads(TorchDispatchMode):
    """Fails on any read of a tensor's value by the host (.item(), bool(), float(): the syncs on a GPU)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise AssertionError("host read of a tensor value (a device synchronisation on a GPU)")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", sorted(AVERAGERS))
def test_updates_never_read_a_tensor_value_on_the_host(name):
    model = make_model()
    averager = AVERAGERS[name](model)
    with NoHostReads():
        for k in range(1, 13):
            perturb(model, k)
            averager.update(model)
    assert averager.averaged > 0


def test_the_sync_check_catches_averaged_models_own_update():
    model = make_model()
    reference = AveragedModel(model)
    with pytest.raises(AssertionError, match="host read"), NoHostReads():
        reference.update_parameters(model)


def test_works_with_a_compiled_model():
    torch._dynamo.reset()
    plain = make_model()
    compiled = torch.compile(make_model(), backend="eager")  # the wrapper is what matters; eager compiles fast
    averagers = [cls(compiled) for cls in (EMA, SwitchEMA, LAWA, SWA)]
    optimizer = torch.optim.SGD(compiled.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        compiled(torch.randn(8, 3, dtype=torch.float64)).square().mean().backward()
        optimizer.step()
        for averager in averagers:
            averager.update(compiled)
    for averager in averagers:
        assert not any(key.startswith("module._orig_mod") for key in averager.state_dict())
        plain.load_state_dict(averager.module.state_dict())  # loads into the uncompiled module
        averager.copy_to(compiled)
        assert_weights(weights(compiled), weights(averager.module), tol=0)


def test_averaged_model_has_lower_test_loss_than_the_last_iterate():
    # linear regression, SGD with a constant step on batches of 4: the iterate jitters around the optimum
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(10, 1, generator=g, dtype=torch.float64)

    def data(n):
        x = torch.randn(n, 10, generator=g, dtype=torch.float64)
        return x, x @ truth + 0.5 * torch.randn(n, 1, generator=g, dtype=torch.float64)

    x_test, y_test = data(2000)
    model = nn.Linear(10, 1, bias=False).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    averagers = {"ema": EMA(model, decay=0.98), "lawa": LAWA(model, k=20, every=5), "swa": SWA(model, start=200)}
    for _ in range(400):
        x, y = data(4)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
        for averager in averagers.values():
            averager.update(model)
    with torch.no_grad():
        last = nn.functional.mse_loss(model(x_test), y_test).item()
        for name, averager in averagers.items():
            averaged = nn.functional.mse_loss(averager(x_test), y_test).item()
            assert averaged < last, (name, averaged, last)


@pytest.mark.parametrize("build,match", [
    (lambda m: EMA(m, decay=1.5), "decay"),
    (lambda m: EMA(m, every=0), "every"),
    (lambda m: EMA(m, warmup="yes"), "warmup"),
    (lambda m: SwitchEMA(m, steps_per_epoch=0), "steps_per_epoch"),
    (lambda m: LAWA(m, k=0), "k"),
    (lambda m: SWA(m, start=-1), "start"),
    (lambda m: SWA(m, every=1.5), "every"),
    (lambda m: SWA(m, use_buffers=1), "use_buffers"),
    (lambda m: EMA(object()), "model"),
])
def test_bad_arguments_are_refused_with_their_name(build, match):
    with pytest.raises((TypeError, ValueError), match=match):
        build(make_model())
