"""The lab's "sampling" suite: sample quality against NFE for every diffusion sampler on exact test beds.

Protocol
--------
1. Test beds (`gradwise.sampling.testbed`): "easy" (3 separated modes in 2-D), "ill" (two modes with std
   0.03 and 1.0, anisotropic, 4-D) and "highdim" (4 modes in 64-D); their denoisers are exact, so every
   error below is the sampler's, not a network's.
2. Methods: every entry of `METHODS` (each `gradwise.sampling.sample` method, some with two option sets)
   at every NFE budget (5, 10, 20, 50, 100); fixed-step methods get the largest Karras (rho=7,
   sigma_max=80) schedule whose cost fits the budget (`steps_for_nfe`), so the NFE recorded is at most
   the budget (a budget below a method's minimum cost is skipped). "adaptive" chooses its own steps: it
   is swept over `TOLERANCES` and records the NFE it used. Euler-Maruyama also runs at the larger
   budgets of `Config.em_extra` so that the adaptive claim can find where it reaches the target.
3. Seeds: seed s fixes the starting noise x = 80 z (the same x for every method: common random
   numbers), the sampler's generator (seed 10000 + s) and the exact reference of the sliced Wasserstein
   distance (stratified, drawn with seed s).
4. Rows: one per (method, mixture, budget, seed): the NFE used, SWD (sliced 2-Wasserstein distance to
   exact samples), the largest mode-weight, per-mode mean and covariance errors, and the outlier rate
   (share of samples less likely than 99% of exact samples: 0.01 is exact, divergence artifacts raise
   it). The SWD floor of each mixture (exact samples against the reference, mean of 3 draws) is recorded:
   no sampler can beat it with this many samples.
5. Claims (`verdicts`): the seed papers' two claims, judged on the medians over seeds; see
   `momentum_verdict` and `adaptive_verdict`.

Outputs in the output folder: rows.json (configuration, floors, rows, verdicts), rows.csv, one
quality_<mixture>.png per mixture and sampling.html (one self-contained page, figures embedded).

    gradwise lab sampling --out DIR [--quick]
    python -m gradwise.lab.sampling_suite --out DIR [--quick]
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch

from ..sampling import (
    GaussianMixture,
    easy_mixture,
    high_dim_mixture,
    ill_conditioned_mixture,
    karras_sigmas,
    sample,
    steps_for_nfe,
)
from .claims import Claim

PROTOCOL = __doc__ or ""

METHODS: dict[str, tuple[str, dict[str, Any]]] = {   # label: (method, options)
    "euler": ("euler", {}), "heun": ("heun", {}), "ddim": ("ddim", {}), "ddim_eta1": ("ddim", {"eta": 1.0}),
    "dpmpp_2m": ("dpmpp_2m", {}), "deis": ("deis", {}), "deis_2": ("deis", {"order": 2}),
    "dpmpp_2m_sde": ("dpmpp_2m_sde", {}), "plms": ("plms", {}),
    "euler_maruyama": ("euler_maruyama", {}),
    "langevin_pc": ("langevin", {"predictor": "euler_maruyama"}),
    "langevin_x2": ("langevin", {"corrector_steps": 2}),
    "hb_dpmpp_0.8": ("hb", {"base": "dpmpp_2m", "beta": 0.8}),
    "hb_plms4_0.8": ("hb", {"base": "plms", "order": 4, "beta": 0.8}),
    "ghvb_1.8": ("ghvb", {"order": 2, "beta": 0.8}), "ghvb_3.5": ("ghvb", {"order": 4, "beta": 0.5}),
    "restart": ("restart", {}),
    "adaptive": ("adaptive", {}),
}
TOLERANCES: tuple[tuple[float, float], ...] = (   # (rtol, atol) of "adaptive", loosest first
    (0.2, 0.05), (0.1, 0.02), (0.05, 0.0078), (0.02, 0.004), (0.01, 0.002))
SIGMA_MAX = 80.0
MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "easy": lambda: easy_mixture(2), "ill": lambda: ill_conditioned_mixture(4), "highdim": lambda: high_dim_mixture(64),
}
METRICS = ("swd", "weight_error", "mean_error", "cov_error", "outlier_rate")


def mixtures() -> dict[str, GaussianMixture]:
    """The three test beds, by name."""
    return {name: make() for name, make in MIXTURES.items()}


def run_method(mixture: GaussianMixture, x: torch.Tensor, label: str, nfe: int | None = None,
               tol: tuple[float, float] | None = None, seed: int = 2) -> tuple[int, Any]:
    """Sample `mixture` from x (at noise level 80) with the method `label` of `METHODS` at an NFE budget
    (fixed-step methods) or a (rtol, atol) tolerance ("adaptive"); returns (NFE used, SampleQuality).
    Raises ValueError when the budget is below the method's minimum cost."""
    method, options = METHODS[label]
    if method == "adaptive":
        if tol is None:
            raise ValueError("label 'adaptive' needs tol=(rtol, atol), not an NFE budget")
        sigmas = karras_sigmas(2, sigma_max=SIGMA_MAX)
        options = {**options, "rtol": tol[0], "atol": tol[1]}
    else:
        if nfe is None:
            raise ValueError(f"label {label!r} needs an NFE budget nfe=")
        sigmas = karras_sigmas(steps_for_nfe(method, nfe, **options), sigma_max=SIGMA_MAX)
    result = sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(seed), **options)
    return result.nfe, mixture.evaluate(result.sample)


