"""The `gradwise` command end to end on a tiny suite, with typer's CliRunner."""

from __future__ import annotations

import pytest

pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402

from gradwise.cli import app  # noqa: E402
from gradwise.lab import runner  # noqa: E402

cli = CliRunner()


def test_lab_run_then_report_then_list(tmp_path):
    others = [n for n in runner.benchmarkable()[0] if n != "adamw"][:1]
    optimizers = ",".join(["adamw", *others])
    args = ["lab", "run", "--suite", "quick", "--problems", "belief-quadratic,logreg-cancer",
            "--optimizers", optimizers, "--trials", "2", "--seeds", "2", "--out", str(tmp_path)]
    result = cli.invoke(app, args, env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    report = tmp_path / "report.html"
    assert report.exists() and (tmp_path / "lab.db").exists()
    assert "report:" in result.output and "gradwise lab: suite quick" in result.output
    for name in optimizers.split(","):
        assert name in result.output and name in report.read_text()

    again = cli.invoke(app, args, env={"COLUMNS": "160"})  # resumes: nothing left to run
    assert again.exit_code == 0, again.output
    assert "tuning" not in again.output

    rendered = cli.invoke(app, ["lab", "report", str(tmp_path)], env={"COLUMNS": "160"})
    assert rendered.exit_code == 0, rendered.output
    assert "adamw" in rendered.output

    listed = cli.invoke(app, ["lab", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0
    for word in ("rosenbrock", "cnn-digits", "quick", "standard", "adamw"):
        assert word in listed.output


def test_bad_arguments_say_what_is_wrong(tmp_path):
    result = cli.invoke(app, ["lab", "run", "--suite", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "huge" in result.output
    result = cli.invoke(app, ["lab", "run", "--optimizers", "adamm", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "adamm" in result.output
    result = cli.invoke(app, ["lab", "report", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "lab.db" in result.output
    result = cli.invoke(app, ["lab", "worker", "--storage", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 2 and "no lab plan" in result.output


def test_lab_claims_prints_verdicts_and_fails_when_one_did_not_hold(monkeypatch):
    from gradwise.lab import claims

    result = cli.invoke(app, ["lab", "claims", "nope"])
    assert result.exit_code == 2 and "nope" in result.output and "grokfast-grokking" in result.output
    picked = []

    def fake(names=None):
        picked.append(names)
        return [(claims.CLAIMS[1], "held", "F1 evidence"), (claims.CLAIMS[2], "did not hold", "grok [miss, 5]")]

    monkeypatch.setattr(claims, "reproductions", fake)
    result = cli.invoke(app, ["lab", "claims", "diffgrad-f1,grokfast-grokking"], env={"COLUMNS": "200"})
    assert picked == [["diffgrad-f1", "grokfast-grokking"]]
    assert result.exit_code == 1 and "did not hold" in result.output and "F1 evidence" in result.output
    assert "[miss, 5]" in result.output  # evidence is text, never rich markup


def test_lab_run_with_weight_averaging_prints_both_losses(tmp_path):
    result = cli.invoke(app, ["lab", "run", "--average", "median", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "median" in result.output
    args = ["lab", "run", "--problems", "belief-abs", "--optimizers", "adamw+cautious", "--trials", "1",
            "--seeds", "1", "--average", "ema:0.9", "--out", str(tmp_path)]
    result = cli.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "raw and averaged model" in result.output and "adamw+cautious" in result.output


def test_lab_sampling_is_mounted_and_refuses_an_unknown_method(tmp_path):
    result = cli.invoke(app, ["lab", "sampling", "--out", str(tmp_path), "--methods", "no_such_method"])
    assert result.exit_code != 0
    assert "no_such_method" in result.output
    assert not (tmp_path / "rows.json").exists()


def test_lab_run_with_two_workers_does_every_run_once(tmp_path, monkeypatch):
    """--workers 2 starts one `gradwise lab worker` beside the run, which exits cleanly (run_lab raises
    otherwise): the plan is finished and no run is done twice. (Which process does how many runs depends on
    how fast the worker starts, so it is not asserted.)"""
    import subprocess

    import optuna
    from optuna.trial import TrialState

    started = []
    real_popen = subprocess.Popen

    def popen(command, *args, **kwargs):
        started.append(command)
        return real_popen(command, *args, **kwargs)

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    out = tmp_path / "lab"
    result = cli.invoke(app, ["lab", "run", "--problems", "mlp-digits", "--optimizers", "adamw,lion",
                              "--trials", "4", "--seeds", "3", "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    store = runner.open_storage(runner.storage_url(out))
    owners = set()
    for summary in optuna.get_all_study_summaries(store):
        if summary.study_name == runner.META_STUDY:
            continue
        trials = optuna.load_study(study_name=summary.study_name, storage=store).get_trials(deepcopy=False)
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        trials = [t for t in trials if t.state == TrialState.COMPLETE]  # a lost race leaves a FAIL trial
        expected = 4 if "/tune-" in summary.study_name else 3
        assert len(trials) == expected, summary.study_name
        owners |= {t.user_attrs["claim"]["owner"] for t in trials}
    assert 1 <= len(owners) <= 2
    assert len(started) == 1
    assert started[0][started[0].index("worker"):][:3] == ["worker", "--storage", runner.storage_url(out)]
    assert cli.invoke(app, ["lab", "run", "--out", str(tmp_path / "x"), "--workers", "0"]).exit_code != 0
