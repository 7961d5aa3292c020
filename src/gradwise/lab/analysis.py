"""From stored trials to the numbers of the report: summaries, targets, time to target, profiles.

Definitions (the protocol in `gradwise.lab` states them for readers):
  final value    the metric at the last evaluation; a diverged run counts as the worst value (inf loss,
                 zero accuracy), never dropped.
  target         per problem, the problem's fixed goal if it declares one (grokking: 95 % validation
                 accuracy); otherwise from the tuned AdamW baseline's seed runs: the value of its target
                 metric reached by at least half of them, i.e. the ceil(n/2)-th best final value.
  time to target per run, the first evaluation step (and the training wall time until then) at which the
                 target metric is at least as good as the target; a run that never gets there is a miss.
                 Per (problem, optimizer): the ceil(n/2)-th smallest over seeds, i.e. the time by which
                 half of the seeds have arrived; a miss if fewer than half arrive.
  profile        AlgoPerf-style: on each problem the ratio r = steps / (fewest steps of any optimizer);
                 rho(tau) = share of problems with r <= tau (a miss has r = inf); the score is the
                 normalised area under rho over 1 <= tau <= TAU_MAX.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, cast

import optuna
from optuna.trial import TrialState

from .problems import PROBLEMS, Problem
from .runner import BASELINE, META_STUDY, Plan, best_trial, load_plan

TAU_MAX = 4.0


@dataclass
class Run:
    seed: int
    params: dict[str, float]
    curve: dict[str, list[float | None]]
    trajectory: list[list[float]] | None
    final: dict[str, float | None]
    diverged: bool
    wall_time: float


@dataclass
class Cell:
    """One (problem, optimizer) pair: its tuning trials and its seed runs."""

    problem: Problem
    optimizer: str
    tuning: list[tuple[dict[str, float], float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    runs: list[Run] = field(default_factory=list)

    def finals(self, metric: str) -> list[float]:
        worst = 0.0 if metric.endswith("accuracy") else math.inf
        out = []
        for r in self.runs:
            value = r.final.get(metric)
            out.append(worst if r.diverged or value is None else value)
        return out

    def summary(self, metric: str) -> tuple[float, float, float] | None:
        """(median, min, max) of the final metric over seeds; None without runs."""
        values = self.finals(metric)
        if not values:
            return None
        return statistics.median(values), min(values), max(values)


@dataclass
class Results:
    plan: Plan
    cells: dict[tuple[str, str], Cell]
    errors: dict[str, str]
    environments: dict[str, dict[str, str]] = field(default_factory=dict)

    def cell(self, problem: str, optimizer: str) -> Cell:
        return self.cells[(problem, optimizer)]

    @property
    def optimizers(self) -> list[str]:
        return [o for o in self.plan.optimizers if o not in self.errors]


def load(storage: optuna.storages.BaseStorage) -> Results:
    """Read a lab's plan and every finished trial from its storage."""
    plan = load_plan(storage)
    meta = optuna.load_study(study_name=META_STUDY, storage=storage).user_attrs
    errors = meta.get("errors", {})
    environments = {k.removeprefix("environment "): v for k, v in meta.items() if k.startswith("environment ")}
    existing = set(optuna.get_all_study_names(storage))  # names only: summaries read every study's best trial
    cells = {}
    for p in plan.problems:
        for o in plan.optimizers:
            cell = Cell(PROBLEMS[p], o)
            cells[(p, o)] = cell
            name = plan.tune_study(p, o)
            if name not in existing:
                continue
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(
                deepcopy=False, states=(TrialState.COMPLETE,))
            trials = sorted(trials, key=lambda t: t.number)[:plan.trials]
            cell.tuning = [(dict(t.params), cast(float, t.value)) for t in trials]  # COMPLETE: a value
            if len(trials) == plan.trials:
                cell.best = dict(best_trial(trials, plan.trials).params)
            name = plan.seeds_study(p, o)
            if name not in existing:
                continue
            seen = set()
            for t in sorted(optuna.load_study(study_name=name, storage=storage).get_trials(
                    deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number):
                run = t.user_attrs["run"]
                if run["seed"] in seen or run["seed"] >= plan.seeds:
                    continue
                seen.add(run["seed"])
                cell.runs.append(Run(run["seed"], run["params"], run["curve"], run["trajectory"],
                                     run["final"], run["diverged"], run["wall_time"]))
            cell.runs.sort(key=lambda r: r.seed)
    return Results(plan, cells, errors, environments)


def validation_metric(prob: Problem) -> str:
    """The metric the averaged model is compared on: validation loss, or the value of a test function."""
    return "val_loss" if "val_loss" in prob.metrics else "loss"


def _better(a: float, b: float, higher: bool) -> bool:
    return a >= b if higher else a <= b


def _kth_best(values: list[float], higher: bool) -> float:
    ordered = sorted(values, reverse=higher)
    return ordered[math.ceil(len(ordered) / 2) - 1]


def target(results: Results, problem: str) -> float | None:
    """The problem's target: its fixed goal where it declares one (grokking: 95 % validation accuracy), else
    the value of its target metric that half the AdamW seed runs reach."""
    if PROBLEMS[problem].goal is not None:
        return PROBLEMS[problem].goal
    cell = results.cells.get((problem, BASELINE))
    if cell is None or not cell.runs:
        return None
    return _kth_best(cell.finals(cell.problem.target), cell.problem.higher_is_better)


def run_to_target(run: Run, prob: Problem, goal: float) -> tuple[float, float]:
    """(steps, seconds) at which `run` first reaches `goal`; (inf, inf) for a miss."""
    for step, seconds, value in zip(run.curve["step"], run.curve["time"], run.curve[prob.target], strict=True):
        if value is not None and _better(value, goal, prob.higher_is_better):
            return float(cast(float, step)), float(cast(float, seconds))
        if value is None:  # diverged from here on
            break
    return math.inf, math.inf


def time_to_target(results: Results, problem: str, optimizer: str) -> tuple[float, float, int]:
    """(steps, seconds, seeds that hit) for a cell: the time by which half its seeds reach the target."""
    cell, goal = results.cells[(problem, optimizer)], target(results, problem)
    if goal is None or not cell.runs:
        return math.inf, math.inf, 0
    times = [run_to_target(r, cell.problem, goal) for r in cell.runs]
    k = math.ceil(len(times) / 2) - 1
    steps = sorted(t[0] for t in times)[k]
    seconds = sorted(t[1] for t in times)[k]
    return steps, seconds, sum(math.isfinite(t[0]) for t in times)


def ratios(results: Results, measure: str = "steps") -> dict[str, list[float]]:
    """Per optimizer, its performance ratio on each problem (inf for a miss)."""
    index = 0 if measure == "steps" else 1
    out: dict[str, list[float]] = {o: [] for o in results.optimizers}
    for p in results.plan.problems:
        times = {o: time_to_target(results, p, o)[index] for o in results.optimizers}
        fastest = min(times.values(), default=math.inf)
        for o, t in times.items():
            if not math.isfinite(fastest) or not math.isfinite(t):
                out[o].append(math.inf)
            else:
                out[o].append(t / fastest if fastest > 0 else (1.0 if t == 0 else math.inf))
    return out


def profile(rs: list[float], taus: list[float]) -> list[float]:
    """rho(tau): the share of problems on which the ratio is at most tau."""
    n = len(rs)
    return [sum(r <= tau for r in rs) / n if n else 0.0 for tau in taus]


def score(rs: list[float], tau_max: float = TAU_MAX) -> float:
    """Area under rho on [1, tau_max] divided by (tau_max - 1): 1 = fastest on every problem."""
    if not rs:
        return 0.0
    return sum(max(0.0, tau_max - max(r, 1.0)) for r in rs if r <= tau_max) / (len(rs) * (tau_max - 1.0))


def leaderboard(results: Results) -> list[dict[str, Any]]:
    """One row per optimizer, best score first: score, problems on target, median normalised rank."""
    rs = ratios(results)
    rows: list[dict[str, Any]] = []
    for o in results.optimizers:
        ranks = []
        for p in results.plan.problems:
            ranks.append(rank(results, p, o))
        finite = [r for r in ranks if r is not None]
        rows.append({
            "optimizer": o,
            "score": score(rs[o]),
            "on_target": sum(math.isfinite(r) for r in rs[o]),
            "problems": len(rs[o]),
            "median_rank": statistics.median(finite) if finite else None,
        })
    rows.sort(key=lambda row: (-row["score"], row["median_rank"] or math.inf, row["optimizer"]))
    return rows


def rank(results: Results, problem: str, optimizer: str) -> float | None:
    """The optimizer's rank (1 = best, ties averaged) by median final target metric on one problem."""
    prob = PROBLEMS[problem]
    medians = {}
    for o in results.optimizers:
        s = results.cells[(problem, o)].summary(prob.target)
        if s is not None:
            medians[o] = s[0]
    if optimizer not in medians:
        return None
    mine = medians[optimizer]
    sign = -1 if prob.higher_is_better else 1
    better = sum(sign * v < sign * mine for v in medians.values())
    ties = sum(v == mine for v in medians.values())
    return better + (ties + 1) / 2
