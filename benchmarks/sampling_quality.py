"""Sample quality against NFE for every gradwise.sampling method on exact Gaussian-mixture test beds.

    .venv/bin/python benchmarks/sampling_quality.py                 # full table (a few minutes on 2 cores)
    .venv/bin/python benchmarks/sampling_quality.py --quick         # fewer samples and NFE points

Mixtures: "easy" (3 separated modes, 2-D), "ill" (two modes with std 0.03 and 1.0, anisotropic, 4-D),
"highdim" (4 modes in 64-D). Fixed-step methods get the largest Karras (rho=7) schedule whose NFE fits
the budget (`steps_for_nfe`); "adaptive" is swept over tolerances and reports the NFE it used. Columns:
SW = sliced 2-Wasserstein distance to exact samples, w = largest mode-weight error, mu = largest per-mode
mean error, cov = largest per-mode covariance error, out = outlier rate (0.01 is exact; divergence
artifacts raise it). The first row of each table is exact samples: the Monte-Carlo floor of each metric
(SW against a stratified exact reference; its floor is dominated by the mode-count noise of the samples).
Then the two claims of the seed papers are checked at small scale and printed with their evidence.
The method table and the runner live in `gradwise.lab.sampling_suite`, whose `gradwise lab sampling` command
runs the same grid over seeds and writes rows, plots and an HTML page.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from gradwise.lab.sampling_suite import METHODS, TOLERANCES, mixtures, run_method


def run(mixture, x, label, nfe=None, tol=None, seed=2):
    return run_method(mixture, x, label, nfe=nfe, tol=tol, seed=seed)


def fmt(q) -> str:
    cells = []
    for v in (q.sliced_wasserstein, q.weight_error, q.mean_error, q.cov_error, q.outlier_rate):
        cells.append(f"{v:8.3f}" if math.isfinite(v) and v < 1e4 else f"{'inf' if not math.isfinite(v) else '>1e4':>8}")
    return " ".join(cells)


def benchmark(mixture_names, labels, budgets, samples, tolerances=TOLERANCES, echo=print) -> dict:
    """Run every method label at every NFE budget on each mixture, echoing table lines; returns
    {mixture: {label: [(nfe, SampleQuality), ...]}}."""
    beds = mixtures()
    header = f"{'method':16s} {'NFE':>5s} {'SW':>8s} {'w':>8s} {'mu':>8s} {'cov':>8s} {'out':>8s}"
    results: dict = {}
    for name in mixture_names:
        mixture = beds[name]
        rows = results.setdefault(name, {})
        x = 80.0 * torch.randn(samples, mixture.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        echo(f"\n== {name}: {mixture.num_modes} modes in {mixture.dim}-D, {samples} samples ==")
        echo(header)
        exact = mixture.sample(samples, torch.Generator().manual_seed(7))
        echo(f"{'exact samples':16s} {'-':>5s} {fmt(mixture.evaluate(exact))}   "
             f"(SW floor, mean of 3 draws: {mixture.sliced_wasserstein_floor(samples):.3f})")
        t0 = time.perf_counter()
        for label in labels:
            if label == "adaptive":
                for tol in tolerances:
                    nfe, q = run(mixture, x, label, tol=tol)
                    rows.setdefault("adaptive", []).append((nfe, q))
                    echo(f"{f'adaptive r{tol[0]:g}':16s} {nfe:5d} {fmt(q)}")
                continue
            extra = [200, 500] if label == "euler_maruyama" and "adaptive" in labels else []
            for budget in list(budgets) + extra:
                try:
                    nfe, q = run(mixture, x, label, nfe=budget)
                except ValueError:       # budget below the method's minimum cost
                    continue
                rows.setdefault(label, []).append((nfe, q))
                echo(f"{label:16s} {nfe:5d} {fmt(q)}")
        echo(f"({time.perf_counter() - t0:.1f} s)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--nfe", type=int, nargs="*", default=[5, 10, 20, 50, 100])
    parser.add_argument("--mixtures", nargs="*", default=["easy", "ill", "highdim"])
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (tiny tensors: 1 is fastest)")
    parser.add_argument("--quick", action="store_true", help="1000 samples and NFE 5, 10, 20, 50")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.nfe = 1000, [5, 10, 20, 50]
    torch.set_num_threads(args.threads)
    results = benchmark(args.mixtures, args.methods, args.nfe, args.samples)
    print("\n== claims ==")
    for line in report_claims(results):
        print(line)


def report_claims(results) -> list[str]:
    """The seed papers' claims, checked on the benchmark's results, one line each ending in yes/no."""
    lines = []
    for name, rows in results.items():
        # 1. momentum reduces the divergence of high-order solvers at low NFE (Wizadwongsa et al. 2023)
        for base, damped in (("plms", "hb_plms4_0.8"), ("plms", "ghvb_3.5"), ("dpmpp_2m", "hb_dpmpp_0.8")):
            if base in rows and damped in rows:
                low = [(a, b) for a, b in zip(rows[base], rows[damped], strict=False) if a[0] <= 10]
                for (n0, q0), (n1, q1) in low:
                    verdict = "yes" if q1.outlier_rate <= q0.outlier_rate else "no"
                    lines.append(f"{name:8s} momentum damps divergence, {base} vs {damped} at NFE {n0}/{n1}: "
                                 f"outliers {q0.outlier_rate:.3f} -> {q1.outlier_rate:.3f}, "
                                 f"SW {q0.sliced_wasserstein:.3f} -> {q1.sliced_wasserstein:.3f}: {verdict}")
        # 2. the adaptive solver reaches a target quality with fewer NFE than fixed-step Euler-Maruyama
        #    (target: the SW of the loosest tolerance, plus 10%; Euler-Maruyama also runs at 200 and 500 NFE)
        if "adaptive" in rows and "euler_maruyama" in rows:
            ad_nfe, ad_q = rows["adaptive"][0]
            target = 1.1 * ad_q.sliced_wasserstein
            em = min((n for n, q in rows["euler_maruyama"] if q.sliced_wasserstein <= target), default=None)
            verdict = "yes" if em is None or ad_nfe < em else "no"
            lines.append(f"{name:8s} adaptive reaches SW <= {target:.3f} with NFE {ad_nfe}; Euler-Maruyama "
                         f"needs NFE {em if em is not None else '> 500'}: {verdict}")
    return lines


if __name__ == "__main__":
    main()
