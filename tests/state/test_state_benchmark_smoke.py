"""benchmarks/state_memory.py still runs: --quick prints both tables with a row per optimizer and problem."""

from __future__ import annotations

from script_loader import load_script


def load_state_memory():
    return load_script("benchmarks/state_memory.py", "state_memory")


def test_quick_run_prints_memory_and_final_loss_tables(capsys):
    state_memory = load_state_memory()
    state_memory.main(["--quick", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    memory = {line.split()[0]: line.split()[1:] for line in lines[1:1 + len(state_memory.OPTIMIZERS)]}
    assert list(memory) == list(state_memory.OPTIMIZERS)
    assert [float(memory["adamw"][i]) for i in (0, 2)] == [8.0, 4.0] and float(memory["adamw"][4]) <= 2.1
    rows = [line.split() for line in lines if line.split()[:1] and line.split()[0] in state_memory.LOSS_PROBLEMS]
    assert [(r[0], r[1]) for r in rows] == [(p, o) for p in state_memory.LOSS_PROBLEMS
                                             for o in state_memory.LOSS_OPTIMIZERS]
    for r in rows:
        loss32, ratio8, verdict = float(r[2]), float(r[6]), r[7]
        assert 0 < loss32 < 10 and abs(ratio8 - 1) < 0.05  # two steps barely separate the storages
        assert verdict == ("pass" if ratio8 <= 1.02 else "FAIL")
        assert float(r[8]) > float(r[9]) > float(r[10]) > 0  # bytes per parameter: 32-bit > bf16 > 8-bit


def test_the_target_column_passes_at_two_percent_and_fails_above():
    state_memory = load_state_memory()
    row = state_memory.LossRow("p", "o", {"32-bit": 1.0, "bfloat16": 1.0, "8-bit": 1.019}, {})
    assert row.passes and not state_memory.LossRow("p", "o", {"32-bit": 1.0, "8-bit": 1.021}, {}).passes
