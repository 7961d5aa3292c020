"""The runner: storage, equal budgets, resume after an interruption, stale claims, worker sharing."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

import gradwise as gw
from gradwise.lab import runner
from gradwise.lab.runner import Lab, Plan, best_trial, open_storage, resolve_optimizers, run_lab, storage_url

REAL_TRAIN = runner.train


def tiny_plan(**kw) -> Plan:
    args = dict(problems=["belief-quadratic"], optimizers=["adamw"], trials=4, seeds=2)
    args.update(kw)
    return Plan.make("quick", **args)


class Interrupt:
    """Wraps runner.train: counts every call and every finished call, raises KeyboardInterrupt on call N."""

    def __init__(self, stop_at: int | None) -> None:
        self.stop_at, self.calls, self.finished = stop_at, 0, []
        self.real = REAL_TRAIN

    def __call__(self, prob, optimizer, params, seed, average=None):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        result = self.real(prob, optimizer, params, seed, average)
        self.finished.append((prob.name, optimizer, tuple(sorted(params.items())), seed))
        return result


def complete(store, name):
    study = optuna.load_study(study_name=name, storage=store)
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


@pytest.mark.parametrize("stop_at", [3, 6])  # in the middle of tuning; in the middle of the seed runs
def test_interrupted_run_resumes_without_repeating_a_finished_run(tmp_path, monkeypatch, stop_at):
    plan = tiny_plan()
    url = storage_url(tmp_path)
    first = Interrupt(stop_at)
    monkeypatch.setattr(runner, "train", first)
    with pytest.raises(KeyboardInterrupt):
        run_lab(plan, url)
    assert len(first.finished) == stop_at - 1
    store = open_storage(url)
    interrupted = optuna.load_study(study_name=plan.tune_study("belief-quadratic", "adamw"), storage=store)
    assert not interrupted.get_trials(states=(TrialState.RUNNING,)), "an interrupted trial must not stay RUNNING"

    second = Interrupt(None)
    monkeypatch.setattr(runner, "train", second)
    run_lab(plan, url)
    units = plan.trials + plan.seeds
    assert len(first.finished) + len(second.finished) == units  # every unit finished exactly once
    assert second.calls == units - (stop_at - 1)
    assert not set(first.finished) & set(second.finished)
    tuned = complete(store, plan.tune_study("belief-quadratic", "adamw"))
    seeds = complete(store, plan.seeds_study("belief-quadratic", "adamw"))
    assert len(tuned) == plan.trials
    assert sorted(t.user_attrs["run"]["seed"] for t in seeds) == [0, 1]

    third = Interrupt(None)  # a finished lab started again does nothing
    monkeypatch.setattr(runner, "train", third)
    run_lab(plan, url)
    assert third.calls == 0


def test_results_are_persisted_as_each_run_finishes(tmp_path, monkeypatch):
    plan = tiny_plan()
    url = storage_url(tmp_path)
    seen = []

    def spy(event, data):  # at each event, a fresh connection must already see the run
        store = open_storage(url)
        name = (plan.tune_study if event == "trial" else plan.seeds_study)("belief-quadratic", "adamw")
        if event in ("trial", "seed"):
            seen.append(len(complete(store, name)))

    run_lab(plan, url, on_event=spy)
    assert seen == [1, 2, 3, 4, 1, 2]


def test_stale_claim_of_a_dead_process_is_failed_and_redone(tmp_path):
    plan = tiny_plan(trials=2, seeds=1)
    url = storage_url(tmp_path)
    store = open_storage(url)
    runner.save_plan(store, plan)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    study = optuna.create_study(study_name=plan.tune_study("belief-quadratic", "adamw"), storage=store)
    ghost = study.ask()
    ghost.set_user_attr("claim", {"owner": f"{runner.socket.gethostname()}:{dead.stdout.strip()}",
                                  "started": 0.0, "seed": None})
    alive = study.ask()  # a live worker on another host, claimed just now: must be left alone
    alive.set_user_attr("claim", {"owner": "elsewhere:1", "started": runner.time.time(), "seed": None})
    assert runner.reclaim(study, stale_after=1800) == 1
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.FAIL, 1: TrialState.RUNNING}
    assert runner.reclaim(study, stale_after=0) == 1  # the other host's claim, once it is too old
    Lab(store, plan).run()
    assert len(complete(store, plan.tune_study("belief-quadratic", "adamw"))) == 2


def test_budget_is_the_first_trials_by_number():
    def frozen(number, value):
        return optuna.trial.create_trial(params={"lr": 0.1}, distributions={
            "lr": optuna.distributions.FloatDistribution(1e-4, 1, log=True)}, value=value)

    trials = [frozen(i, v) for i, v in enumerate([3.0, 2.0, 2.0, 0.5])]
    for i, t in enumerate(trials):
        t.number = i
    assert best_trial(trials, 3).number == 1  # trial 3 is over budget; ties go to the earlier trial
    assert best_trial(trials, 4).number == 3
    with pytest.raises(ValueError, match="no finished"):
        best_trial([], 3)


def test_diverged_trial_scores_inf_and_counts(tmp_path):
    result = runner.train(runner.PROBLEMS["rosenbrock"], "adamw", {"lr": 1e9}, seed=0)
    if not result.diverged:  # adam steps are bounded by lr: a huge lr throws the point far away
        assert result.final["loss"] > 1e6
    else:
        assert result.objective("loss") == math.inf


def test_optimizer_selection_skips_samplers_and_puts_the_baseline_first():
    chosen, skipped = runner.benchmarkable()
    for e in gw.entries():
        assert (e.name in skipped) == (e.kind != "optimizer" or e.name in runner.EXCLUDED)
    assert "adamw" in chosen
    assert resolve_optimizers(None)[0] == "adamw"
    others = [n for n in chosen if n != "adamw"]
    if others:
        assert resolve_optimizers([others[0].upper()]) == ["adamw", others[0]]
    with pytest.raises(ValueError, match="unknown optimizer"):
        resolve_optimizers(["adamm"])
    for name in skipped:
        with pytest.raises(ValueError, match=f"optimizers='{name}' cannot be benchmarked"):
            resolve_optimizers([name])


def test_plan_validates_its_numbers():
    with pytest.raises(ValueError, match="trials=0"):
        tiny_plan(trials=0)
    with pytest.raises(ValueError, match="seeds=0"):
        tiny_plan(seeds=0)
    with pytest.raises(ValueError, match="problem='nope'"):
        tiny_plan(problems=["nope"])
    with pytest.raises(ValueError, match="storage=None and out=None"):
        storage_url(None)


def test_an_optimizer_that_cannot_be_built_is_reported_not_run(tmp_path, monkeypatch):
    others = [n for n in runner.benchmarkable()[0] if n != "adamw"]
    if not others:
        pytest.skip("needs a second registered optimizer")
    plan = tiny_plan(optimizers=["adamw", others[0]], trials=1, seeds=1)
    real = runner.hyper_parameters
    monkeypatch.setattr(runner, "hyper_parameters", lambda name, params: (
        {**real(name, params), "bogus": 1} if name == others[0] else real(name, params)))
    events = []
    url = storage_url(tmp_path)
    run_lab(plan, url, on_event=lambda e, d: events.append((e, d.get("optimizer"))))
    assert ("skip", others[0]) in events
    assert [o for e, o in events if e in ("trial", "seed")] == ["adamw", "adamw"]
    meta = optuna.load_study(study_name=runner.META_STUDY, storage=open_storage(url)).user_attrs
    assert "bogus" in meta["errors"][others[0]]
    assert f"environment {runner.socket.gethostname()}:{os.getpid()}" in meta


@pytest.mark.parametrize("name", ["sps", "alrsmag"])
def test_optimizers_that_read_the_loss_get_it_from_the_lab(name):
    """The Polyak step sizes need each batch's loss: the lab's training loop hands it to them."""
    prob = runner.problem("logreg-cancer")
    result = runner.train(prob, name, {"lr": 0.5}, seed=0)
    assert result.error is None and not result.diverged
    losses = [v for v in result.curve["loss"] if v is not None]
    assert losses[-1] < losses[0]


def _tuning_history(store, plan):
    history = {}
    for p in plan.problems:
        for o in plan.optimizers:
            tune = sorted(complete(store, plan.tune_study(p, o)), key=lambda t: t.number)
            seeds = sorted(complete(store, plan.seeds_study(p, o)), key=lambda t: t.user_attrs["claim"]["seed"])
            history[(p, o)] = ([(t.params["lr"], t.value) for t in tune], [t.value for t in seeds])
    return history


def test_two_workers_tune_exactly_as_one_process_does(tmp_path):
    """The tuned configuration must not depend on how many workers ran: two `lab worker` processes started
    together on one plan give every pair the same tuning history (proposals and values) and the same seed
    results as one process alone."""
    plan = tiny_plan(optimizers=["adamw", "sgd", "lion"], trials=5, seeds=2)
    alone = str(tmp_path / "alone.db")
    run_lab(plan, f"sqlite:///{alone}")
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    store = open_storage(shared)
    runner.save_plan(store, plan)
    command = [sys.executable, "-m", "gradwise.cli", "lab", "worker", "--storage", shared, "--poll", "0.1"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    for w in workers:
        output = w.communicate(timeout=300)[0]
        assert w.returncode == 0, output
    owners = {t.user_attrs["claim"]["owner"] for p in plan.problems for o in plan.optimizers
              for t in complete(store, plan.tune_study(p, o))}
    assert _tuning_history(store, plan) == _tuning_history(open_storage(f"sqlite:///{alone}"), plan), owners