# -- configuration and runs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """What one suite run covers. `Config.full()` is the reported run, `Config.quick()` a minute-scale one."""

    samples: int = 2000
    seeds: int = 3
    nfe: tuple[int, ...] = (5, 10, 20, 50, 100)
    mixtures: tuple[str, ...] = ("easy", "ill", "highdim")
    methods: tuple[str, ...] = tuple(METHODS)
    tolerances: tuple[tuple[float, float], ...] = TOLERANCES[:4]
    em_extra: tuple[int, ...] = (150, 200, 300, 500)   # Euler-Maruyama budgets beyond `nfe` (adaptive claim)

    @classmethod
    def full(cls, **changes: Any) -> Config:
        return dataclasses.replace(cls(), **changes)

    @classmethod
    def quick(cls, **changes: Any) -> Config:
        base = cls(samples=500, seeds=2, nfe=(5, 10, 20, 50), tolerances=TOLERANCES[:2], em_extra=(100, 150, 200))
        return dataclasses.replace(base, **changes)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods {unknown} are not suite methods; accepted: {list(METHODS)}")
        unknown = [m for m in self.mixtures if m not in MIXTURES]
        if unknown:
            raise ValueError(f"mixtures {unknown} are not test beds; accepted: {list(MIXTURES)}")
        if self.samples < 10:
            raise ValueError(f"samples={self.samples} must be >= 10")
        if self.seeds < 1:
            raise ValueError(f"seeds={self.seeds} must be >= 1")
        if not self.nfe or min(self.nfe) < 1:
            raise ValueError(f"nfe={self.nfe} must be a non-empty list of budgets >= 1")

    def units(self) -> list[tuple[str, str, int | None, tuple[float, float] | None, int]]:
        """Every (mixture, method, budget, tolerance, seed) to run, cheapest mixture first."""
        out: list[tuple[str, str, int | None, tuple[float, float] | None, int]] = []
        for mixture in self.mixtures:
            for label in self.methods:
                settings: list[tuple[int | None, tuple[float, float] | None]]
                if label == "adaptive":
                    settings = [(None, tol) for tol in self.tolerances]
                else:
                    budgets = list(self.nfe)
                    if label == "euler_maruyama" and "adaptive" in self.methods:
                        budgets += [b for b in self.em_extra if b not in budgets]
                    settings = [(b, None) for b in budgets]
                for budget, tol in settings:
                    for seed in range(self.seeds):
                        out.append((mixture, label, budget, tol, seed))
        return out


@dataclass
class SuiteResults:
    """Rows (one dict per run; see the module docstring), the SWD floor of each mixture, the configuration."""

    config: Config
    rows: list[dict[str, Any]]
    floors: dict[str, float]
    seconds: float = 0.0

    def curve(self, mixture: str, label: str, metrics: Sequence[str] = ("swd",)) -> list[tuple[float, ...]]:
        """(median NFE, median of each metric) over seeds for each budget (or tolerance) of `label`, by NFE."""
        groups: dict[Any, list[dict[str, Any]]] = {}
        for row in self.rows:
            if row["mixture"] == mixture and row["method"] == label:
                groups.setdefault(row["budget"] if row["budget"] is not None else row["rtol"], []).append(row)
        points = [(statistics.median(r["nfe"] for r in g), *(_median([r[m] for r in g]) for m in metrics))
                  for g in groups.values()]
        return sorted(points)

    def median(self, mixture: str, label: str, metric: str = "swd") -> list[tuple[float, float]]:
        """(median NFE, median metric) over seeds for each budget (or tolerance) of `label`, by NFE."""
        return self.curve(mixture, label, (metric,))  # type: ignore[return-value]


