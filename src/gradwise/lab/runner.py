"""Training runs, the tuner and the storage: every trial and every seed run is an Optuna trial.

Layout in the storage (one SQLite file in --out, or any SQLAlchemy URL):
  study "gradwise-lab"                    user attr "plan": the suite, problems, optimizers, budget, seeds
  study "<problem>/<optimizer>/tune-<T>"  the T tuning trials (params lr [, weight_decay]; value: objective)
  study "<problem>/<optimizer>/seeds-<T>" one trial per evaluation seed of the best tuned configuration
Each finished trial carries user attr "run" (curves, trajectory, final metrics, wall time). A trial is
claimed before it runs (user attr "claim": owner host:pid, start time, seed) and told the moment it
finishes, so an interrupted lab loses at most the runs in flight: on restart, RUNNING trials whose owner
process is gone (same host) or that started more than `stale_after` seconds ago (other hosts) are failed,
and the work resumes with exactly the runs that have no COMPLETE trial. Several `lab worker` processes
can share one storage: a (problem, optimizer) pair's tuning trials run one at a time, in one worker at a
time, so the tuner's history and the tuned configuration do not depend on the number of workers; claims are
ordered by trial number, so a budget is never exceeded and a seed is never run twice even when two workers
race for it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import optuna
import sqlalchemy
import torch
from optuna.trial import TrialState

import gradwise as gw

from .environment import environment
from .problems import PROBLEMS, SUITES, Problem, problem

log = logging.getLogger(__name__)

META_STUDY = "gradwise-lab"
BASELINE = "adamw"
TUNING_SEED = 0  # every tuning trial trains with this seed
EVAL_SEED_OFFSET = 1000  # evaluation seed i trains with seed 1000 + i: never a seed the tuner saw
WEIGHT_DECAY_RANGE = (1e-5, 1e-1)
# Registered optimizers the lab never benchmarks, with the reason (samplers are skipped by their `kind`).
EXCLUDED: dict[str, str] = {}
# Variants: "<optimizer>+<variant>[+<variant>...]" runs the optimizer with engine options switched on, at their
# papers' defaults. The 8-bit variant quantises every state tensor (state_min_size=0): the lab's models are
# small, and the paper's default (tensors under 4096 elements stay 32-bit) would leave nearly all of them as is.
VARIANTS: dict[str, dict[str, Any]] = {
    "grokfast": {"grokfast": "ema"},  # Lee et al. 2024: EMA filter, alpha=0.98, lamb=2.0
    "cautious": {"cautious": True},  # Liang et al. 2024: C-<optimizer>
    "8bit": {"state_bits": 8, "state_min_size": 0},  # Dettmers et al. 2022: block-wise 8-bit state
}

Event = Callable[[str, dict[str, Any]], None]


def _quiet(event: str, data: dict[str, Any]) -> None:
    return None


# -- which optimizers ---------------------------------------------------------------------------------
def split_variant(name: str) -> tuple[str, dict[str, Any]]:
    """("adamw", {"cautious": True}) for "adamw+cautious": the registered name and the options its variants add."""
    base, *variants = name.split("+")
    options: dict[str, Any] = {}
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"optimizers={name!r}: variant {v!r} is unknown: choose from {', '.join(VARIANTS)}")
        options.update(VARIANTS[v])
    return base, options


def benchmarkable() -> tuple[list[str], dict[str, str]]:
    """The registered optimizers the lab runs by default, and the skipped ones with the reason."""
    chosen, skipped = [], {}
    for e in gw.entries():
        kind = getattr(e, "kind", "optimizer")
        if kind != "optimizer":
            skipped[e.name] = f"registered as a {kind}, not an optimizer"
        elif e.name in EXCLUDED:
            skipped[e.name] = EXCLUDED[e.name]
        else:
            chosen.append(e.name)
    return chosen, skipped


def resolve_optimizers(names: Sequence[str] | None) -> list[str]:
    """Validate a user's optimizer list (None: every benchmarkable one); the AdamW baseline comes first."""
    chosen, skipped = benchmarkable()
    if names:
        known = gw.available()
        out = []
        for name in names:
            key = name.strip().lower()
            base = split_variant(key)[0]
            if base not in known:
                gw.get(base)  # raises the registry's error, with its suggestion
            if base in skipped:
                raise ValueError(f"optimizers={name!r} cannot be benchmarked: {skipped[base]}")
            if key not in out:
                out.append(key)
        chosen = out
    return [BASELINE] + [n for n in chosen if n != BASELINE]


