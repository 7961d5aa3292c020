"""benchmarks/step_speed.py --breakdown: the parts of a compiled step add up and the timing wrappers go away."""

from __future__ import annotations

from script_loader import load_script


def load_step_speed():
    return load_script("benchmarks/step_speed.py", "step_speed_breakdown")


def test_breakdown_times_every_part_cold_and_warm(capsys, monkeypatch):
    step_speed = load_step_speed()
    built = []  # what overhead_breakdown builds, to look at its compiled step afterwards
    make_compiled = step_speed.make_compiled
    monkeypatch.setattr(step_speed, "make_compiled", lambda *a, **k: built.append(make_compiled(*a, **k)) or built[-1])
    result = step_speed.overhead_breakdown("adamw", [(16,), (4, 4), (3,)], repeats=3, backend="eager",
                                           triad_elements=10_000)
    assert set(result) == {"cold", "warm"}
    for mode, row in result.items():
        # every timed part was reached (the wrappers saw calls), and none took longer than the whole step
        # ("step other" is the step less the parts, so the parts' sum is the step by construction: not checked)
        assert row["checks"] > 0 and row["nonfinite"] > 0 and row["call"] > 0
        assert row["call"] <= row["step"] and row["checks"] <= row["step"]
        assert ("floor" in row) == (mode == "cold")
    # the timing wrappers are gone: the compiled step's methods are the class's again
    (made,) = built
    assert not any(method in vars(made[0]._compiled) for method in step_speed.PHASES)
    table = step_speed.format_breakdown([("adamw", "tiny", result)])
    assert "adamw" in table and "cold" in table and "warm" in table

