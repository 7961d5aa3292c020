"""Targets, time to target, misses and the performance-profile score, on hand-made results."""

from __future__ import annotations

import math

import pytest

from gradwise.lab import analysis
from gradwise.lab.analysis import Cell, Results, Run
from gradwise.lab.problems import PROBLEMS
from gradwise.lab.runner import Plan


def run(seed, losses, diverged=False):
    steps = list(range(len(losses)))
    return Run(seed, {"lr": 0.1}, {"step": steps, "time": [0.5 * s for s in steps], "loss": losses},
               None, {"loss": losses[-1]}, diverged, 1.0)


def results(curves: dict[str, list[list[float | None]]], problems=("rosenbrock",)) -> Results:
    plan = Plan("quick", list(problems), list(curves), trials=2, seeds=3, tune_weight_decay=False)
    cells = {}
    for p in problems:
        for o, runs in curves.items():
            cells[(p, o)] = Cell(PROBLEMS[p], o, runs=[run(i, c, diverged=c[-1] is None)
                                                        for i, c in enumerate(runs)])
    return Results(plan, cells, {})


def test_target_is_what_half_the_baseline_seeds_reach():
    r = results({"adamw": [[9, 5, 1.0], [9, 5, 2.0], [9, 5, 3.0]]})
    assert analysis.target(r, "rosenbrock") == 2.0
    r = results({"adamw": [[9, 1.0], [9, 2.0], [9, 3.0], [9, 4.0]]})
    assert analysis.target(r, "rosenbrock") == 2.0  # ceil(4 / 2) = 2nd best: half the seeds reach it


def test_time_to_target_takes_the_half_of_seeds_and_counts_misses():
    r = results({
        "adamw": [[9, 5, 1.0], [9, 5, 2.0], [9, 5, 3.0]],  # target 2.0, reached at step 2 by two seeds
        "fast": [[9, 1.5, 1.0], [9, 2.0, 1.0], [9, 9, 9]],  # two seeds at step 1, one miss
        "slow": [[9, 9, 9], [9, 9, 9], [9, 1.0, 1.0]],  # one seed only: a miss
        "boom": [[9, 1.0, None], [9, None, None], [9, None, None]],  # diverged runs are misses
    })
    assert analysis.time_to_target(r, "rosenbrock", "adamw") == (2.0, 1.0, 2)
    assert analysis.time_to_target(r, "rosenbrock", "fast") == (1.0, 0.5, 2)
    assert analysis.time_to_target(r, "rosenbrock", "slow")[:2] == (math.inf, math.inf)
    steps, _, hits = analysis.time_to_target(r, "rosenbrock", "boom")
    assert steps == math.inf and hits == 1
    assert r.cell("rosenbrock", "boom").finals("loss") == [math.inf, math.inf, math.inf]
    ratios = analysis.ratios(r)
    assert ratios == {"adamw": [2.0], "fast": [1.0], "slow": [math.inf], "boom": [math.inf]}
    board = analysis.leaderboard(r)
    assert [row["optimizer"] for row in board][:2] == ["fast", "adamw"]
    assert board[0]["score"] == 1.0 and board[0]["on_target"] == 1
    assert {row["optimizer"]: row["score"] for row in board}["slow"] == 0.0


def test_score_is_the_normalised_area_under_the_profile():
    assert analysis.score([1.0, 1.0]) == 1.0
    assert analysis.score([math.inf, math.inf]) == 0.0
    assert analysis.score([2.5]) == pytest.approx(0.5)  # rho is 1 from tau = 2.5 to 4: 1.5 / 3
    assert analysis.score([1.0, math.inf]) == pytest.approx(0.5)
    assert analysis.score([5.0]) == 0.0
    # the closed form equals the integral of the step function
    rs, taus = [1.0, 1.7, 3.2, math.inf], [1 + 3 * i / 30000 for i in range(30001)]
    area = sum(analysis.profile(rs, taus)[:-1]) * 3 / 30000 / 3
    assert analysis.score(rs) == pytest.approx(area, abs=1e-3)
    assert analysis.profile(rs, [1.0, 2.0, 4.0]) == [0.25, 0.5, 0.75]


def test_rank_averages_ties():
    r = results({"adamw": [[9, 1.0]], "b": [[9, 1.0]], "c": [[9, 3.0]]})
    assert [analysis.rank(r, "rosenbrock", o) for o in ("adamw", "b", "c")] == [1.5, 1.5, 3.0]
