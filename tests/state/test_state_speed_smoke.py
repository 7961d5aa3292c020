"""benchmarks/state_speed.py still runs: a row per optimizer with positive times and the compiled 8/32 ratio."""

from __future__ import annotations

from script_loader import load_script


def test_tiny_run_prints_a_row_with_every_contender_and_the_ratio(capsys):
    module = load_script("benchmarks/state_speed.py", "state_speed")
    # backend "eager": dynamo traces both flat paths without inductor's slow code generation
    module.main(["--shapes", "tiny", "--optimizers", "adamw", "--repeats", "1", "--warmup", "1", "--backend", "eager"])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["adamw"]]
    (row,) = rows
    assert row[1] == "tiny" and len(row) == 2 + len(module.CONTENDERS) + 2
    cells = dict(zip((*module.CONTENDERS, "ratio", "inductor_ratio"), row[2:], strict=True))
    times = {k: float(v) for k, v in cells.items() if v != "-"}
    assert set(cells) - set(times) <= {"bnb-8"}  # only the peer may be missing (bitsandbytes not installed)
    assert all(t > 0 for t in times.values())
    assert abs(times["ratio"] - times["compiled-8"] / times["compiled-32"]) < 0.01 * times["ratio"] + 0.01
    inductor_ratio = times["inductor-8"] / times["compiled-32"]
    assert abs(times["inductor_ratio"] - inductor_ratio) < 0.01 * inductor_ratio + 0.01
