"""benchmarks/state_speed.py still runs: a row per optimizer with positive times and the compiled 8/32 ratio."""

from __future__ import annotations

import torch

from gradwise.state import native
from script_loader import load_script


def rows_of(module, capsys, backend):
    module.main(["--shapes", "tiny", "--optimizers", "adamw", "--repeats", "1", "--warmup", "1", "--backend", backend])
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["adamw"]]
    (row,) = rows
    assert row[1] == "tiny" and len(row) == 2 + len(module.CONTENDERS) + 2
    cells = dict(zip((*module.CONTENDERS, "ratio", "inductor_ratio"), row[2:], strict=True))
    return cells, {k: float(v) for k, v in cells.items() if v != "-"}


def test_tiny_run_prints_a_row_with_every_contender_and_the_ratio(capsys, monkeypatch):
    module = load_script("benchmarks/state_speed.py", "state_speed")
    # the inductor rows with torch.compile as the identity: the same calls (native kernel, inductor's function run
    # uncompiled) without inductor's slow code generation
    monkeypatch.setattr(torch, "compile", lambda fn=None, **kwargs: fn)
    cells, times = rows_of(module, capsys, "inductor")
    missing = {"bnb-8"} | (set() if native.available() else {"inductor-8", "inductor_ratio"})
    assert set(cells) - set(times) <= missing  # the peer may be missing (bitsandbytes not installed)
    assert all(t > 0 for t in times.values())
    assert abs(times["ratio"] - times["compiled-8"] / times["compiled-32"]) < 0.01 * times["ratio"] + 0.01
    if native.available():
        inductor_ratio = times["inductor-8"] / times["compiled-32"]
        assert abs(times["inductor_ratio"] - inductor_ratio) < 0.01 * inductor_ratio + 0.01


def test_other_backends_have_no_inductor_column(capsys):
    # backend "eager": dynamo traces both flat paths, and the native kernel does not stand in: nothing to compare
    module = load_script("benchmarks/state_speed.py", "state_speed")
    cells, times = rows_of(module, capsys, "eager")
    assert cells["inductor-8"] == "-" and cells["inductor_ratio"] == "-"
    assert abs(times["ratio"] - times["compiled-8"] / times["compiled-32"]) < 0.01 * times["ratio"] + 0.01
