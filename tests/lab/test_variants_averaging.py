"""Optimizer variants ("adamw+cautious") and the averaged model's metrics beside the raw ones (issue #7)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gradwise.lab import analysis
from gradwise.lab.problems import PROBLEMS, SURFACES
from gradwise.lab.report import averaged_rows, render
from gradwise.lab.runner import (
    Plan,
    build_optimizer,
    hyper_parameters,
    open_storage,
    parse_average,
    resolve_optimizers,
    run_lab,
    split_variant,
    storage_url,
    train,
)


def short(name: str, steps: int = 30, every: int = 10):
    return dataclasses.replace(PROBLEMS[name], steps=steps, eval_every=every)


def test_variants_switch_engine_options_on():
    assert split_variant("adamw") == ("adamw", {})
    base, options = split_variant("adamw+cautious+8bit")
    assert base == "adamw" and options == {"cautious": True, "state_bits": 8, "state_min_size": 0}
    assert hyper_parameters("adamw+grokfast", {"lr": 1e-3}) == {"lr": 1e-3, "weight_decay": 0.0, "grokfast": "ema"}
    opt = build_optimizer("adamw+grokfast", torch.nn.Linear(2, 2), {"lr": 1e-3, "weight_decay": 0.5})
    group = opt.param_groups[0]
    assert group["grokfast"] == "ema" and group["weight_decay"] == 0.5 and group["cautious"] is False
    with pytest.raises(ValueError, match="variant 'fast' is unknown: choose from grokfast, cautious, 8bit"):
        split_variant("adamw+fast")
    assert resolve_optimizers(["adamw+cautious"]) == ["adamw", "adamw+cautious"]
    with pytest.raises(ValueError, match="adamm"):
        resolve_optimizers(["adamm+cautious"])


def test_a_variant_trains_differently_from_its_base():
    prob = short("mlp-cancer")
    plain = train(prob, "adamw", {"lr": 1e-2}, seed=0)
    masked = train(prob, "adamw+cautious", {"lr": 1e-2}, seed=0)
    assert plain.curve["loss"][0] == masked.curve["loss"][0]  # same start
    assert plain.curve["loss"][-1] != masked.curve["loss"][-1]


def test_paper_suite_adds_its_variants():
    plan = Plan.make("paper")
    assert {"adamw+grokfast", "adamw+cautious", "adamw+8bit"} <= set(plan.optimizers)
    assert "grokking" in plan.problems and "diffgrad-f1" in plan.problems
    assert Plan.make("paper", optimizers=["adamw"]).optimizers == ["adamw"]


def test_average_specs_are_parsed_or_refused():
    assert parse_average(None, 100) is None
    model = torch.nn.Linear(2, 2)
    assert parse_average("ema:0.9", 100)(model).decay == 0.9
    assert parse_average("swa:0.5", 100)(model).start == 50
    assert parse_average("swa:7", 100)(model).start == 7
    lawa = parse_average("lawa:3:2", 100)(model)
    assert (lawa.k, lawa.every) == (3, 2)
    for bad in ("ema:x", "mean", "lawa:1:2:3"):
        with pytest.raises(ValueError, match="average="):
            parse_average(bad, 100)
    with pytest.raises(ValueError, match="average="):
        Plan.make("quick", problems=["belief-abs"], optimizers=["adamw"], average="median")


def test_averaged_metrics_are_recorded_beside_the_raw_ones():
    prob = short("logreg-cancer")
    copy = train(prob, "adamw", {"lr": 1e-2}, seed=1, average="ema:0")  # decay 0: the average is the model
    for m in prob.metrics:
        assert copy.curve[f"avg_{m}"] == copy.curve[m]
    smooth = train(prob, "adamw", {"lr": 1e-2}, seed=1, average="ema:0.9")
    assert smooth.curve["loss"] == copy.curve["loss"]  # averaging does not change the training
    assert smooth.curve["avg_val_loss"][-1] != smooth.curve["val_loss"][-1]
    assert set(smooth.final) == {*prob.metrics, *(f"avg_{m}" for m in prob.metrics)}
    assert "avg_loss" not in train(prob, "adamw", {"lr": 1e-2}, seed=1).curve


def test_lawa_average_of_a_test_function_is_the_mean_of_the_last_iterates():
    prob = short("rosenbrock", steps=20, every=1)
    result = train(prob, "adamw", {"lr": 0.05}, seed=2, average="lawa:3:1")
    mean = torch.tensor(result.trajectory[-3:]).mean(0)
    expected = float(SURFACES["rosenbrock"][0].f(*mean.unbind()))
    assert result.final["avg_loss"] == pytest.approx(expected, rel=1e-5)
    assert result.final["avg_loss"] != result.final["loss"]


def test_report_tables_show_the_averaged_model(tmp_path):
    plan = Plan.make("quick", problems=["belief-quadratic"], optimizers=["adamw"], trials=1, seeds=2,
                     average="ema:0.5")
    assert plan.tune_study("belief-quadratic", "adamw").endswith("-avg-ema:0.5")
    url = storage_url(tmp_path)
    run_lab(plan, url)
    results = analysis.load(open_storage(url))
    assert results.plan.average == "ema:0.5"
    rows = averaged_rows(results, "belief-quadratic")
    raw = results.cell("belief-quadratic", "adamw").summary("loss")
    averaged = results.cell("belief-quadratic", "adamw").summary("avg_loss")
    assert rows[0][0] == "adamw" and rows[0][1].startswith(f"{raw[0]:.4g}") and rows[0][2].startswith(
        f"{averaged[0]:.4g}")
    page = render(results, "protocol")
    assert "averaged (ema:0.5)" in page and "weight averaging ema:0.5" in page