def _median(values: Sequence[float]) -> float:
    """Median that treats nan as +inf (a run that broke down is worse than any finite one)."""
    return statistics.median([math.inf if math.isnan(v) else v for v in values])


_MIXTURE_CACHE: dict[str, GaussianMixture] = {}


def _mixture(name: str) -> GaussianMixture:
    if name not in _MIXTURE_CACHE:
        _MIXTURE_CACHE[name] = MIXTURES[name]()
    return _MIXTURE_CACHE[name]


def start_noise(mixture: GaussianMixture, samples: int, seed: int) -> torch.Tensor:
    """The starting point shared by every method for one seed: 80 z, float64."""
    gen = torch.Generator().manual_seed(seed)
    return SIGMA_MAX * torch.randn(samples, mixture.dim, generator=gen, dtype=torch.float64)


def run_unit(mixture_name: str, label: str, budget: int | None, tol: tuple[float, float] | None, seed: int,
             samples: int) -> dict[str, Any] | None:
    """One row, or None when the budget is below the method's minimum cost."""
    mixture = _mixture(mixture_name)
    x = start_noise(mixture, samples, seed)
    t0 = time.perf_counter()
    method, options = METHODS[label]
    try:
        if method == "adaptive":
            assert tol is not None  # Config.units gives the adaptive method a tolerance
            result = sample(mixture, x, karras_sigmas(2, sigma_max=SIGMA_MAX), method="adaptive",
                            generator=torch.Generator().manual_seed(10_000 + seed), rtol=tol[0], atol=tol[1])
        else:
            assert budget is not None  # and every other method a budget
            sigmas = karras_sigmas(steps_for_nfe(method, budget, **options), sigma_max=SIGMA_MAX)
            result = sample(mixture, x, sigmas, method=method, generator=torch.Generator().manual_seed(10_000 + seed),
                            check_finite=False, **options)
    except ValueError:
        if method == "adaptive":
            raise
        return None
    seconds = time.perf_counter() - t0
    q = mixture.evaluate(result.sample, seed=seed)
    return {"method": label, "mixture": mixture_name, "budget": budget, "rtol": tol[0] if tol else None,
            "atol": tol[1] if tol else None, "nfe": result.nfe, "seed": seed, "swd": q.sliced_wasserstein,
            "weight_error": q.weight_error, "mean_error": q.mean_error, "cov_error": q.cov_error,
            "outlier_rate": q.outlier_rate, "seconds": seconds}


def _run_unit_on_one_thread(args: tuple) -> dict[str, Any] | None:
    torch.set_num_threads(1)
    return run_unit(*args)


def run_suite(config: Config, workers: int = 1,
              progress: Callable[[int, int, dict[str, Any] | None], None] | None = None) -> SuiteResults:
    """Run every unit of `config` on one torch thread (in `workers` processes when > 1); `progress` is
    called as progress(done, total, row) after each unit."""
    t0 = time.perf_counter()
    units = config.units()
    jobs = [(m, label, b, tol, seed, config.samples) for m, label, b, tol, seed in units]
    rows: list[dict[str, Any]] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results: Iterable = pool.map(_run_unit_on_one_thread, jobs, chunksize=1)
            for i, row in enumerate(results, start=1):
                if row is not None:
                    rows.append(row)
                if progress:
                    progress(i, len(jobs), row)
    else:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)   # tiny tensors: one thread is fastest, and runs are comparable
        try:
            for i, job in enumerate(jobs, start=1):
                row = run_unit(*job)
                if row is not None:
                    rows.append(row)
                if progress:
                    progress(i, len(jobs), row)
        finally:
            torch.set_num_threads(previous)
    floors = {m: _mixture(m).sliced_wasserstein_floor(config.samples) for m in config.mixtures}
    return SuiteResults(config, rows, floors, time.perf_counter() - t0)


