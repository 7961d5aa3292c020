"""benchmarks/step_speed.py still runs: one row per registered optimizer, positive times, a finite floor ratio."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import gradwise
from gradwise.core.registry import entry

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "step_speed.py"


def load_step_speed():
    spec = importlib.util.spec_from_file_location("step_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


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
