"""benchmarks/step_speed.py still runs: one row per registered optimizer, positive times, a finite floor ratio."""

from __future__ import annotations

import math
import types

import pytest
import torch

import gradwise
from gradwise.core.registry import entry
from script_loader import load_script


def load_step_speed():
    return load_script("benchmarks/step_speed.py", "step_speed")


def test_step_speed_table_has_a_row_per_optimizer_with_positive_times_and_finite_floor_ratio():
    step_speed = load_step_speed()
    report = step_speed.benchmark({"tiny": [(64,), (64,), (8, 8)]}, repeats=2, warmup=1, threads=1,
                                  triad_elements=1_000_000)
    optimizers = [n for n in gradwise.available() if entry(n).kind == "optimizer"]
    assert [r.optimizer for r in report.rows] == optimizers
    for row in report.rows:
        assert row.tensors == 3 and row.elements == 192
        assert row.eager_ms > 0 and row.fused_adamw_ms > 0 and row.floor_ms > 0
        assert math.isfinite(row.vs_floor) and row.vs_floor > 0
        assert row.peer_ms is None or row.peer_ms > 0
    assert report.bandwidth > 0
    table = step_speed.format_table(report)
    assert [line.split()[0] for line in table.splitlines()[-len(optimizers):]] == optimizers


def test_step_speed_times_the_compiled_contender_and_reports_its_path():
    step_speed = load_step_speed()
    # backend "eager": dynamo traces the chain (the benchmark's compiled path) without inductor's slow codegen
    report = step_speed.benchmark({"tiny": [(64,), (64,), (8, 8)]}, ["adamw"], repeats=2, warmup=1, threads=1,
                                  triad_elements=1_000_000, compile="eager", compile_warmup=1)
    (row,) = report.rows
    assert row.path == "flat" and row.fallback == ""
    assert row.compiled_ms > 0 and row.compile_s > 0 and row.eager_ms > 0
    assert math.isfinite(row.compiled_vs_floor) and row.compiled_vs_fused > 0
    assert report.backend == "eager"
    table = step_speed.format_table(report)
    line = next(line for line in table.splitlines() if line.split()[:2] == ["adamw", "tiny"])  # the table row
    assert line.split()[3] == "flat"
    only = step_speed.benchmark({"tiny": [(64,)]}, ["adamw"], repeats=1, warmup=0, threads=1,
                                triad_elements=100_000, compile="eager", eager=False, peers=False)
    assert only.rows[0].eager_ms is None and only.rows[0].compiled_ms > 0 and only.rows[0].vs_floor is None


def test_step_speed_targets_and_paths():
    step_speed = load_step_speed()

    def row(shape, optimizer="adamw", compiled=1.2, peer=3.0):
        return step_speed.Row(optimizer=optimizer, shape=shape, tensors=1, elements=1, state_tensors=2,
                              eager_ms=5.0, fused_adamw_ms=1.0, floor_ms=1.0, peer="p", peer_ms=peer,
                              compiled_ms=compiled, path="flat")

    assert [ok for _, ok in step_speed.target_checks(row("100x100k"))] == [True, True]
    assert [ok for _, ok in step_speed.target_checks(row("100x100k", compiled=1.5, peer=2.9))] == [False, False]
    assert [ok for _, ok in step_speed.target_checks(row("1000x1k", compiled=1.9, peer=2.0))] == [True, True]
    assert [ok for _, ok in step_speed.target_checks(row("transformer", compiled=2.1, peer=2.0))] == [False]
    assert step_speed.target_checks(row("100x100k", optimizer="sgd", peer=None)) == []
    assert "1 PASS, 1 FAIL" in step_speed.format_targets(
        step_speed.Report(1, "", "", "", 1.0, [row("20x100k", compiled=1.5, peer=4.0)]))

    def compiled(*kinds):
        return types.SimpleNamespace(_compiled=types.SimpleNamespace(functions={(0, k): object() for k in kinds}))

    assert step_speed.compiled_path(compiled("flat"), False) == "flat"
    assert step_speed.compiled_path(compiled("flat", "each"), True) == "flat+per-param+eager"
    assert step_speed.compiled_path(compiled(), True) == "eager-fallback"


def test_step_speed_fresh_gradients_hand_each_step_new_tensors_with_the_same_values():
    step_speed = load_step_speed()
    params = step_speed.make_params([(4,), (2, 3), (5,)])
    params[2].grad = None  # a parameter without a gradient keeps none
    give = step_speed.fresh_gradients(params)
    seen = [p.grad for p in params[:2]]
    for _ in range(3):
        give()
        assert all(p.grad is not g and torch.equal(p.grad, g) for p, g in zip(params[:2], seen, strict=True))
        assert params[2].grad is None
        seen = [p.grad for p in params[:2]]
    report = step_speed.benchmark({"tiny": [(64,), (8, 8)]}, ["adamw"], repeats=2, warmup=1, threads=1,
                                  triad_elements=100_000, compile="eager", compile_warmup=1, peers=False,
                                  grads="fresh")
    (row,) = report.rows
    assert report.grads == "fresh" and row.compiled_ms > 0 and row.path == "flat"
    assert "gradients: fresh" in step_speed.format_table(report)
    with pytest.raises(ValueError, match="grads"):
        step_speed.benchmark({"tiny": [(64,)]}, ["adamw"], grads="stale")