# -- claims ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """A claim judged on a suite run: `held` (None when the run lacks what the claim needs), the evidence
    in words and the measured `figures` it rests on."""

    claim: Claim
    held: bool | None
    evidence: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "not checked" if self.held is None else ("held" if self.held else "did not hold")

    def as_row(self) -> tuple[Claim, str, str]:
        """(claim, verdict, evidence): the shape of `gradwise.lab.claims.verdicts` entries."""
        return self.claim, self.status, self.evidence


MOMENTUM_PAIRS = (("plms", "hb_plms4_0.8"), ("dpmpp_2m", "hb_dpmpp_0.8"))
MOMENTUM_NFE = (5, 10)
ADAPTIVE_SWD = 1.25        # the target quality: SWD at most this multiple of the mixture's Monte-Carlo floor
ADAPTIVE_OUTLIERS = 0.02   # ... and an outlier rate at most twice the exact sampler's 0.01

MOMENTUM_CLAIM = Claim(
    "momentum-divergence", "Wizadwongsa et al. 2023, Diffusion Sampling with Momentum (arXiv:2307.11118)",
    "heavy-ball momentum reduces the divergence of high-order solvers at low NFE: at NFE 5 and 10 the "
    "momentum variant leaves fewer outliers than the same solver without momentum",
    tuple(m for pair in MOMENTUM_PAIRS for m in pair), ("ill",))
ADAPTIVE_CLAIM = Claim(
    "adaptive-fewer-nfe", "Jolicoeur-Martineau et al. 2021, Gotta Go Fast (arXiv:2105.14080)",
    f"the adaptive SDE solver reaches a target quality (SWD <= {ADAPTIVE_SWD:g} x the Monte-Carlo floor, outlier "
    f"rate <= {ADAPTIVE_OUTLIERS:g}) with fewer NFE than fixed-step Euler-Maruyama",
    ("adaptive", "euler_maruyama"), ("highdim",))


def _at_budget(results: SuiteResults, mixture: str, label: str, budget: int, metric: str) -> float | None:
    values = [r[metric] for r in results.rows if r["mixture"] == mixture and r["method"] == label
              and r["budget"] == budget]
    return _median(values) if values else None


def momentum_verdict(results: SuiteResults, mixture: str = "ill", budgets: Sequence[int] = MOMENTUM_NFE,
                     pairs: Sequence[tuple[str, str]] = MOMENTUM_PAIRS) -> Verdict:
    """Held when, for every (solver, momentum variant) pair and every budget, the variant's median outlier
    rate is strictly below the solver's. Figures: outlier rates and SWDs of both, per pair and budget."""
    claim = dataclasses.replace(MOMENTUM_CLAIM, problems=(mixture,))
    figures: dict[str, Any] = {}
    held, evidence = True, []
    for base, damped in pairs:
        for budget in budgets:
            found = {f"{label} {metric}": _at_budget(results, mixture, label, budget, metric)
                     for label in (base, damped) for metric in ("outlier_rate", "swd")}
            numbers = {key: value for key, value in found.items() if value is not None}
            if len(numbers) < len(found):
                return Verdict(claim, None, f"needs {base} and {damped} at NFE {budget} on {mixture} in the run")
            figures[f"NFE {budget}"] = {**figures.get(f"NFE {budget}", {}), **numbers}
            out0, out1 = numbers[f"{base} outlier_rate"], numbers[f"{damped} outlier_rate"]
            held &= out1 < out0
            evidence.append(f"NFE {budget}: outliers {base} {out0:.3f} vs {damped} {out1:.3f} (SWD "
                            f"{_show(numbers[f'{base} swd'])} vs {_show(numbers[f'{damped} swd'])})")
    return Verdict(claim, held, f"{mixture}: " + "; ".join(evidence), figures)


def nfe_to_target(points: Sequence[tuple[float, ...]], swd: float, outlier_rate: float = math.inf) -> float:
    """The smallest NFE among (NFE, SWD, outlier rate) points with SWD <= `swd` and outlier rate <=
    `outlier_rate` (inf when none is)."""
    return min((p[0] for p in points if p[1] <= swd and (len(p) < 3 or p[2] <= outlier_rate)), default=math.inf)


