"""The report: one self-contained HTML page (figures embedded as base64 PNG) and the leaderboard rows.

`write_report(storage, out)` reads everything from the storage, so a report can be re-rendered at any
time, also while workers are still running (missing runs show as missing).
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import torch

from . import analysis
from .analysis import Results
from .environment import environment
from .problems import CURVES, PROBLEMS, SUITES, SURFACES

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _color(results: Results, optimizer: str) -> str:
    return COLORS[results.plan.optimizers.index(optimizer) % len(COLORS)]


# -- figures ----------------------------------------------------------------------------------------
def _band(values: list[list[float | None]]) -> tuple[list[float], list[float], list[float]]:
    """Per evaluation point: median, min and max over seeds (non-finite values dropped per point)."""
    med, lo, hi = [], [], []
    for column in zip(*values, strict=False):
        finite = [v for v in column if v is not None and math.isfinite(v)]
        if not finite:
            med.append(math.nan)
            lo.append(math.nan)
            hi.append(math.nan)
            continue
        finite.sort()
        mid = len(finite) // 2
        med.append(finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2)
        lo.append(finite[0])
        hi.append(finite[-1])
    return med, lo, hi


def curves_figure(results: Results, problem: str) -> str:
    """Loss (and accuracy) against steps: median over seeds, band from min to max."""
    plt = _pyplot()
    prob = PROBLEMS[problem]
    panels = ["loss"] if prob.kind == "function" else ["loss", prob.target]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.4), squeeze=False)
    goal = analysis.target(results, problem)
    for ax, metric in zip(axes[0], panels, strict=True):
        for o in results.optimizers:
            runs = results.cell(problem, o).runs
            if not runs:
                continue
            n = min(len(r.curve["step"]) for r in runs)
            steps = runs[0].curve["step"][:n] if n == len(runs[0].curve["step"]) else None
            if steps is None:  # a diverged run stopped early: plot the common prefix
                steps = runs[0].curve["step"][:n]
            med, lo, hi = _band([r.curve[metric][:n] for r in runs])
            color = _color(results, o)
            ax.plot(steps, med, color=color, label=o, lw=1.5)
            ax.fill_between(steps, lo, hi, color=color, alpha=0.18, lw=0)
        if metric == prob.target and goal is not None:
            ax.axhline(goal, color="black", ls=":", lw=1, label="target")
        if metric == "loss":
            ax.set_yscale("log")
        ax.set_xlabel("step")
        accuracy = "next-character accuracy (test)" if prob.kind == "language-model" else "test accuracy"
        if metric == "val_accuracy":
            accuracy = "validation accuracy"
        ax.set_ylabel("training loss" if metric == "loss" else accuracy)
        ax.grid(alpha=0.3)
    axes[0][0].set_title(problem)
    axes[0][-1].legend(fontsize=7, loc="best")
    return _png(fig)


def curve_path_figure(results: Results, problem: str) -> str:
    """The graph of a 1-D function and each optimizer's path (x, f(x)) on it for its first evaluation seed."""
    plt = _pyplot()
    curve = CURVES[problem][0]
    x0, x1 = curve.window
    xs = torch.linspace(x0, x1, 400)
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ax.plot(xs.numpy(), curve.f(xs).numpy(), color="grey", lw=1.2)
    for o in results.optimizers:
        runs = results.cell(problem, o).runs
        if not runs or not runs[0].trajectory:
            continue
        path = [p for p in runs[0].trajectory if all(math.isfinite(c) for c in p)]
        color = _color(results, o)
        ax.plot([p[0] for p in path], [p[1] for p in path], ".", color=color, ms=2.5, alpha=0.5)
        ax.plot([path[-1][0]], [path[-1][1]], "o", color=color, ms=6, label=f"{o}: ends at x={path[-1][0]:.3g}")
    ax.plot([curve.minimum], [float(curve.f(torch.tensor(curve.minimum)))], "x", color="orange", ms=10, mew=2.5,
            label="global minimum")
    ax.set_xlim(x0, x1)
    ax.set_xlabel("x")
    ax.set_title(f"{problem}: paths (seed 0, tuned lr)")
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def trajectory_figure(results: Results, problem: str) -> str:
    """Contours of a 2-D function and each optimizer's path for its first evaluation seed."""
    if problem in CURVES:
        return curve_path_figure(results, problem)
    plt = _pyplot()
    surface = SURFACES[problem][0]
    x0, x1, y0, y1 = surface.window
    xs = torch.linspace(x0, x1, 200)
    ys = torch.linspace(y0, y1, 200)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    z = torch.log10(surface.f(gx, gy) + 1e-3)
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    ax.contourf(gx.numpy(), gy.numpy(), z.numpy(), levels=30, cmap="Greys", alpha=0.55)
    ax.contour(gx.numpy(), gy.numpy(), z.numpy(), levels=15, colors="grey", linewidths=0.4)
    for o in results.optimizers:
        runs = results.cell(problem, o).runs
        if not runs or not runs[0].trajectory:
            continue
        path = [p for p in runs[0].trajectory if all(math.isfinite(c) for c in p)]
        px = [p[0] for p in path]
        py = [p[1] for p in path]
        color = _color(results, o)
        ax.plot(px, py, color=color, lw=1.3, label=o)
        ax.plot(px[-1:], py[-1:], "o", color=color, ms=4)
    start = results.cell(problem, results.optimizers[0]).runs
    if start and start[0].trajectory:
        ax.plot(*start[0].trajectory[0], "s", color="black", ms=5, label="start")
    ax.plot(*surface.minimum, "x", color="orange", ms=10, mew=2.5, label="minimum")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(f"{problem}: paths (seed 0, tuned lr)")
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def profile_figure(results: Results) -> str:
    """Performance profiles rho(tau) of every optimizer (steps to target)."""
    plt = _pyplot()
    rs = analysis.ratios(results)
    taus = [1 + i * (analysis.TAU_MAX - 1) / 300 for i in range(301)]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for o in results.optimizers:
        ax.step(taus, analysis.profile(rs[o], taus), where="post", color=_color(results, o),
                label=f"{o} ({analysis.score(rs[o]):.2f})", lw=1.6)
    ax.set_xlabel("tau: steps to target / fastest optimizer's steps")
    ax.set_ylabel("share of problems")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(1, analysis.TAU_MAX)
    ax.grid(alpha=0.3)
    ax.set_title("Performance profile (score in brackets)")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


