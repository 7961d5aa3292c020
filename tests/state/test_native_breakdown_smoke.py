"""benchmarks/native_breakdown.py still runs: a row per optimizer whose ratios are its own times' ratios."""

from __future__ import annotations

import pytest

from gradwise.state import native
from script_loader import load_script


@pytest.mark.skipif(not native.available(), reason="native kernel not built here")
def test_tiny_run_prints_codec_step_and_ratios(capsys):
    module = load_script("benchmarks/native_breakdown.py", "native_breakdown")
    # backend "eager": the 32-bit step without inductor's slow code generation
    assert module.main(["--values", "40960", "--repeats", "1", "--optimizers", "adamw,adan",
                        "--backend", "eager"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] in (["adamw"], ["adan"])}
    assert set(rows) == {"adamw", "adan"} and rows["adamw"][0] == "2" and rows["adan"][0] == "4"
    for cells in rows.values():
        codec, step, full, codec_ratio, step_ratio = map(float, cells[1:])
        assert 0 < codec and 0 < step and 0 < full
        assert abs(codec_ratio - codec / full) < 0.01 * codec_ratio + 0.01
        assert abs(step_ratio - step / full) < 0.01 * step_ratio + 0.01
