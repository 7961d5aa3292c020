"""benchmarks/step_speed.py --breakdown: the parts of a compiled step add up and the timing wrappers go away."""

from __future__ import annotations

from script_loader import load_script


def load_step_speed():
    return load_script("benchmarks/step_speed.py", "step_speed_breakdown")


def test_breakdown_times_every_part_cold_and_warm(capsys):
    step_speed = load_step_speed()
    result = step_speed.overhead_breakdown("adamw", [(16,), (4, 4), (3,)], repeats=3, backend="eager",
                                           triad_elements=10_000)
    assert set(result) == {"cold", "warm"}
    for mode, row in result.items():
        assert row["checks"] > 0 and row["nonfinite"] > 0 and row["call"] > 0
        parts = row["checks"] + row["nonfinite"] + row["call"] + row["group other"] + row["step other"]
        assert abs(parts - row["step"]) < 1e-9 * max(row["step"], 1.0)
        assert ("floor" in row) == (mode == "cold")
    table = step_speed.format_breakdown([("adamw", "tiny", result)])
    assert "adamw" in table and "cold" in table and "warm" in table

