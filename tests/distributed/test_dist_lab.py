"""The lab's distributed loop (gradwise.lab.distributed) on 2 gloo processes, and `lab run --distributed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import distributed_harness as H
import pytest
import torch
from typer.testing import CliRunner

from gradwise.cli import app
from gradwise.lab import distributed as D

PROBLEM, STEPS, SYNC = "logreg-digits", 30, 10  # 650 parameters; steps a multiple of DiLoCo's H


def all_methods(rank: int, world: int) -> dict:
    out = {}
    for method in D.METHODS:
        settings = D.Settings(method, steps=STEPS, sync_every=SYNC, ratio=0.01)
        result, model = D.train_model(PROBLEM, settings)
        out[method] = {"rows": result.rows, "difference": result.replica_difference, "final": result.final,
                       "params": H.flat(model), "parameters": result.parameters}
    return out


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    return H.run(all_methods, world=2, limit=120)


def test_ddp_loss_falls_and_counts_a_float32_all_reduce(runs):
    rows = runs[0]["ddp"]["rows"]
    assert len(rows) == STEPS
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    n = runs[0]["ddp"]["parameters"]
    assert [r["bytes_sent"] for r in rows] == [4 * n * (t + 1) for t in range(STEPS)]
    assert rows[-1]["dense_bytes"] == 4 * n * STEPS


def _bytes_per_step_after(rows: list[dict], warmup: int) -> float:
    return (rows[-1]["bytes_sent"] - rows[warmup - 1]["bytes_sent"]) / (len(rows) - warmup)


@pytest.mark.parametrize(("method", "factor"), [("topk", 10), ("sign", 4), ("onebit", 4)])
def test_compressed_methods_send_less_after_warm_up(runs, method, factor):
    dense = _bytes_per_step_after(runs[0]["ddp"]["rows"], STEPS // 2)
    sent = _bytes_per_step_after(runs[0][method]["rows"], STEPS // 2)  # past topk's and onebit's warm-ups
    assert sent * factor <= dense, (method, sent, dense)


@pytest.mark.parametrize("method", D.METHODS)
def test_replicas_stay_identical(runs, method):
    assert torch.equal(runs[0][method]["params"], runs[1][method]["params"])
    assert runs[0][method]["difference"] == 0.0
    assert torch.isfinite(runs[0][method]["params"]).all()


def test_only_rank_0_holds_the_rows(runs):
    assert runs[1]["ddp"]["rows"] == [] and runs[1]["ddp"]["final"] == {}
    assert set(runs[0]["ddp"]["final"]) >= {"loss", "val_loss", "accuracy"}


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="method='allreduce'"):
        D.Settings("allreduce", steps=10)
    with pytest.raises(ValueError, match="ratio"):
        D.Settings("topk", steps=10, ratio=0.0)
    with pytest.raises(ValueError, match="onebit"):
        D.Settings("onebit", steps=10, optimizer="sgd")


def test_cli_without_torchrun_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    result = CliRunner().invoke(app, ["lab", "run", "--distributed", "ddp", "--problems", PROBLEM,
                                      "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "torchrun" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_under_torchrun_writes_the_rows(tmp_path):
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(H.free_port()), "-m", "gradwise.cli", "lab", "run", "--distributed", "ddp",
               "--problems", PROBLEM, "--steps", "4", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    saved = json.loads((tmp_path / f"distributed-{PROBLEM}-ddp-w2.json").read_text())
    assert saved["world_size"] == 2 and saved["settings"]["method"] == "ddp"
    assert [r["step"] for r in saved["rows"]] == [1, 2, 3, 4]
    assert (tmp_path / f"distributed-{PROBLEM}-ddp-w2.csv").read_text().startswith("step,loss,bytes_sent")
    assert "4 steps" in done.stdout