# -- the plan ---------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What a lab run does: every (problem, optimizer) pair is tuned with `trials` trials, then re-run
    over `seeds` seeds with its best configuration."""

    suite: str
    problems: list[str]
    optimizers: list[str]
    trials: int
    seeds: int
    tune_weight_decay: bool
    created: float = field(default_factory=time.time)
    average: str | None = None  # weight averaging whose model is evaluated beside the raw one (parse_average)

    def __post_init__(self) -> None:
        for name in self.problems:
            problem(name)
        parse_average(self.average, 100)
        if self.trials < 1:
            raise ValueError(f"trials={self.trials} is out of range: need at least 1 tuning trial")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} is out of range: need at least 1 seed")

    @classmethod
    def make(cls, suite: str = "quick", problems: Sequence[str] | None = None,
             optimizers: Sequence[str] | None = None, trials: int | None = None, seeds: int | None = None,
             tune_weight_decay: bool | None = None, average: str | None = None) -> Plan:
        s = SUITES.get(suite)
        if s is None:
            raise ValueError(f"suite={suite!r} is unknown: choose from {', '.join(SUITES)}")
        chosen = resolve_optimizers(optimizers)
        if optimizers is None:  # the suite's variants join the default list (the paper suite's claims need them)
            chosen += [v for v in s.variants if v not in chosen]
        return cls(
            suite=suite,
            problems=list(problems or s.problems),
            optimizers=chosen,
            trials=s.trials if trials is None else trials,
            seeds=s.seeds if seeds is None else seeds,
            tune_weight_decay=s.tune_weight_decay if tune_weight_decay is None else tune_weight_decay,
            average=average or None,
        )

    @property
    def _suffix(self) -> str:
        return ("-wd" if self.tune_weight_decay else "") + (f"-avg-{self.average}" if self.average else "")

    def tune_study(self, problem_name: str, optimizer: str) -> str:
        return f"{problem_name}/{optimizer}/tune-{self.trials}{self._suffix}"

    def seeds_study(self, problem_name: str, optimizer: str) -> str:
        return f"{problem_name}/{optimizer}/seeds-{self.trials}{self._suffix}"

    @property
    def units(self) -> int:
        return len(self.problems) * len(self.optimizers) * (self.trials + self.seeds)


# -- storage ----------------------------------------------------------------------------------------
def storage_url(out: str | Path | None, storage: str | None = None) -> str:
    """The storage a lab uses: `storage` if given, else a SQLite file `lab.db` in `out`."""
    if storage:
        return storage
    if out is None:
        raise ValueError("storage=None and out=None: give an output folder or a storage URL")
    Path(out).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(out).resolve() / 'lab.db'}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not url.startswith("sqlite"):
        return optuna.storages.RDBStorage(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
    # Write-ahead log with synchronous=NORMAL: a commit survives the process being killed (not a power
    # cut), at a fraction of the cost of a full fsync per trial; workers on one host read while one writes.
    sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()
    return storage


def _sqlite_pragmas(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def save_plan(storage: optuna.storages.BaseStorage, plan: Plan) -> None:
    study = optuna.create_study(study_name=META_STUDY, storage=storage, load_if_exists=True)
    study.set_user_attr("plan", asdict(plan))


def load_plan(storage: optuna.storages.BaseStorage) -> Plan:
    try:
        study = optuna.load_study(study_name=META_STUDY, storage=storage)
    except KeyError as error:
        raise ValueError("this storage holds no lab plan: start one with `gradwise lab run`") from error
    return Plan(**study.user_attrs["plan"])


def record_environment(storage: optuna.storages.BaseStorage, threads: int | None) -> None:
    """Note this worker's machine (versions, CPU, threads) in the lab's meta study, keyed by owner."""
    study = optuna.load_study(study_name=META_STUDY, storage=storage)
    study.set_user_attr(f"environment {_owner()}", environment(threads))


def record_error(storage: optuna.storages.BaseStorage, optimizer: str, message: str) -> None:
    study = optuna.load_study(study_name=META_STUDY, storage=storage)
    errors = dict(study.user_attrs.get("errors", {}))
    errors[optimizer] = message
    study.set_user_attr("errors", errors)


# -- one training run -------------------------------------------------------------------------------
@dataclass
class RunResult:
    """One training run: metric curves at the evaluation steps, the 2-D trajectory, the final metrics."""

    curve: dict[str, list[float | None]]
    trajectory: list[tuple[float, float]] | None
    final: dict[str, float | None]
    diverged: bool
    wall_time: float
    error: str | None = None

    def objective(self, metric: str) -> float:
        value = self.final.get(metric)
        return math.inf if self.diverged or value is None or not math.isfinite(value) else value


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def hyper_parameters(optimizer: str, params: dict[str, float]) -> dict[str, Any]:
    """The arguments given to `gw.create`: the tuned lr, weight decay (tuned, else the problem's, else 0) where
    accepted, any other fixed hyper-parameter in `params` (a claim's reproduction sets betas), and the options
    of the optimizer's variants."""
    import inspect

    base, options = split_variant(optimizer)
    accepted = inspect.signature(gw.get(base)).parameters
    hyper: dict[str, Any] = {"lr": params["lr"]}
    if "weight_decay" in accepted:
        hyper["weight_decay"] = params.get("weight_decay", 0.0)
    hyper.update({k: v for k, v in params.items() if k not in ("lr", "weight_decay")})
    return {**hyper, **options}


def build_optimizer(optimizer: str, model: torch.nn.Module, params: dict[str, float]) -> torch.optim.Optimizer:
    """`gw.create` for an optimizer name that may carry variants ("adamw+cautious")."""
    return gw.create(split_variant(optimizer)[0], model, **hyper_parameters(optimizer, params))


def parse_average(spec: str | None, steps: int) -> Callable[[torch.nn.Module], Any] | None:
    """The weight averager a spec asks for, as a factory of `gradwise.averaging` objects, or None.

    "ema[:DECAY]" (default 0.999), "swa[:START]" (running mean from step START; a number below 1 is a share
    of the steps; default 0.5), "lawa[:K[:EVERY]]" (mean of the last K checkpoints taken every EVERY steps;
    defaults 5 and steps // 20)."""
    if not spec:
        return None
    from .. import averaging

    kind, *args = spec.strip().lower().split(":")
    try:
        numbers = [float(a) for a in args]
    except ValueError:
        numbers = None
    limits = {"ema": 1, "swa": 1, "lawa": 2}
    if kind not in limits or numbers is None or len(numbers) > limits[kind]:
        raise ValueError(f"average={spec!r} is not understood: use ema[:DECAY], swa[:START] or lawa[:K[:EVERY]]")
    if kind == "ema":
        decay = numbers[0] if numbers else 0.999
        return lambda model: averaging.EMA(model, decay)
    if kind == "swa":
        start = numbers[0] if numbers else 0.5
        first = int(start * steps) if start < 1 else int(start)
        return lambda model: averaging.SWA(model, start=max(0, first))
    k = int(numbers[0]) if numbers else 5
    every = int(numbers[1]) if len(numbers) > 1 else max(1, steps // 20)
    return lambda model: averaging.LAWA(model, k, every=every)


def _evaluate_with(inst: Any, module: torch.nn.Module) -> dict[str, float]:
    """The instance's evaluation with `module` (an averaged copy of its model) in the model's place."""
    model = inst.model
    inst.model = module
    try:
        return inst.evaluate()
    finally:
        inst.model = model


def take_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """opt.step(), handing the batch's loss to optimizers that read it (the Polyak step sizes)."""
    if getattr(opt, "needs_loss", False):
        cast(Any, opt).step(loss=loss.detach())  # a gradwise optimizer's step(loss=...), not torch's signature
    else:
        opt.step()


def train(prob: Problem, optimizer: str, params: dict[str, float], seed: int,
          average: str | None = None) -> RunResult:
    """Train `prob` with `optimizer` (a registered name, possibly with variants: "adamw+cautious") at `params`
    (lr, optional weight_decay; the problem's weight decay otherwise) for prob.steps steps. With `average`
    (see `parse_average`), a weight average of the model is kept beside it and every evaluation also records
    the averaged model's metrics, as "avg_<metric>"."""
    inst = prob.instance(seed)
    opt = build_optimizer(optimizer, inst.model, {"weight_decay": prob.weight_decay, **params})
    make_average = parse_average(average, prob.steps)
    averager = make_average(inst.model) if make_average else None
    metrics = list(prob.metrics) + ([f"avg_{m}" for m in prob.metrics] if averager is not None else [])
    curve: dict[str, list[float | None]] = {"step": [], "time": [], **{m: [] for m in metrics}}
    trajectory: list[Any] | None = [inst.point()] if prob.kind == "function" else None  # (x, y) points
    elapsed, diverged = 0.0, False

    def record(step: int) -> bool:
        values = inst.evaluate()
        if averager is not None:
            averaged = _evaluate_with(inst, averager.module)
            values.update({f"avg_{m}": averaged[m] for m in prob.metrics})
        curve["step"].append(step)
        curve["time"].append(elapsed)
        for m in metrics:
            curve[m].append(_finite(values[m]))
        return all(math.isfinite(values[m]) for m in prob.metrics)

    record(0)
    for step in range(1, prob.steps + 1):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = inst.train_loss(step - 1)
        loss.backward()
        take_step(opt, loss)
        elapsed += time.perf_counter() - start
        if averager is not None:
            averager.update(inst.model)
        if trajectory is not None:
            trajectory.append(inst.point())
        if step % prob.eval_every == 0 or step == prob.steps:
            if not record(step):
                diverged = True
                break
    final = {m: curve[m][-1] for m in metrics}
    return RunResult(curve, trajectory, final, diverged, elapsed)


# -- claims, staleness -------------------------------------------------------------------------------
def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(trial: optuna.trial.FrozenTrial, stale_after: float) -> bool:
    """A RUNNING trial whose owner is gone: a dead process on this host (or this very process, which
    runs one trial at a time and calls this between trials), or a claim older than `stale_after` s."""
    claim = trial.user_attrs.get("claim")
    if claim is None:  # asked but never claimed: its owner died between the two writes
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
        return time.time() - started > 60
    host, _, pid = claim["owner"].rpartition(":")
    if host == socket.gethostname():
        return int(pid) == os.getpid() or not _alive(int(pid))
    return time.time() - claim["started"] > stale_after


def reclaim(study: optuna.Study, stale_after: float) -> int:
    """Fail the stale RUNNING trials of `study`; returns how many."""
    count = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_stale(t, stale_after):
            try:
                study.tell(t.number, state=TrialState.FAIL)
                count += 1
            except (ValueError, RuntimeError):  # finished meanwhile by its owner or reclaimed by another
                pass
    return count


def _claim(study: optuna.Study, seed: int | None = None) -> optuna.Trial:
    trial = study.ask()
    trial.set_user_attr("claim", {"owner": _owner(), "started": time.time(), "seed": seed})
    return trial


def _stable_seed(*parts: Any) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def best_trial(trials: Sequence[optuna.trial.FrozenTrial], budget: int) -> optuna.trial.FrozenTrial:
    """The best of the first `budget` COMPLETE trials (by number); ties go to the earlier trial."""
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)[:budget]
    if not done:
        raise ValueError("no finished tuning trial")
    return min(done, key=lambda t: (t.value, t.number))


# -- the two phases ---------------------------------------------------------------------------------
@dataclass
class Lab:
    """Runs a plan against a storage. `on_event(name, data)` hears "start", "trial", "seed", "skip"."""

    storage: optuna.storages.BaseStorage
    plan: Plan
    on_event: Event = _quiet
    stale_after: float = 1800.0
    threads: int | None = 1

    def __post_init__(self) -> None:
        self._studies: dict[str, optuna.Study] = {}

    def _study(self, name: str) -> optuna.Study:
        """The study `name`, created the first time it is needed; kept, since opening one costs a failed INSERT
        and several reads, and every poll of the plan opens two per (problem, optimizer)."""
        if name not in self._studies:
            self._studies[name] = optuna.create_study(study_name=name, storage=self.storage, load_if_exists=True,
                                                      direction="minimize")
        return self._studies[name]

    def done_units(self) -> int:
        """How many trials and seed runs of the plan are already finished (for progress bars)."""
        names = set(optuna.get_all_study_names(self.storage))  # names only: summaries read every study's best trial
        count = 0
        for p in self.plan.problems:
            for o in self.plan.optimizers:
                for name, cap in ((self.plan.tune_study(p, o), self.plan.trials),
                                  (self.plan.seeds_study(p, o), self.plan.seeds)):
                    if name in names:
                        trials = self._study(name).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                        count += min(cap, len(trials))
        return count

    def tune(self, prob: Problem, optimizer: str) -> str:
        """Run tuning trials until the budget is met. Returns "done", or "busy" when other workers hold
        the remaining trials."""
        name, budget = self.plan.tune_study(prob.name, optimizer), self.plan.trials
        startup = min(10, max(2, budget // 3))
        while True:
            study = self._study(name)
            reclaim(study, self.stale_after)
            trials = study.get_trials(deepcopy=False)
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            busy = [t for t in trials if t.state == TrialState.RUNNING]
            if len(done) >= budget:
                return "done"
            if busy:
                # One tuning trial at a time per (problem, optimizer): each proposal sees every earlier result,
                # so the tuned configuration does not depend on how many workers ran or in which order
                # (workers take other pairs meanwhile). Two workers proposing at once saw different histories.
                return "busy"
            trial = _claim(study)
            # Seeded by the study and the number of finished trials (samplers draw lazily, at suggest time):
            # the same history gives the same proposal, whatever trials failed or raced before.
            study.sampler = optuna.samplers.TPESampler(seed=_stable_seed(name, len(done)),
                                                       n_startup_trials=startup)
            now = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            finished = sum(t.state == TrialState.COMPLETE for t in now)
            if finished != len(done) or any(t.number < trial.number and t.state == TrialState.RUNNING for t in now):
                study.tell(trial, state=TrialState.FAIL)  # another worker claimed this pair first
                return "busy"
            try:
                params = {"lr": trial.suggest_float("lr", *prob.lr_range, log=True)}
                if self.plan.tune_weight_decay:
                    params["weight_decay"] = trial.suggest_float("weight_decay", *WEIGHT_DECAY_RANGE, log=True)
                result = train(prob, optimizer, params, TUNING_SEED, self.plan.average)
                trial.set_user_attr("run", asdict(result))
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            study.tell(trial, result.objective(prob.objective))
            self.on_event("trial", {"problem": prob.name, "optimizer": optimizer, "number": len(done) + 1,
                                    "of": budget, "params": params, "value": result.objective(prob.objective)})

    def evaluate(self, prob: Problem, optimizer: str) -> str:
        """Re-run the best tuned configuration over the plan's seeds. Returns "done", "busy" (other
        workers hold the remaining seeds) or "blocked" (tuning is not finished)."""
        tuning = self._study(self.plan.tune_study(prob.name, optimizer)).get_trials(deepcopy=False)
        if sum(t.state == TrialState.COMPLETE for t in tuning) < self.plan.trials:
            return "blocked"
        params = dict(best_trial(tuning, self.plan.trials).params)
        study = self._study(self.plan.seeds_study(prob.name, optimizer))
        while True:
            reclaim(study, self.stale_after)
            trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            taken = {t.user_attrs["claim"]["seed"] for t in trials if "claim" in t.user_attrs}
            finished = {t.user_attrs["claim"]["seed"] for t in trials if t.state == TrialState.COMPLETE}
            missing = [s for s in range(self.plan.seeds) if s not in taken]
            if not missing:
                return "done" if len(finished & set(range(self.plan.seeds))) == self.plan.seeds else "busy"
            seed = missing[0]
            trial = _claim(study, seed)
            rivals = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
            if any(t.number < trial.number and t.user_attrs.get("claim", {}).get("seed") == seed for t in rivals):
                study.tell(trial, state=TrialState.FAIL)
                continue
            try:
                result = train(prob, optimizer, params, EVAL_SEED_OFFSET + seed, self.plan.average)
                trial.set_user_attr("run", {**asdict(result), "params": params, "seed": seed})
            except BaseException:
                study.tell(trial, state=TrialState.FAIL)
                raise
            study.tell(trial, result.objective(prob.objective))
            self.on_event("seed", {"problem": prob.name, "optimizer": optimizer, "seed": seed,
                                   "of": self.plan.seeds, "value": result.objective(prob.objective)})

    def preflight(self, optimizer: str) -> str | None:
        """Build the optimizer once on the first problem; the error message if it cannot be built."""
        prob = PROBLEMS[self.plan.problems[0]]
        try:
            build_optimizer(optimizer, prob.instance(0).model, {"lr": 1e-3})
        except (TypeError, ValueError) as error:
            return f"{type(error).__name__}: {error}"
        return None

    def run(self, poll: float = 2.0) -> None:
        """Do every unit of the plan not yet finished; with other workers, wait until all are done."""
        previous = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            record_environment(self.storage, self.threads)
            broken = {}
            for optimizer in self.plan.optimizers:
                message = self.preflight(optimizer)
                if message:
                    broken[optimizer] = message
                    record_error(self.storage, optimizer, message)
                    log.warning("skipping optimizer %s: %s", optimizer, message)
                    self.on_event("skip", {"optimizer": optimizer, "reason": message})
            optimizers = [o for o in self.plan.optimizers if o not in broken]
            skipped_units = len(broken) * len(self.plan.problems) * (self.plan.trials + self.plan.seeds)
            self.on_event("start", {"total": self.plan.units - skipped_units, "done": self.done_units()})
            while True:
                states: list[str] = []
                for name in self.plan.problems:
                    prob = PROBLEMS[name]
                    for optimizer in optimizers:
                        states.append(self.tune(prob, optimizer))
                        states.append(self.evaluate(prob, optimizer))
                if all(s == "done" for s in states):
                    return
                time.sleep(poll)  # other workers hold the remaining runs
        finally:
            torch.set_num_threads(previous)


def run_lab(plan: Plan, storage: str, on_event: Event = _quiet, threads: int | None = 1, workers: int = 1) -> None:
    """Save `plan` in `storage` (a URL) and run it to completion, resuming whatever is already stored.

    workers > 1 starts workers - 1 `gradwise lab worker` processes on the same storage beside this one (one
    per core is the useful most); each run is still done exactly once (the claims of `Lab`), and this call
    returns when every run is finished and every worker has exited."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} is out of range: workers must be an integer >= 1")
    store = open_storage(storage)
    save_plan(store, plan)
    command = [sys.executable, "-m", "gradwise.cli", "lab", "worker", "--storage", storage, "--poll", "0.5"]
    if threads:
        command += ["--threads", str(threads)]
    helpers = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for _ in range(workers - 1)]
    try:
        Lab(store, plan, on_event, threads=threads).run(poll=0.5 if helpers else 2.0)
    finally:
        failures = []
        for helper in helpers:
            _, err = helper.communicate()
            if helper.returncode != 0:
                failures.append(f"lab worker {helper.pid} exited with {helper.returncode}: {err[-2000:]}")
    if failures:
        raise RuntimeError("; ".join(failures))


def run_worker(storage: str, on_event: Event = _quiet, threads: int | None = 1,
               stale_after: float = 1800.0, poll: float = 2.0) -> Plan:
    """Join the lab stored at `storage` (a URL): work on its plan until every run is finished."""
    store = open_storage(storage)
    plan = load_plan(store)
    Lab(store, plan, on_event, stale_after=stale_after, threads=threads).run(poll=poll)
    return plan


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
