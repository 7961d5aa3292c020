"""The sampling suite: rows, files, plots and the two seed-paper claims at quick scale."""

from __future__ import annotations

import csv
import json
import math

import pytest

from gradwise.lab import sampling_suite as suite
from gradwise.lab.sampling_suite import Config, momentum_verdict, run_suite

pytest.importorskip("matplotlib")

QUICK = dict(samples=300, seeds=2, nfe=(5, 10, 20, 50))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Two cheap mixtures, a few methods, written out: the shape of a full run at a fraction of its cost."""
    config = Config.quick(**QUICK, mixtures=("easy", "ill"),
                          methods=("heun", "dpmpp_2m", "hb_dpmpp_0.8", "plms", "hb_plms4_0.8", "restart"))
    results = run_suite(config)
    out = tmp_path_factory.mktemp("sampling")
    return results, suite.write_outputs(results, out), out


def test_rows_cover_every_method_budget_seed_and_mixture(small):
    results, _, _ = small
    config = results.config
    expected = {(m, label, b, s) for m in config.mixtures for label in config.methods for b in config.nfe
                for s in range(config.seeds)}
    # restart's minimum cost is 2 * 2 * 3 + 1 = 13 NFE: budgets 5 and 10 are skipped, not run over budget
    expected -= {(m, "restart", b, s) for m, _, b, s in expected if b < 13}
    assert {(r["mixture"], r["method"], r["budget"], r["seed"]) for r in results.rows} == expected
    assert all(r["nfe"] <= r["budget"] for r in results.rows)
    assert all(set(suite.METRICS) <= set(r) for r in results.rows)
    assert set(results.floors) == {"easy", "ill"} and all(0 < f < 1 for f in results.floors.values())


def test_outputs_are_written_and_read_back(small):
    results, paths, out = small
    for name in ("json", "csv", "html", "png_easy", "png_ill"):
        assert paths[name].exists() and paths[name].stat().st_size > 0, name
    assert paths["png_easy"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with paths["csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(results.rows)
    assert {"method", "mixture", "nfe", "seed", "swd", "weight_error", "mean_error", "outlier_rate"} <= set(rows[0])
    payload = json.loads(paths["json"].read_text())
    assert [v["claim"] for v in payload["verdicts"]][:1] == ["momentum-divergence"]
    again = suite.load_results(out)
    assert again.config == results.config and len(again.rows) == len(results.rows)
    assert again.rows[0]["swd"] == pytest.approx(results.rows[0]["swd"])
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<link" not in page and "<script" not in page
    assert "momentum-divergence" in page and "Protocol" in page


def test_error_falls_with_nfe_for_second_order_methods(small):
    results, _, _ = small
    for mixture in ("easy", "ill"):
        for label in ("heun", "dpmpp_2m"):
            curve = results.median(mixture, label)
            swd = [v for _, v in curve]
            assert swd[-1] < 0.5 * swd[0], (mixture, label, curve)
            assert swd[-1] < 2.0 * results.floors[mixture], (mixture, label, curve)   # near the floor at 50


def test_momentum_claim_holds_on_the_ill_conditioned_mixture(small):
    verdict = momentum_verdict(small[0], "ill")
    assert verdict.held is True, verdict.evidence
    for budget in (5, 10):
        figures = verdict.figures[f"NFE {budget}"]
        for base, damped in suite.MOMENTUM_PAIRS:
            assert figures[f"{damped} outlier_rate"] < figures[f"{base} outlier_rate"]
    # PLMS at 5 NFE diverges on most samples; heavy ball keeps more than half of them in the data's bulk
    assert verdict.figures["NFE 5"]["plms outlier_rate"] > 0.8
    assert verdict.figures["NFE 5"]["hb_plms4_0.8 outlier_rate"] < 0.5


def test_adaptive_claim_holds_in_high_dimension():
    config = Config.quick(samples=300, seeds=1, nfe=(20, 50), mixtures=("highdim",),
                          methods=("euler_maruyama", "adaptive"), tolerances=suite.TOLERANCES[:1],
                          em_extra=(100, 150, 200))
    verdict = suite.adaptive_verdict(run_suite(config), "highdim")
    assert verdict.held is True, verdict.evidence
    figures = verdict.figures
    assert figures["adaptive_nfe"] < 100 <= figures["euler_maruyama_nfe"]
    em = {n: (swd, out) for n, swd, out in figures["euler_maruyama_curve"]}
    assert em[50][1] > 2 * suite.ADAPTIVE_OUTLIERS       # fixed steps still leave artifacts at 50 NFE


def test_claims_report_not_checked_when_the_run_lacks_their_methods(small):
    verdict = suite.adaptive_verdict(small[0], "ill")
    assert verdict.held is None and verdict.status == "not checked"
    assert momentum_verdict(small[0], "highdim").held is None


def test_nfe_to_target_and_bad_configs():
    points = [(10, 0.5, 0.3), (20, 0.2, 0.05), (50, 0.1, 0.01)]
    assert suite.nfe_to_target(points, 0.25) == 20
    assert suite.nfe_to_target(points, 0.25, 0.02) == 50
    assert math.isinf(suite.nfe_to_target(points, 0.05))
    with pytest.raises(ValueError, match="methods"):
        Config(methods=("nope",))
    with pytest.raises(ValueError, match="mixtures"):
        Config(mixtures=("flat",))


def test_command_line_quick_run(tmp_path):
    suite.main(["--quick", "--out", str(tmp_path), "--samples", "50", "--seeds", "1", "--nfe", "10,20",
                "--mixtures", "easy", "--methods", "euler,heun"])
    assert (tmp_path / "sampling.html").exists() and (tmp_path / "quality_easy.png").exists()
    assert len(json.loads((tmp_path / "rows.json").read_text())["rows"]) == 4
