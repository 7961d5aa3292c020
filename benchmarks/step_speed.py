"""How long one optimizer step takes, eager and compiled, next to torch's fused AdamW and the bandwidth floor.

For every registered optimizer (registry kind "optimizer": the named variants such as cadamw included, the
samplers not) and every shape set, one `step()` is timed with fixed gradients: the median of `--repeats`
steps after `--warmup` steps. The contenders of one row are timed round-robin, one step each in turn, so
that load from other processes hits them alike and the ratios stay meaningful on a shared machine:
  eager       gradwise.create(name, params, lr=1e-3)
  compiled    gradwise.create(name, params, lr=1e-3, compile=True): built and stepped `--compile-warmup`
              times before the round-robin, so compilation stays out of the timings; `compile s` is the
              wall-clock time of its first step. `path` says how it ran: flat (one compiled call per flat
              bucket), per-param (one compiled call per parameter), eager-fallback (the engine warned and ran
              the chain eagerly; the warning is caught and its reason listed under the table), a `+` joins
              paths that ran side by side, and a trailing `!` marks a row whose timed steps compiled again.
  fused       torch.optim.AdamW(fused=True)
  peer        the peer package's optimizer (pytorch-optimizer), where it has one
  triad       the in-place triad that defines this row's floor

The floor is the time a step needs just to move its bytes: every parameter, gradient and state tensor read
once and every parameter and state tensor written once, (3 + 2 k) * numel * itemsize for k state tensors
per parameter, divided by the bandwidth of a triad c = a + s * b measured in the same run on arrays larger
than the caches (in place, c = a, for the reason given in `triad_bandwidth`), timed in the same round-robin as
the row's steps. Optimizers that need a
reduction over a whole tensor before they can update it (AdamP's cosine test, Adan's gradient clipping)
must read some tensors twice, so their true floor is higher. Contended machines: use --threads 1 and
--stat min (with 2 OpenMP threads on 2 busy cores one step can take 100x longer).

Below the table, the targets of issue #3 for the compiled step, PASS or FAIL per row: within 1.3x of the
floor for every Adam-family optimizer on 100 x 100k and within 2x on 1000 x 1k (with --quick, 20 x 100k and
200 x 1k stand in), at least 2x faster than the peer on 100 x 100k and never slower than it elsewhere.

Run:  .venv/bin/python benchmarks/step_speed.py [--quick] [--shapes 100x100k,1000x1k,transformer]
                                                [--optimizers adamw,adan] [--threads 2] [--stat min]
                                                [--no-compile | --compile-only] [--backend inductor]
      --breakdown: no table; where each compiled step's time goes (its checks, the non-finite check, the
      compiled call, the rest of the step), with the caches flushed by the triad before each step and without.
      --grads fresh: a new gradient tensor per parameter before each step (untimed), as backward gives after
      torch's default zero_grad(set_to_none=True); the compiled flat path then copies the gradients into its
      buffer inside the timed step (with zero_grad(set_to_none=False) backward accumulates into that buffer).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import gradwise
from gradwise.core.registry import entry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the sibling script, also when loaded by path
from compiled_step import fresh_gradients  # noqa: E402  (the pool of new gradient tensors compiled_step.py swaps in)

Shape = tuple[int, ...]


# -- shapes ----------------------------------------------------------------------------------------------
def transformer_shapes(layers: int = 4, d_model: int = 256, d_ff: int = 1024, vocab: int = 8192,
                       context: int = 512) -> list[Shape]:
    """The parameter shapes of a small GPT-style transformer (tied embedding and output head)."""
    shapes: list[Shape] = [(vocab, d_model), (context, d_model)]
    for _ in range(layers):
        shapes += [(d_model,), (d_model,),                      # attention layer norm
                   (3 * d_model, d_model), (3 * d_model,),      # q, k, v projection
                   (d_model, d_model), (d_model,),              # output projection
                   (d_model,), (d_model,),                      # MLP layer norm
                   (d_ff, d_model), (d_ff,), (d_model, d_ff), (d_model,)]
    shapes += [(d_model,), (d_model,)]                          # final layer norm
    return shapes


def _count(text: str) -> int:
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1].lower(), 1)
    return int(text[:-1] if scale > 1 else text) * scale


def parse_shapes(spec: str, quick: bool = False) -> dict[str, list[Shape]]:
    """'100x100k,1000x1k,transformer' -> {name: shapes}; NxM means N tensors of M elements each."""
    out: dict[str, list[Shape]] = {}
    for name in (s.strip() for s in spec.split(",") if s.strip()):
        if name == "transformer":
            out[name] = transformer_shapes(2, 128, 512, 2048, 256) if quick else transformer_shapes()
        else:
            try:
                tensors, elements = name.lower().split("x")
                out[name] = [(_count(elements),)] * _count(tensors)
            except ValueError:
                raise SystemExit(f"--shapes: {name!r} is neither 'transformer' nor NxM (e.g. 100x100k)") from None
    return out


# -- peers -------------------------------------------------------------------------------------------------
def peer_factory(name: str) -> tuple[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] | None:
    """pytorch-optimizer's version of the gradwise optimizer `name`, configured alike, or None."""
    try:
        import pytorch_optimizer as po
    except ImportError:
        return None
    lr = 1e-3
    table: dict[str, tuple[str, Callable]] = {
        # gradwise's AdaBelief rectifies by default, as the authors' package does; pytorch-optimizer does not.
        "adabelief": ("AdaBelief", lambda ps: po.AdaBelief(ps, lr=lr, rectify=True)),
        "adamp": ("AdamP", lambda ps: po.AdamP(ps, lr=lr)),
        # pytorch_optimizer.AdamW is torch.optim.AdamW itself, run here with its defaults (foreach on CPU).
        "adamw": ("AdamW", lambda ps: po.AdamW(ps, lr=lr)),
        "adan": ("Adan", lambda ps: po.Adan(ps, lr=lr)),
        "diffgrad": ("DiffGrad", lambda ps: po.DiffGrad(ps, lr=lr)),
        "sgdp": ("SGDP", lambda ps: po.SGDP(ps, lr=lr)),
    }
    return table.get(name)


