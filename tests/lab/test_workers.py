"""Two `gradwise lab worker` processes share one stored plan: every run done once, budgets exact.

On SQLite always; on PostgreSQL when a server is reachable at $GRADWISE_TEST_POSTGRES (default
postgresql://postgres@127.0.0.1:5432/postgres). Outside CI the PostgreSQL case skips with a message
when no server answers; in CI (environment variable CI set) it fails instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from gradwise.lab import runner
from gradwise.lab.runner import Plan, open_storage

POSTGRES = os.environ.get("GRADWISE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture
def postgres_url():
    try:
        admin = sqlalchemy.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text("select 1"))
    except Exception as error:  # no driver, no server, refused: all mean "not reachable"
        message = f"no PostgreSQL server reachable at {POSTGRES} (set GRADWISE_TEST_POSTGRES): {error}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message.splitlines()[0])
    name = f"gradwise_lab_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"create database {name}"))
    yield admin.url.set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"drop database {name} with (force)"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'lab.db'}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite_url", "postgres_url"])
def test_two_workers_share_a_plan_and_never_repeat_a_run(backend, request):
    url = request.getfixturevalue(backend)
    others = [n for n in runner.benchmarkable()[0] if n != "adamw"][:1]
    plan = Plan.make("quick", problems=["belief-quadratic"], optimizers=["adamw", *others], trials=5, seeds=2)
    store = open_storage(url)
    runner.save_plan(store, plan)
    command = [sys.executable, "-m", "gradwise.cli", "lab", "worker", "--storage", url, "--poll", "0.2"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    for w, output in zip(workers, outputs, strict=True):
        assert w.returncode == 0, output
    owners = Counter()
    for p in plan.problems:
        for o in plan.optimizers:
            tune = optuna.load_study(study_name=plan.tune_study(p, o), storage=store)
            done = tune.get_trials(states=(TrialState.COMPLETE,))
            assert len(done) == plan.trials, "the tuning budget must be met exactly"
            seeds = optuna.load_study(study_name=plan.seeds_study(p, o), storage=store)
            finished = seeds.get_trials(states=(TrialState.COMPLETE,))
            assert sorted(t.user_attrs["claim"]["seed"] for t in finished) == list(range(plan.seeds))
            for t in done + finished:
                owners[t.user_attrs["claim"]["owner"]] += 1
            assert not tune.get_trials(states=(TrialState.RUNNING,))
    assert set(owners) == {f"{runner.socket.gethostname()}:{w.pid}" for w in workers}, owners