def adaptive_verdict(results: SuiteResults, mixture: str = "highdim", swd_factor: float = ADAPTIVE_SWD,
                     outlier_rate: float = ADAPTIVE_OUTLIERS) -> Verdict:
    """Held when the adaptive solver reaches the target quality, median SWD <= swd_factor x the mixture's
    floor and median outlier rate <= `outlier_rate`, at a smaller NFE (the smallest over its tolerances)
    than Euler-Maruyama does over its budgets; a solver that never gets there counts as inf.
    Why both: in 64-D the SWD (64 random projections, a few hundred samples) is dominated by its
    Monte-Carlo floor and barely sees the samples that Euler-Maruyama leaves far out at 50 NFE; the outlier
    rate does. The figures also give the NFEs for the SWD target alone, and both curves."""
    claim = dataclasses.replace(ADAPTIVE_CLAIM, problems=(mixture,))
    metrics = ("swd", "outlier_rate")
    adaptive = results.curve(mixture, "adaptive", metrics)
    em = results.curve(mixture, "euler_maruyama", metrics)
    if not adaptive or not em or mixture not in results.floors:
        return Verdict(claim, None, f"needs adaptive and euler_maruyama on {mixture} in the run")
    target = swd_factor * results.floors[mixture]
    n_adaptive, n_em = nfe_to_target(adaptive, target, outlier_rate), nfe_to_target(em, target, outlier_rate)
    held = math.isfinite(n_adaptive) and n_adaptive < n_em
    figures: dict[str, Any] = {
        "target_swd": target, "target_outlier_rate": outlier_rate, "floor_swd": results.floors[mixture],
        "adaptive_nfe": n_adaptive, "euler_maruyama_nfe": n_em,
        "adaptive_nfe_swd_only": nfe_to_target(adaptive, target),
        "euler_maruyama_nfe_swd_only": nfe_to_target(em, target),
        "adaptive_curve": adaptive, "euler_maruyama_curve": em}

    def reach(n: float, curve: list) -> str:
        return f"NFE {n:g}" if math.isfinite(n) else f"not by NFE {max(p[0] for p in curve):g}"

    return Verdict(claim, held, f"{mixture}: target SWD <= {target:.4f} ({swd_factor:g} x floor "
                   f"{results.floors[mixture]:.4f}) and outliers <= {outlier_rate:g}; adaptive reaches it at "
                   f"{reach(n_adaptive, adaptive)}, Euler-Maruyama at {reach(n_em, em)} (SWD alone: "
                   f"{reach(figures['adaptive_nfe_swd_only'], adaptive)} vs "
                   f"{reach(figures['euler_maruyama_nfe_swd_only'], em)})", figures)


def verdicts(results: SuiteResults) -> list[Verdict]:
    """Both claims on their headline mixture ("ill" for momentum, "highdim" for adaptive), then on every other
    mixture of the run (same tests, reported beside them)."""
    out = []
    for judge, headline in ((momentum_verdict, "ill"), (adaptive_verdict, "highdim")):
        ordered = [headline] + [m for m in results.config.mixtures if m != headline]
        out += [judge(results, m) for m in ordered if m in results.config.mixtures]
    return out