def peer_version() -> str:
    try:
        from importlib.metadata import version

        return version("pytorch-optimizer")
    except Exception:
        return "not installed"


STATS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


# -- machine -----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def triad_bandwidth(elements: int = 32_000_000, repeats: int = 10, stat: str = "median") -> tuple[float, float]:
    """Bytes per second of the triad c = a + s * b on float32 arrays: (in place, c is a; into a third array).

    Both count 3 arrays of traffic. The in-place form moves what it counts (a read, b read, a written back),
    as an optimizer's in-place update does; writing into a third array also reads c into the cache before
    overwriting it (write-allocate), so counting 3 arrays understates the bandwidth by about a quarter and
    a fused optimizer step would beat a floor built on it. The floor uses the in-place figure.
    """
    a, b, c = torch.rand(elements), torch.rand(elements), torch.empty(elements)
    results = []
    for fn in (lambda: a.add_(b, alpha=1e-9), lambda: torch.add(a, b, alpha=3.0, out=c)):
        fn()
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        results.append(3 * elements * a.element_size() / STATS[stat](times))
    return results[0], results[1]


# -- timing ------------------------------------------------------------------------------------------------
def make_params(shapes: Sequence[Shape], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=g).requires_grad_()
        p.grad = torch.randn(shape, generator=g) * 1e-2
        params.append(p)
    return params


