"""Every lab problem is deterministic given a seed, and AdamW makes its loss fall."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gradwise.lab.problems import PROBLEMS, SUITES, dataset, problem, suite
from gradwise.lab.runner import train

SHORT = 60  # steps: enough for the loss to fall, short enough for the whole file to take seconds
LR = {"function": 0.05, "classification": 0.01, "language-model": 0.003}
# grokking memorises its training pairs slowly (that delay is the point of the problem): more steps, higher lr
LONGER = {"grokking": (200, 0.03)}


def short(name: str):
    prob = PROBLEMS[name]
    steps = LONGER.get(name, (SHORT,))[0]
    return dataclasses.replace(prob, steps=steps, eval_every=min(prob.eval_every, 20))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_deterministic_given_seed_and_loss_falls_for_adamw(name):
    prob = short(name)
    lr = {"lr": LONGER.get(name, (0, LR[prob.kind]))[1]}
    first = train(prob, "adamw", lr, seed=3)
    again = train(prob, "adamw", lr, seed=3)
    other = train(prob, "adamw", lr, seed=4)
    untimed = [{k: v for k, v in r.curve.items() if k != "time"} for r in (first, again)]
    assert untimed[0] == untimed[1]
    assert first.trajectory == again.trajectory
    assert first.curve["loss"] != other.curve["loss"], "the seed must change the run"
    losses = first.curve["loss"]
    assert not first.diverged and all(v is not None and math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0], f"{name}: AdamW did not reduce the loss enough: {losses}"
    assert first.curve["step"][0] == 0 and first.curve["step"][-1] == prob.steps
    if prob.kind == "function":
        assert len(first.trajectory) == prob.steps + 1
    else:
        assert first.trajectory is None
        assert 0.0 <= first.final["accuracy"] <= 1.0


def test_grokking_data_split_and_the_one_d_functions_minima():
    from gradwise.lab.problems import CURVES, modular_data

    d = modular_data(47, 0.5)
    sizes = [len(d[f"y_{part}"]) for part in ("train", "val", "test")]
    assert sum(sizes) == 47 * 47 and sizes[0] == int(0.5 * 47 * 47) and abs(sizes[1] - sizes[2]) <= 1
    x = torch.cat([d["x_train"], d["x_val"], d["x_test"]])
    assert len({tuple(r) for r in x.tolist()}) == 47 * 47  # every pair exactly once
    assert torch.equal(d["y_val"], d["x_val"].sum(1) % 47)
    for name, (curve, _) in CURVES.items():
        xs = torch.linspace(*curve.window, 4001)
        assert float(xs[curve.f(xs).argmin()]) == pytest.approx(curve.minimum, abs=1e-3), name
    f1, f2, f3 = (CURVES[f"diffgrad-f{i}"][0].f for i in (1, 2, 3))
    assert float(f1(torch.tensor(0.2))) == pytest.approx(0.05)  # F1's local minimum
    assert float(f2(torch.tensor(-1.0))) == pytest.approx(4.85) and float(f2(torch.tensor(0.0))) == pytest.approx(0.85)
    assert float(f2(torch.tensor(-0.6429))) == pytest.approx(0.0, abs=2e-4)  # F2's global minimum, near 0
    assert float(f2(torch.tensor(0.588))) == pytest.approx(0.465, abs=1e-3)  # and its local minimum right of 0
    assert float(f3(torch.tensor(-0.5))) == pytest.approx(0.25) and float(f3(torch.tensor(-0.4))) == pytest.approx(0.35)


def test_networks_learn_beyond_chance():
    result = train(PROBLEMS["logreg-digits"], "adamw", {"lr": 0.01}, seed=0)
    assert result.final["accuracy"] > 0.85  # chance is 0.1


def test_split_is_fixed_disjoint_and_standardised():
    for name, total in (("digits", 1797), ("cancer", 569)):
        d = dataset(name)
        sizes = [len(d[f"y_{part}"]) for part in ("train", "val", "test")]
        assert sum(sizes) == total and sizes[0] == int(0.6 * total)
        rows = {tuple(r.tolist()) for r in d["x_train"]}
        overlap = sum(tuple(r.tolist()) in rows for r in d["x_test"])
        assert overlap < 0.05 * sizes[2]  # digits holds a few identical images; no systematic leak
        assert abs(float(d["x_train"].mean())) < 1e-4
    assert dataset("digits") is dataset("digits")


def test_unknown_names_are_rejected_with_the_choices():
    with pytest.raises(ValueError, match="problem='nope'.*rosenbrock"):
        problem("nope")
    with pytest.raises(ValueError, match="suite='huge'.*quick"):
        suite("huge")
    with pytest.raises(ValueError, match="dataset='iris'"):
        dataset("iris")


def test_suites_name_known_problems():
    for s in SUITES.values():
        assert set(s.problems) <= set(PROBLEMS)
    assert SUITES["quick"].seeds == 3 and SUITES["standard"].seeds == 10


def test_corpus_ships_with_python_and_splits_in_order():
    from gradwise.lab.problems import corpus

    c = corpus()
    sizes = [len(c[part]) for part in ("train", "val", "test")]
    assert sum(sizes) > 400_000 and sizes[0] > 8 * sizes[1]
    for part in ("train", "val", "test"):
        assert 0 <= int(c[part].min()) and int(c[part].max()) < int(c["vocab"])
    assert (c["train"] == 96).float().mean() < 0.01  # almost every character is printable ASCII


def test_quick_variants_are_shorter_copies_run_only_by_the_quick_suite():
    from gradwise.lab.problems import QUICK_VARIANTS

    for short_name, full_name in QUICK_VARIANTS.items():
        quick, full = PROBLEMS[short_name], PROBLEMS[full_name]
        assert quick.steps < full.steps and quick.kind == full.kind and quick.lr_range == full.lr_range
        a, b = quick.instance(0).model, full.instance(0).model
        assert [p.shape for p in a.parameters()] == [p.shape for p in b.parameters()]  # the same network
        assert short_name in SUITES["quick"].problems and full_name not in SUITES["quick"].problems
        assert short_name not in SUITES["standard"].problems and full_name in SUITES["standard"].problems
    # the quick CNN measures its training loss on a fixed subset; the full one on the whole training split
    with torch.no_grad():
        assert PROBLEMS["cnn-digits-quick"].instance(0).evaluate()["loss"] != PROBLEMS["cnn-digits"].instance(
            0).evaluate()["loss"]
