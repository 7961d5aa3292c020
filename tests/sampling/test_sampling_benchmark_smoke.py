"""benchmarks/sampling_quality.py still runs: a tiny table and the claims lines."""

from script_loader import load_script


def test_sampling_quality_benchmark_runs_on_a_tiny_budget():
    module = load_script("benchmarks/sampling_quality.py", "sampling_quality")
    lines = []
    labels = ["dpmpp_2m", "hb_dpmpp_0.8", "euler_maruyama", "langevin_x2", "restart", "adaptive"]
    results = module.benchmark(["easy"], labels, [10, 30], samples=200, tolerances=[(0.2, 0.05)], echo=lines.append)
    rows = results["easy"]
    assert set(rows) == set(labels)
    assert [n for n, _ in rows["dpmpp_2m"]] == [10, 30]
    assert [n for n, _ in rows["euler_maruyama"]] == [10, 30, 200, 500]
    assert [n for n, _ in rows["restart"]] == [29]            # 10 is below restart's minimum cost
    assert any(line.startswith("exact samples") for line in lines)
    claims = module.report_claims(results)
    assert len(claims) == 2 and all(c.endswith((": yes", ": no")) for c in claims)