def state_tensors_per_param(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> int:
    """How many parameter-sized state tensors the optimizer keeps (the largest count over parameters)."""
    counts = [sum(1 for v in opt.state[p].values() if torch.is_tensor(v) and v.numel() == p.numel() > 1)
              for p in params]
    return max(counts, default=0)


def floor_bytes(params: list[torch.Tensor], state_tensors: int) -> int:
    """Bytes one step must move: read p, g and each state tensor; write p and each state tensor."""
    return sum(p.numel() * p.element_size() for p in params) * (3 + 2 * state_tensors)


def time_round_robin(steps: dict[str, Callable[[], object]], repeats: int, warmup: int,
                     stat: str = "median", before: dict[str, Callable[[], object]] | None = None) -> dict[str, float]:
    """Seconds per call of each step function (median or min), timed in turn so that load hits all alike;
    `before[key]`, if given, runs untimed before each call of `steps[key]` (warm-up calls included)."""
    before = before or {}
    for _ in range(warmup):
        for key, fn in steps.items():
            if key in before:
                before[key]()
            fn()
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for key, fn in steps.items():
            if key in before:
                before[key]()
            t0 = time.perf_counter()
            fn()
            samples[key].append(time.perf_counter() - t0)
    return {k: STATS[stat](v) for k, v in samples.items()}


@dataclass
class Row:
    optimizer: str
    shape: str
    tensors: int
    elements: int
    state_tensors: int
    eager_ms: float | None
    fused_adamw_ms: float
    floor_ms: float
    peer: str
    peer_ms: float | None
    compiled_ms: float | None = None
    compile_s: float | None = None  # wall-clock seconds of the compiled optimizer's first step
    path: str = "-"  # flat, per-param, eager-fallback (joined by + when mixed; ! when timed steps recompiled)
    fallback: str = ""  # the reason of the first "runs eagerly" warning, if any

    @property
    def vs_fused(self) -> float | None:
        return ratio(self.eager_ms, self.fused_adamw_ms)

    @property
    def vs_floor(self) -> float | None:
        return ratio(self.eager_ms, self.floor_ms)

    @property
    def compiled_vs_floor(self) -> float | None:
        return ratio(self.compiled_ms, self.floor_ms)

    @property
    def compiled_vs_fused(self) -> float | None:
        return ratio(self.compiled_ms, self.fused_adamw_ms)

    @property
    def compiled_vs_peer(self) -> float | None:
        return ratio(self.compiled_ms, self.peer_ms)


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a / b


@dataclass
class Report:
    threads: int
    torch_version: str
    cpu: str
    peer_version: str
    bandwidth: float  # bytes per second, in-place triad a = a + s * b (median over the rows)
    rows: list[Row]
    bandwidth_three_arrays: float = 0.0  # c = a + s * b into a third array
    stat: str = "median"
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after
    backend: str | None = None  # torch.compile backend of the compiled contender, None when not timed
    compile_warmup: int = 0
    eager: bool = True
    grads: str = "fixed"  # "fixed": the same gradient tensors every step; "fresh": new ones before each step


GRADS = ("fixed", "fresh")


def optimizer_names() -> list[str]:
    return [n for n in gradwise.available() if entry(n).kind == "optimizer"]


def _graph_count() -> int:
    """Graphs dynamo has compiled in this process so far (to notice a recompilation during the timed steps)."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:
        return 0


def stepper(opt: torch.optim.Optimizer) -> Callable[[], object]:
    """opt.step, with a fixed loss for the optimizers whose step reads it (the Polyak step sizes)."""
    if getattr(opt, "needs_loss", False):
        loss = torch.tensor(1.0)
        step: Callable[..., object] = opt.step  # the Polyak optimizers' step takes loss=
        return lambda: step(loss=loss)
    return opt.step


def compiled_path(opt: torch.optim.Optimizer, fell_back: bool) -> str:
    """How the compiled optimizer ran: flat, per-param, eager-fallback, or those joined by '+'."""
    functions = getattr(getattr(opt, "_compiled", None), "functions", {}) or {}
    kinds = {key[1] for key, fn in functions.items() if fn is not None and len(key) > 1}
    parts = [label for kind, label in (("flat", "flat"), ("each", "per-param")) if kind in kinds]
    if fell_back or not parts:
        parts.append("eager-fallback" if not parts else "eager")
    return "+".join(parts)


def make_compiled(name: str, params: list[torch.Tensor], nonfinite: str, backend: bool | str,
                  warmup: int) -> tuple[torch.optim.Optimizer, float, str, str]:
    """The compiled optimizer after its warm-up steps: (optimizer, first-step seconds, path, fallback reason)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = gradwise.create(name, params, lr=1e-3, nonfinite=nonfinite, compile=backend)
        step = stepper(opt)
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
        for _ in range(warmup):
            step()
    reasons = [str(w.message) for w in caught if "runs eagerly" in str(w.message)]
    reason = reasons[0].split("runs eagerly: ", 1)[-1] if reasons else ""
    return opt, first, compiled_path(opt, bool(reasons)), reason


def benchmark(shapes: dict[str, list[Shape]], optimizers: Sequence[str] | None = None, repeats: int = 10,
              warmup: int = 3, threads: int | None = None, triad_elements: int = 32_000_000,
              nonfinite: str = "skip", peers: bool = True, stat: str = "median",
              log: Callable[[str], None] | None = None, eager: bool = True, compile: bool | str = False,
              compile_warmup: int = 3, grads: str = "fixed") -> Report:
    """Time every optimizer on every shape set; the core of this script (also run by the smoke test).

    `compile`: False times no compiled contender, True (inductor) or a backend name times one; `eager=False`
    leaves the eager contender out (then k and the floor come from the compiled optimizer's state).
    `grads`: "fixed" steps every contender with the same gradient tensors each time; "fresh" hands each a new
    gradient tensor before every step, untimed (`fresh_gradients`), as a training loop with torch's default
    `zero_grad(set_to_none=True)` does.
    """
    if grads not in GRADS:
        raise ValueError(f"grads must be one of {GRADS}, got {grads!r}")
    if not eager and compile is False:
        raise ValueError("nothing to time: eager=False needs compile=True or a backend")
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    names = list(optimizers) if optimizers else optimizer_names()
    load_before = os.getloadavg()[0]
    bandwidth, bandwidth_three = triad_bandwidth(triad_elements, stat=stat)
    # The floor of each row uses a triad timed inside that row's round-robin, under the same load.
    triad_a, triad_b = torch.rand(triad_elements), torch.rand(triad_elements)
    triad_bytes = 3 * triad_elements * triad_a.element_size()
    bandwidths = []
    rows = []
    for shape_name, shape_list in shapes.items():
        for name in names:
            contenders: dict[str, torch.optim.Optimizer] = {}
            params = {}
            first_s, path, reason = None, "-", ""
            if eager:
                params["eager"] = make_params(shape_list)
                contenders["eager"] = gradwise.create(name, params["eager"], lr=1e-3, nonfinite=nonfinite)
            if compile is not False:
                params["compiled"] = make_params(shape_list)
                contenders["compiled"], first_s, path, reason = make_compiled(
                    name, params["compiled"], nonfinite, compile, compile_warmup)
            params["fused"] = make_params(shape_list)
            contenders["fused"] = torch.optim.AdamW(params["fused"], lr=1e-3, fused=True)
            peer = peer_factory(name) if peers else None
            if peer is not None:
                params["peer"] = make_params(shape_list)
                contenders["peer"] = peer[1](params["peer"])
            steps = {k: stepper(opt) for k, opt in contenders.items()}
            steps["triad"] = lambda: triad_a.add_(triad_b, alpha=1e-9)
            before: dict[str, Callable[[], object]] | None = (
                {k: fresh_gradients(params[k]) for k in contenders} if grads == "fresh" else None)
            graphs = _graph_count()
            times = time_round_robin(steps, repeats, warmup, stat, before)
            if "compiled" in contenders and _graph_count() != graphs:
                path += "!"
            row_bandwidth = triad_bytes / times["triad"]
            bandwidths.append(row_bandwidth)
            ours = "eager" if eager else "compiled"
            k = state_tensors_per_param(contenders[ours], params[ours])
            row = Row(
                optimizer=name, shape=shape_name, tensors=len(shape_list),
                elements=sum(math.prod(s) for s in shape_list),
                state_tensors=k, eager_ms=times["eager"] * 1e3 if eager else None,
                fused_adamw_ms=times["fused"] * 1e3,
                floor_ms=floor_bytes(params[ours], k) / row_bandwidth * 1e3,
                peer=f"pytorch_optimizer.{peer[0]}" if peer else "-",
                peer_ms=times["peer"] * 1e3 if peer else None,
                compiled_ms=times["compiled"] * 1e3 if "compiled" in times else None,
                compile_s=first_s, path=path, fallback=reason,
            )
            rows.append(row)
            if log:
                log(format_row(row))
            del contenders, params
    bandwidth = statistics.median(bandwidths) if bandwidths else bandwidth
    backend = None if compile is False else ("inductor" if compile is True else str(compile))
    return Report(threads, torch.__version__, cpu_model(), peer_version(), bandwidth, rows, bandwidth_three, stat,
                  (load_before, os.getloadavg()[0]), backend, compile_warmup, eager, grads)


# -- where the compiled step's time goes (--breakdown) --------------------------------------------------------
PHASES = {  # CompiledStep method -> column
    "params_with_grad": "checks",  # the still-in-place checks (or the engine's scan and bucketing)
    "gradients_finite": "nonfinite",  # the non-finite check
    "run_group": "run_group",  # everything per group: the call below, signature, coefficients, step counts
    "_call": "call",  # the torch.compile'd function: dynamo's guards and wrappers, then the kernel
}
BREAKDOWN_COLUMNS = ("step", "checks", "nonfinite", "call", "group other", "step other", "floor")


def overhead_breakdown(name: str, shape_list: Sequence[Shape], repeats: int = 40, nonfinite: str = "skip",
                       backend: bool | str = True, triad_elements: int = 32_000_000,
                       stat: str = "median") -> dict[str, dict[str, float]]:
    """Milliseconds of each part of one compiled step (`stat` of each part over the steps; with "min" the two
    "other" columns are differences of minima, so estimates): "cold" runs the triad before each step, as the
    round-robin does (the data and the Python objects of 1000 parameters are out of the caches), "warm" steps
    back to back. "group other" is run_group less the call, "step other" the step less the parts timed
    (ChainOptimizer.step's own Python, torch.optim's step wrapper); "floor" as in the table (cold only)."""
    params = make_params(shape_list)
    opt, _, _, _ = make_compiled(name, params, nonfinite, backend, 3)
    compiled = getattr(opt, "_compiled", None)
    if compiled is None:
        raise ValueError(f"{name} has no compiled step")
    samples: dict[str, list[float]] = {}

    def timed(fn: Callable[..., Any], key: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                samples.setdefault(key, []).append(time.perf_counter() - t0)
        return wrapper

    for method in PHASES:  # instance attributes shadow the methods until deleted below
        setattr(compiled, method, timed(getattr(compiled, method), method))
    step = stepper(opt)
    a, b = torch.rand(triad_elements), torch.rand(triad_elements)
    result = {}
    try:
        for mode in ("cold", "warm"):
            samples.clear()
            for _ in range(repeats):
                if mode == "cold":
                    t0 = time.perf_counter()
                    a.add_(b, alpha=1e-9)
                    samples.setdefault("triad", []).append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                step()
                samples.setdefault("step", []).append(time.perf_counter() - t0)
            med = {k: STATS[stat](v) * 1e3 for k, v in samples.items()}
            parts = {column: med.get(method, 0.0) for method, column in PHASES.items()}
            row = {"step": med["step"], "checks": parts["checks"], "nonfinite": parts["nonfinite"],
                   "call": parts["call"], "group other": parts["run_group"] - parts["call"],
                   "step other": med["step"] - parts["checks"] - parts["nonfinite"] - parts["run_group"]}
            if "triad" in med:
                bandwidth = 3 * triad_elements * a.element_size() / (med["triad"] / 1e3)
                row["floor"] = floor_bytes(params, state_tensors_per_param(opt, params)) / bandwidth * 1e3
            result[mode] = row
    finally:
        for method in PHASES:
            delattr(compiled, method)
    return result


def format_breakdown(rows: list[tuple[str, str, dict[str, dict[str, float]]]], stat: str = "median") -> str:
    head = f"{'optimizer':>11}  {'shape':>12}  {'cache':>5}  " + "  ".join(f"{c:>11}" for c in BREAKDOWN_COLUMNS)
    lines = [f"where the compiled step's time goes, {stat} ms (cold: the triad runs before each step, as in the "
             "table; warm: steps back to back)", "", head, "-" * len(head)]
    for name, shape, modes in rows:
        for mode, row in modes.items():
            cells = "  ".join(f"{row[c]:11.3f}" if c in row else f"{'-':>11}" for c in BREAKDOWN_COLUMNS)
            lines.append(f"{name:>11}  {shape:>12}  {mode:>5}  {cells}")
    return "\n".join(lines)


# -- targets (issue #3) --------------------------------------------------------------------------------------
# Adam's two moments with a change to the update (bounds, rectification, a third EMA, a gradient difference,
# a mask): the optimizers the floor targets name. The quick shapes stand in for the shapes.
ADAM_FAMILY = ("adabelief", "adabound", "adam", "adamp", "adamw", "adan", "ademamix", "adopt", "amsbound",
               "amsgrad", "cadamw", "cademamix", "cadopt", "diffgrad")
TARGET_SHAPE = {"100x100k": "100x100k", "20x100k": "100x100k", "1000x1k": "1000x1k", "200x1k": "1000x1k"}
FLOOR_TARGET = {"100x100k": 1.3, "1000x1k": 2.0}  # compiled ms / floor ms at most
PEER_TARGET = {"100x100k": 2.0}  # peer ms / compiled ms at least; 1.0 (never slower) on every other shape


def target_checks(row: Row) -> list[tuple[str, bool]]:
    """The issue's targets that apply to this row's compiled time: (description, passed)."""
    if row.compiled_ms is None:
        return []
    shape = TARGET_SHAPE.get(row.shape)
    checks = []
    vs_floor = row.compiled_vs_floor
    if row.optimizer in ADAM_FAMILY and shape in FLOOR_TARGET and vs_floor is not None:
        limit = FLOOR_TARGET[shape]
        checks.append((f"floor {vs_floor:.2f}x (<= {limit})", vs_floor <= limit))
    if row.peer_ms is not None:
        need = PEER_TARGET.get(shape, 1.0) if shape is not None else 1.0
        faster = row.peer_ms / row.compiled_ms
        checks.append((f"peer {faster:.2f}x faster (>= {need})", faster >= need))
    return checks


def format_targets(report: Report) -> str:
    lines, tally = [], {"PASS": 0, "FAIL": 0}
    for r in report.rows:
        checks = target_checks(r)
        if not checks:
            continue
        verdicts = []
        for text, ok in checks:
            verdict = "PASS" if ok else "FAIL"
            tally[verdict] += 1
            verdicts.append(f"{text} {verdict}")
        lines.append(f"{r.optimizer:>10}  {r.shape:>12}  {r.path:<15} " + "; ".join(verdicts))
    if not lines:
        return ""
    head = ("targets (issue #3), compiled step: Adam-family within 1.3x of the floor on 100x100k and 2x on 1000x1k;"
            " >= 2x faster than the peer on 100x100k, never slower elsewhere")
    return "\n".join([head, *lines, f"targets: {tally['PASS']} PASS, {tally['FAIL']} FAIL"])


# -- output ------------------------------------------------------------------------------------------------
COLUMNS = ("optimizer", "shape", "k", "path", "compile s", "eager ms", "compiled ms", "fused ms", "floor ms",
           "peer ms", "e/floor", "c/floor", "fused/floor", "e/fused", "c/fused", "e/peer", "c/peer")
WIDTHS = (11, 12, 2, 15, 9, 8, 11, 8, 8, 8, 7, 7, 11, 7, 7, 6, 6)


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_row(r: Row) -> str:
    adamw_floor = r.floor_ms * 7 / (3 + 2 * r.state_tensors)  # fused AdamW keeps 2 state tensors
    cells = (r.optimizer, r.shape, str(r.state_tensors), r.path, _cell(r.compile_s, 1), _cell(r.eager_ms),
             _cell(r.compiled_ms), f"{r.fused_adamw_ms:.2f}", f"{r.floor_ms:.2f}", _cell(r.peer_ms),
             _cell(r.vs_floor), _cell(r.compiled_vs_floor), f"{r.fused_adamw_ms / adamw_floor:.2f}",
             _cell(r.vs_fused), _cell(r.compiled_vs_fused), _cell(ratio(r.eager_ms, r.peer_ms)),
             _cell(r.compiled_vs_peer))
    return "  ".join(c.rjust(w) for c, w in zip(cells, WIDTHS, strict=True))


def format_header(report: Report) -> str:
    compiled = ("not timed" if report.backend is None else
                f"compile={report.backend!r}, {report.compile_warmup} warm-up steps after the first before the"
                f" round-robin; compile s = wall-clock of its first step (inductor cache:"
                f" {os.environ.get('TORCHINDUCTOR_CACHE_DIR') or 'torch default'})")
    return "\n".join([
        f"torch {report.torch_version}, threads {report.threads}, CPU {report.cpu}, {os.cpu_count()} cores;"
        f" load average {report.load[0]:.1f} before, {report.load[1]:.1f} after",
        f"times: {report.stat} of the timed steps; eager {'timed' if report.eager else 'not timed'};"
        f" compiled: {compiled}; gradients: {report.grads}"
        + (" (a new tensor per parameter before each step, untimed)" if report.grads == "fresh" else ""),
        f"pytorch-optimizer {report.peer_version}; triad bandwidth (float32, 3 arrays counted):"
        f" a = a + s*b {report.bandwidth / 1e9:.1f} GB/s (median over rows; each row's floor uses the triad"
        f" timed in its own round-robin), c = a + s*b {report.bandwidth_three_arrays / 1e9:.1f} GB/s",
        "k: parameter-sized state tensors; floor = (3 + 2k) * bytes(params) / triad bandwidth; e = eager,"
        " c = compiled; x/peer < 1 means gradwise is faster",
    ])


def format_table(report: Report) -> str:
    head = "  ".join(c.rjust(w) for c, w in zip(COLUMNS, WIDTHS, strict=True))
    lines = [format_header(report), "", head, "-" * len(head), *(format_row(r) for r in report.rows)]
    fallbacks = sorted({(r.optimizer, r.fallback) for r in report.rows if r.fallback})
    if fallbacks:
        lines += ["", "eager fallbacks under compile (the engine's warning):"]
        lines += [f"  {name}: {reason}" for name, reason in fallbacks]
    targets = format_targets(report)
    if targets:
        lines += ["", targets]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats (a minute)")
    parser.add_argument("--shapes", default="100x100k,1000x1k,transformer",
                        help="comma list: NxM (N tensors of M elements) or 'transformer'")
    parser.add_argument("--optimizers", default="", help="comma list of registered names (default: all)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per contender (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile-warmup", type=int, default=3,
                        help="steps of the compiled optimizer after its first (compiling) one, before timing")
    parser.add_argument("--nonfinite", default="skip", choices=("skip", "raise", "ignore"),
                        help="gradwise's non-finite gradient policy (library default: skip)")
    parser.add_argument("--stat", default="median", choices=tuple(STATS),
                        help="statistic of the timed steps (min resists load from other processes)")
    parser.add_argument("--no-peers", action="store_true", help="do not time pytorch-optimizer")
    parser.add_argument("--grads", default="fixed", choices=GRADS,
                        help="fixed: the same gradient tensors every step; fresh: a new gradient tensor per parameter "
                        "before each step (untimed), as after zero_grad(set_to_none=True)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--no-compile", action="store_true", help="time eager only (no compiled contender)")
    which.add_argument("--compile-only", action="store_true", help="time compiled only (no eager contender)")
    parser.add_argument("--backend", default="inductor", choices=("inductor", "aot_eager", "eager"),
                        help="torch.compile backend of the compiled contender")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the table: the parts of each compiled step (checks, non-finite check, "
                             "compiled call, the rest), cold and warm")
    args = parser.parse_args(argv)
    if args.quick and args.shapes == parser.get_default("shapes"):
        args.shapes = "20x100k,200x1k,transformer"
    repeats = args.repeats or (5 if args.quick else 15)
    known = optimizer_names()
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()] or known
    for n in names:
        if n not in known:
            parser.error(f"--optimizers: unknown optimizer {n!r}; registered: {', '.join(known)}")
    shapes = parse_shapes(args.shapes, quick=args.quick)
    compile_flag: bool | str = False if args.no_compile else (True if args.backend == "inductor" else args.backend)
    print(f"timing {len(names)} optimizers x {len(shapes)} shape sets, {args.stat} of {repeats} steps ...",
          file=sys.stderr)
    started = time.perf_counter()
    if args.breakdown:
        if compile_flag is False:
            parser.error("--breakdown times the compiled step: leave out --no-compile")
        ignored = [flag for flag, dest in (("--grads", "grads"), ("--warmup", "warmup"),
                                           ("--compile-warmup", "compile_warmup"), ("--no-peers", "no_peers"))
                   if getattr(args, dest, None) != parser.get_default(dest)]
        if ignored:  # the breakdown times its own fixed-gradient steps, no peers
            parser.error(f"--breakdown does not take {', '.join(ignored)}")
        torch.set_num_threads(args.threads)
        rows = [(name, shape, overhead_breakdown(name, shape_list, repeats=max(repeats, 20), nonfinite=args.nonfinite,
                                                 backend=compile_flag, stat=args.stat))
                for shape, shape_list in shapes.items() for name in names]
        print(format_breakdown(rows, args.stat))
        print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - started:.0f} s")
        return 0
    report = benchmark(shapes, names, repeats=repeats, warmup=args.warmup, threads=args.threads,
                       nonfinite=args.nonfinite, peers=not args.no_peers, stat=args.stat,
                       log=lambda line: print(line, file=sys.stderr, flush=True), eager=not args.compile_only,
                       compile=compile_flag, compile_warmup=args.compile_warmup, grads=args.grads)
    print(format_table(report))
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