# -- HTML -------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isinf(value):
        return "miss" if value > 0 else "-inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.{digits}g}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def leaderboard_rows(results: Results) -> list[list[str]]:
    rows = []
    for i, row in enumerate(analysis.leaderboard(results), start=1):
        rows.append([str(i), row["optimizer"], f"{row['score']:.3f}", f"{row['on_target']}/{row['problems']}",
                     _fmt(row["median_rank"], 3)])
    return rows


LEADERBOARD_HEADER = ["#", "optimizer", "score", "on target", "median rank"]


def problem_rows(results: Results, problem: str) -> list[list[str]]:
    prob = PROBLEMS[problem]
    rows = []
    for o in results.optimizers:
        cell = results.cell(problem, o)
        loss = cell.summary("loss")
        acc = cell.summary("accuracy") if prob.kind != "function" else None
        steps, seconds, hits = analysis.time_to_target(results, problem, o)
        params = ", ".join(f"{k}={v:.3g}" for k, v in (cell.best or {}).items())
        rows.append([
            o,
            f"{_fmt(loss[0])} [{_fmt(loss[1])}, {_fmt(loss[2])}]" if loss else "not run",
            f"{_fmt(acc[0])} [{_fmt(acc[1])}, {_fmt(acc[2])}]" if acc else "-",
            _fmt(steps), _fmt(seconds, 3), f"{hits}/{len(cell.runs)}",
            sum(r.diverged for r in cell.runs).__str__(), params or "-",
        ])
    return rows


PROBLEM_HEADER = ["optimizer", "final train loss: median [min, max]", "test accuracy: median [min, max]",
                  "steps to target", "seconds to target", "seeds on target", "diverged", "tuned"]


def _span(summary: tuple[float, float, float] | None) -> str:
    return f"{_fmt(summary[0])} [{_fmt(summary[1])}, {_fmt(summary[2])}]" if summary else "-"


def averaged_rows(results: Results, problem: str) -> list[list[str]]:
    """Per optimizer: the final validation loss (the function value for test functions) of the raw model and of
    its weight average (`--average`), median [min, max] over seeds."""
    metric = analysis.validation_metric(PROBLEMS[problem])
    rows = []
    for o in results.optimizers:
        cell = results.cell(problem, o)
        raw, averaged = cell.summary(metric), cell.summary(f"avg_{metric}")
        gain = "-" if not raw or not averaged else _fmt(averaged[0] - raw[0], 3)
        rows.append([o, _span(raw), _span(averaged), gain])
    return rows