def _show(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "inf" if value > 0 or math.isnan(value) else "-inf"
    return f"{value:.{digits}g}"


# -- outputs -----------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def quality_figure(results: SuiteResults, mixture: str, path: Path) -> Path:
    """Median SWD (log-log) and outlier rate against NFE, one line per method, the floor dashed; PNG."""
    from .report import COLORS

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6))
    styles = ["-", "--", ":", "-."]
    resolution = 0.5 / results.config.samples   # an outlier rate of 0 is drawn here (log axis)
    for i, label in enumerate(results.config.methods):
        for ax, metric in zip(axes, ("swd", "outlier_rate"), strict=True):
            points = [(n, max(v, resolution) if metric == "outlier_rate" else v)
                      for n, v in results.median(mixture, label, metric) if math.isfinite(v)]
            points = [(n, v) for n, v in points if v > 0]
            if not points:
                continue
            ax.plot([p[0] for p in points], [p[1] for p in points], styles[(i + i // len(COLORS)) % len(styles)],
                    color=COLORS[i % len(COLORS)], marker="o", ms=3, lw=1.3, label=label)
    axes[0].axhline(results.floors[mixture], color="grey", ls=":", lw=1.5, label="SWD floor (exact samples)")
    axes[1].axhline(0.01, color="black", ls=":", lw=1, label="outlier rate of exact samples (0.01)")
    names = ("sliced Wasserstein distance", f"outlier rate (0 drawn at {resolution:.2g})")
    for ax, name in zip(axes, names, strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE (denoiser evaluations)")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title(f"{mixture}: median over {results.config.seeds} seeds, {results.config.samples} samples")
    handles, labels = axes[1].get_legend_handles_labels()
    floor_handle, floor_label = axes[0].get_legend_handles_labels()
    handles += floor_handle[-1:]
    labels += floor_label[-1:]
    axes[1].legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def quality_rows(results: SuiteResults, mixture: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the median-SWD table of one mixture: a column per NFE budget (the NFE used in
    brackets when it differs), adaptive's tolerances as their own row entries."""
    budgets = sorted({r["budget"] for r in results.rows if r["mixture"] == mixture and r["budget"] is not None})
    header = ["method"] + [f"NFE {b}" for b in budgets]
    rows = []
    for label in results.config.methods:
        if label == "adaptive":
            for rtol, atol in results.config.tolerances:
                runs = [r for r in results.rows if r["mixture"] == mixture and r["method"] == label
                        and r["rtol"] == rtol]
                if runs:
                    nfe = statistics.median(r["nfe"] for r in runs)
                    swd = _median([r["swd"] for r in runs])
                    rows.append([f"adaptive rtol {rtol:g} atol {atol:g}", f"SWD {_show(swd, 3)} at NFE {nfe:g}"]
                                + [""] * (len(budgets) - 1))
            continue
        cells = []
        for b in budgets:
            value = _at_budget(results, mixture, label, b, "swd")
            used = [r["nfe"] for r in results.rows if r["mixture"] == mixture and r["method"] == label
                    and r["budget"] == b]
            note = f" ({used[0]})" if used and used[0] != b else ""
            cells.append("-" if value is None else _show(value, 3) + note)
        rows.append([label] + cells)
    return header, rows


def render(results: SuiteResults, figures: dict[str, Path]) -> str:
    """The HTML page: claims, then per mixture the figure (embedded) and the median-SWD table."""
    from .environment import environment
    from .report import STYLE

    config = results.config
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>gradwise lab: sampling</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>gradwise lab report: suite <code>sampling</code></h1>",
             f"<p class='small'>{len(config.mixtures)} mixtures, {len(config.methods)} methods, NFE budgets "
             f"{', '.join(map(str, config.nfe))}, {config.samples} samples, {config.seeds} seeds; "
             f"{len(results.rows)} runs in {results.seconds:.0f} s. Rendered "
             f"{html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>",
             "<h2>Claims</h2>",
             _table(["claim", "source", "statement", "mixture", "verdict", "evidence"],
                    [[v.claim.name, v.claim.source, v.claim.statement, ", ".join(v.claim.problems), v.status,
                      v.evidence] for v in verdicts(results)])]
    for mixture in config.mixtures:
        bed = _mixture(mixture)
        parts.append(f"<h2>{html.escape(mixture)}</h2><p>{bed.num_modes} modes in {bed.dim}-D; SWD floor "
                     f"(exact samples) {_show(results.floors[mixture], 3)}.</p>")
        if mixture in figures:
            data = base64.b64encode(figures[mixture].read_bytes()).decode("ascii")
            parts.append(f"<img alt='quality against NFE, {html.escape(mixture)}' src='data:image/png;base64,{data}'>")
        header, rows = quality_rows(results, mixture)
        parts.append("<p class='small'>median SWD over seeds (NFE used in brackets where below the budget)</p>")
        parts.append(_table(header, rows))
    parts.append("<h2>Protocol</h2>")
    parts.append(f"<pre>{html.escape(PROTOCOL)}</pre>")
    parts.append("<h2>Environment</h2>")
    parts.append(_table(["", ""], [[k, str(v)] for k, v in environment().items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def write_outputs(results: SuiteResults, out: str | Path) -> dict[str, Path]:
    """rows.json, rows.csv, quality_<mixture>.png and sampling.html in `out`; returns their paths by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"json": out / "rows.json", "csv": out / "rows.csv", "html": out / "sampling.html"}
    judged = verdicts(results)
    payload = {"config": dataclasses.asdict(results.config), "floors": results.floors, "seconds": results.seconds,
               "rows": results.rows,
               "verdicts": [{"claim": v.claim.name, "mixture": v.claim.problems[0], "verdict": v.status,
                             "evidence": v.evidence, "figures": v.figures} for v in judged]}
    paths["json"].write_text(json.dumps(_jsonable(payload), indent=1), encoding="utf-8")
    columns = ["method", "mixture", "budget", "rtol", "atol", "nfe", "seed", *METRICS, "seconds"]
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(results.rows)
    figures = {m: quality_figure(results, m, out / f"quality_{m}.png") for m in results.config.mixtures}
    paths.update({f"png_{m}": p for m, p in figures.items()})
    paths["html"].write_text(render(results, figures), encoding="utf-8")
    return paths


def load_results(path: str | Path) -> SuiteResults:
    """A suite run back from its rows.json (a folder or the file): "inf" strings and nulls become floats."""
    path = Path(path)
    payload = json.loads((path / "rows.json" if path.is_dir() else path).read_text(encoding="utf-8"))
    config = payload["config"]
    fields: dict[str, Any] = {k: tuple(tuple(v) if isinstance(v, list) else v for v in value)
                              if isinstance(value, list) else value for k, value in config.items()}
    config = Config(**fields)
    for row in payload["rows"]:
        for metric in METRICS:
            value = row[metric]
            row[metric] = math.nan if value is None else float(value)
    return SuiteResults(config, payload["rows"], payload["floors"], payload["seconds"])


# -- command line ------------------------------------------------------------------------------------------
def _option(text: str) -> Any:
    import typer

    return typer.Option(help=text)


def sampling_command(
    out: Annotated[Path, _option("folder for rows.json, rows.csv, the PNGs and sampling.html")] = Path("lab-sampling"),
    quick: Annotated[bool, _option("500 samples, 2 seeds, NFE 5-50: a few minutes")] = False,
    samples: Annotated[int | None, _option("samples per run; default 2000 (quick 500)")] = None,
    seeds: Annotated[int | None, _option("seeds; default 3 (quick 2)")] = None,
    nfe: Annotated[str | None, _option("comma-separated NFE budgets; default 5,10,20,50,100")] = None,
    mixtures: Annotated[str | None, _option("comma-separated: easy, ill, highdim; default all")] = None,
    methods: Annotated[str | None, _option("comma-separated suite methods; default all")] = None,
    workers: Annotated[int, _option("processes (one torch thread each)")] = 1,
) -> None:
    """The sampling suite: quality against NFE for every diffusion sampler on exact Gaussian mixtures, and
    the seed papers' claims (momentum damps divergence; adaptive steps need fewer NFE)."""
    import typer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    numbers = (("samples", samples), ("seeds", seeds))
    changes: dict[str, Any] = {name: value for name, value in numbers if value is not None}
    lists: tuple[tuple[str, str | None, Callable[[str], Any]], ...] = (
        ("nfe", nfe, int), ("mixtures", mixtures, str), ("methods", methods, str))
    for name, text, convert in lists:
        if text is not None:
            changes[name] = tuple(convert(v.strip()) for v in text.split(",") if v.strip())
    try:
        config = (Config.quick if quick else Config.full)(**changes)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    console = Console()
    with Progress(TextColumn("{task.description}", style="cyan"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("sampling", total=len(config.units()))

        def advance(done: int, total: int, row: dict[str, Any] | None) -> None:
            what = f"{row['mixture']} / {row['method']} NFE {row['nfe']}" if row else "skipped"
            bar.update(task, completed=done, description=what)

        results = run_suite(config, workers=workers, progress=advance)
    paths = write_outputs(results, out)
    table = Table(title=f"sampling claims ({results.seconds:.0f} s)")
    for column in ("claim", "mixture", "verdict", "evidence"):
        table.add_column(column)
    for v in verdicts(results):
        table.add_row(v.claim.name, v.claim.problems[0], v.status, v.evidence)
    console.print(table)
    console.print(f"report: [bold]{paths['html']}[/]")


def _app():
    import typer

    app = typer.Typer(add_completion=False)
    app.command()(sampling_command)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m gradwise.lab.sampling_suite [--quick] [--out DIR] ...`; argv defaults to sys.argv[1:]."""
    import typer

    typer.main.get_command(_app()).main(args=list(argv) if argv is not None else None,
                                        prog_name="gradwise lab sampling", standalone_mode=argv is None)


if __name__ == "__main__":
    main()
