"""benchmarks/state_speed.py still runs: a row per optimizer with positive times and the compiled 8/32 ratio."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "state_speed.py"


def test_tiny_run_prints_a_row_with_every_contender_and_the_ratio(capsys):
    spec = importlib.util.spec_from_file_location("state_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    # backend "eager": dynamo traces both flat paths without inductor's slow code generation
    module.main(["--shapes", "tiny", "--optimizers", "adamw", "--repeats", "1", "--warmup", "1", "--backend", "eager"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["adamw"]]
    (row,) = rows
    assert row[1] == "tiny" and len(row) == 2 + len(module.CONTENDERS) + 1
    times = [float(x) for x in row[2:]]
    assert all(t > 0 for t in times)
    assert abs(times[-1] - times[1] / times[0]) < 0.01 * times[-1] + 0.01