def averaged_header(results: Results, problem: str) -> list[str]:
    metric = analysis.validation_metric(PROBLEMS[problem])
    name = "validation loss" if metric == "val_loss" else "final loss"
    return ["optimizer", f"{name}: raw model", f"{name}: averaged ({results.plan.average})",
            "averaged - raw (medians)"]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left}
th{background:#f3f3f3} img{max-width:100%} pre{white-space:pre-wrap;background:#f8f8f8;padding:1em}
.small{color:#666;font-size:0.9em}
"""


def render(results: Results, protocol: str) -> str:
    """The HTML page for `results`."""
    plan = results.plan
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>gradwise lab: {plan.suite}</title>"
             f"<style>{STYLE}</style></head><body>"]
    parts.append(f"<h1>gradwise lab report: suite <code>{html.escape(plan.suite)}</code></h1>")
    averaging = f"; weight averaging {html.escape(plan.average)} evaluated beside the raw model" if plan.average else ""
    parts.append(
        f"<p class='small'>{len(plan.problems)} problems, {len(results.optimizers)} optimizers, "
        f"{plan.trials} tuning trials each (lr{' and weight decay' if plan.tune_weight_decay else ''}), "
        f"{plan.seeds} seeds{averaging}. Rendered {html.escape(time.strftime('%Y-%m-%d %H:%M:%S %Z'))}.</p>")
    parts.append("<h2>Leaderboard</h2>")
    parts.append(_table(LEADERBOARD_HEADER, leaderboard_rows(results)))
    parts.append("<p class='small'>score: AlgoPerf-style area under the performance profile (steps to target, "
                 f"tau up to {analysis.TAU_MAX:g}); on target: problems where at least half the seeds reached "
                 "the target; median rank: by median final target metric across problems.</p>")
    if results.errors:
        parts.append("<p><b>Could not be built, not benchmarked:</b></p>")
        parts.append(_table(["optimizer", "error"], [[k, v] for k, v in results.errors.items()]))
    if results.optimizers:
        parts.append(f"<img alt='performance profile' src='data:image/png;base64,{profile_figure(results)}'>")
    for problem in plan.problems:
        prob = PROBLEMS[problem]
        goal = analysis.target(results, problem)
        parts.append(f"<h2>{html.escape(problem)}</h2><p>{html.escape(prob.description)}; {prob.steps} steps, "
                     f"lr range {prob.lr_range[0]:g} to {prob.lr_range[1]:g} (log-uniform). Target: "
                     f"{html.escape(prob.target)} {'&ge;' if prob.higher_is_better else '&le;'} {_fmt(goal)} "
                     "(from the tuned AdamW baseline).</p>")
        parts.append(_table(PROBLEM_HEADER, problem_rows(results, problem)))
        if plan.average:
            parts.append(_table(averaged_header(results, problem), averaged_rows(results, problem)))
        if any(results.cell(problem, o).runs for o in results.optimizers):
            parts.append(f"<img alt='curves {html.escape(problem)}' "
                         f"src='data:image/png;base64,{curves_figure(results, problem)}'>")
            if prob.kind == "function":
                parts.append(f"<img alt='trajectories {html.escape(problem)}' "
                             f"src='data:image/png;base64,{trajectory_figure(results, problem)}'>")
    if plan.suite == "paper":
        from .claims import verdicts

        parts.append("<h2>Paper claims</h2>")
        parts.append(_table(["claim", "source", "statement", "verdict", "evidence"],
                            [[c.name, c.source, c.statement, v, e] for c, v, e in verdicts(results)]))
    parts.append("<h2>Protocol</h2>")
    parts.append(f"<pre>{html.escape(protocol)}</pre>")
    suite = SUITES.get(plan.suite)
    if suite is not None:
        parts.append(f"<p class='small'>Suite {html.escape(suite.name)}: {html.escape(suite.description)}.</p>")
    parts.append("<h2>Environment</h2>")
    machines = results.environments or {"this machine (no run recorded one)": environment()}
    for owner, env in machines.items():
        parts.append(f"<h3>{html.escape(owner)}</h3>")
        parts.append(_table(["", ""], [[k, str(v)] for k, v in env.items()]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(storage: optuna.storages.BaseStorage, out: str | Path) -> tuple[Path, Results]:
    """Render the report of the lab in `storage` to `out`/report.html; returns the path and the results."""
    from . import PROTOCOL

    results = analysis.load(storage)
    path = Path(out) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, PROTOCOL), encoding="utf-8")
    return path, results
