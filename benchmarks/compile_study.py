"""Prototype study for the compiled engine (issue 3): how to batch, how to pass scalars, how to branch.

Outside the library on purpose: AdamW is written here as plain tensor ops, and each question is answered
by measurement on this machine.

(a) Batching. One AdamW step, written as `adamw_kernel`: the step's scalars (decay 1 - lr wd, step size
    lr / (1 - b1^t), 1 / sqrt(1 - b2^t)) are computed on the host once per step and handed to the compiled
    kernel in preallocated 0-dim tensors (`fill_`), so that no value the graph sees as a constant changes.
    Run as
      unrolled      torch.compile over lists of tensors: the per-parameter loop unrolled into one graph
      per-param     one compiled function with dynamic shapes, called once per parameter from Python
      flat-views    parameters, gradients and state are views of four flat buffers; one call on the buffers
      flat-guard    flat-views plus the non-finite check inside the graph (where(all finite, new, old))
      flat-gather   state flat, but parameters and gradients are the model's own tensors: torch.cat them in,
                    run the flat kernel, copy the parameters back out (what an engine can do without owning
                    the parameters' storage)
      flat-inkernel flat-views with lr and step as 0-dim tensors and the bias corrections (pow, sqrt)
                    written in the graph: inductor computes them inside the element loop, per 8 elements
    next to torch.optim.AdamW(fused=True), its foreach and for-loop paths, the same plain function run
    eagerly, and the bandwidth floor (7 passes over the parameters' bytes / triad bandwidth). Step times
    are the median of round-robin steps; "compile s" is the first call, in a process whose inductor cache
    directory is fresh ("cold") and again in a second process on the same directory ("warm": torch's FX
    graph cache and AOTAutograd cache hit, dynamo still traces). A trivial function is compiled first in
    each process so that one-time work (inductor start-up, C++ precompiled header) is reported apart.
(b) Scalars. Which in-place op forms accept a 0-dim tensor where torch documents a Number, and how many
    graphs torch.compile makes over 50 steps with a changing lr, for each form and for Python floats.
(c) Branches. AdaBelief's rectification (SGD step while rho_t < 5, rectified Adam step after) written with a
    Python `if` on the step and with torch.where: graphs over 50 steps and agreement with gradwise.AdaBelief.

(d) The existing chain. gradwise's AdamW chain (closures over Python floats, t a float) compiled as it is:
    graphs over 50 steps with a changing lr and agreement with the same chain run eagerly.
Run:  .venv/bin/python benchmarks/compile_study.py [--parts a,b,c,d] [--threads 1] [--full]
(--full also compiles the unrolled graph over 1000 tensors, which takes minutes.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from torch import Tensor

BETA1, BETA2, EPS, WD = 0.9, 0.999, 1e-8, 1e-2
SHAPES = {"100x100k": (100, 100_000), "1000x1k": (1000, 1_000)}


# -- AdamW as plain tensor ops: every scalar that changes is a 0-dim tensor ---------------------------------
def adamw_plain(p: Tensor, g: Tensor, m: Tensor, v: Tensor, lr: Tensor, step: Tensor) -> None:
    """torch.optim.AdamW's update, written only with ops that take tensor scalars."""
    p.mul_(1 - lr * WD)
    m.lerp_(g, 1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)  # value is a constant Python float: fine
    bias1 = 1 - BETA1**step
    bias2 = 1 - BETA2**step
    p.sub_((lr / bias1) * m / (v.sqrt() / bias2.sqrt() + EPS))


def adamw_coefficients(lr: float, step: int) -> tuple[float, float, float]:
    """The step's scalars, computed once per group on the host: decay, step size, 1 / sqrt(bias2)."""
    return 1 - lr * WD, lr / (1 - BETA1**step), 1 / math.sqrt(1 - BETA2**step)


def adamw_kernel(p: Tensor, g: Tensor, m: Tensor, v: Tensor, decay: Tensor, step_size: Tensor,
                 denom_scale: Tensor) -> None:
    """adamw_plain with the scalar math hoisted out: only loads, FMAs, a sqrt and a division per element."""
    p.mul_(decay)
    m.lerp_(g, 1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
    p.sub_(step_size * m / (v.sqrt() * denom_scale + EPS))


def adamw_unrolled(ps, gs, ms, vs, decay: Tensor, step_size: Tensor, denom_scale: Tensor) -> None:
    for p, g, m, v in zip(ps, gs, ms, vs, strict=True):
        adamw_kernel(p, g, m, v, decay, step_size, denom_scale)


def adamw_guarded(p: Tensor, g: Tensor, m: Tensor, v: Tensor, decay: Tensor, step_size: Tensor,
                  denom_scale: Tensor) -> None:
    """adamw_kernel that leaves p, m and v untouched when g holds a NaN or infinity, without a host sync."""
    ok = torch.isfinite(g).all()
    new_m = m.lerp(g, 1 - BETA1)
    new_v = v * BETA2 + (1 - BETA2) * g * g
    new_p = p * decay - step_size * new_m / (new_v.sqrt() * denom_scale + EPS)
    p.copy_(torch.where(ok, new_p, p))
    m.copy_(torch.where(ok, new_m, m))
    v.copy_(torch.where(ok, new_v, v))


# -- helpers ---------------------------------------------------------------------------------------------
def triad_bandwidth(elements: int = 32_000_000, repeats: int = 10) -> float:
    """Bytes per second of the in-place triad a = a + s * b on float32 arrays larger than the caches.

    In place, as an optimizer's update is: a triad into a third array also reads that array into the cache
    before writing it, so its 3-array count understates the bandwidth (see benchmarks/step_speed.py).
    """
    a, b = torch.rand(elements), torch.rand(elements)
    times = []
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        a.add_(b, alpha=1e-9)
        times.append(time.perf_counter() - t0)
    return 3 * elements * 4 / statistics.median(times[2:])


def tensors(count: int, size: int, seed: int) -> tuple[list[Tensor], list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return ([torch.randn(size, generator=gen) for _ in range(count)],
            [torch.randn(size, generator=gen) * 1e-2 for _ in range(count)])


def flat_views(values: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
    flat = torch.cat([t.reshape(-1) for t in values])
    return flat, list(flat.split([t.numel() for t in values]))


class Contender:
    """One way to run the step, with its own copy of the parameters, state, lr and step count."""

    def __init__(self, name: str, count: int, size: int, variant: str):
        self.name = name
        ps, gs = tensors(count, size, seed=0)
        self.lr, self.step_t = torch.tensor(1e-3), torch.tensor(0.0)
        self.step_count = 0
        self.scalars = [torch.tensor(0.0) for _ in range(3)]  # decay, step size, 1 / sqrt(bias2)
        self.first_call_s = 0.0
        if variant in ("fused", "foreach", "forloop"):
            for p, g in zip(ps, gs, strict=True):
                p.grad = g
            self.opt = torch.optim.AdamW(ps, lr=1e-3, **{variant: True} if variant != "forloop" else
                                         {"foreach": False})
            self.params, self.call = ps, self.opt.step
            return
        if variant.startswith("flat") and variant != "flat-gather":
            self.pf, self.params = flat_views(ps)
            self.gf, self.grads = flat_views(gs)
            self.mf, self.vf = torch.zeros_like(self.pf), torch.zeros_like(self.pf)
        elif variant == "flat-gather":  # the model's own tensors; flat state and two flat work buffers
            self.params, self.grads = ps, gs
            self.pf, self.pf_views = flat_views(ps)
            self.gf, self.gf_views = flat_views(gs)
            self.mf, self.vf = torch.zeros_like(self.pf), torch.zeros_like(self.pf)
        else:
            self.params, self.grads = ps, gs
            self.ms, self.vs = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps]
        self.call = {
            "eager-plain": self._eager, "unrolled": self._unrolled, "per-param": self._per_param,
            "flat-views": self._flat, "flat-guard": self._flat, "flat-gather": self._gather,
            "flat-inkernel": self._flat_inkernel, "per-param-inkernel": self._per_param_inkernel,
        }[variant]
        self.fn = {
            "eager-plain": adamw_kernel,
            "unrolled": torch.compile(adamw_unrolled),
            "per-param": torch.compile(adamw_kernel, dynamic=True),
            "flat-views": torch.compile(adamw_kernel),
            "flat-guard": torch.compile(adamw_guarded),
            "flat-gather": torch.compile(adamw_kernel),
            "flat-inkernel": torch.compile(adamw_plain),
            "per-param-inkernel": torch.compile(adamw_plain, dynamic=True),
        }[variant]

    def _coefficients(self) -> list[Tensor]:
        """Once per step (per group in an engine): the host computes the scalars, 0-dim tensors carry them."""
        self.step_count += 1
        for slot, value in zip(self.scalars, adamw_coefficients(1e-3, self.step_count), strict=True):
            slot.fill_(value)
        return self.scalars

    def _eager(self):
        scalars = self._coefficients()
        for p, g, m, v in zip(self.params, self.grads, self.ms, self.vs, strict=True):
            self.fn(p, g, m, v, *scalars)

    _per_param = _eager

    def _unrolled(self):
        self.fn(self.params, self.grads, self.ms, self.vs, *self._coefficients())

    def _flat(self):
        self.fn(self.pf, self.gf, self.mf, self.vf, *self._coefficients())

    def _gather(self):
        # The model owns p and p.grad: copy them into preallocated flat buffers, update those, copy p back.
        torch._foreach_copy_(self.pf_views, self.params)
        torch._foreach_copy_(self.gf_views, self.grads)
        self.fn(self.pf, self.gf, self.mf, self.vf, *self._coefficients())
        torch._foreach_copy_(self.params, self.pf_views)

    def _flat_inkernel(self):  # lr and step as 0-dim tensors, pow and sqrt of the step inside the kernel
        self.step_t += 1
        self.fn(self.pf, self.gf, self.mf, self.vf, self.lr, self.step_t)

    def _per_param_inkernel(self):
        self.step_t += 1
        for p, g, m, v in zip(self.params, self.grads, self.ms, self.vs, strict=True):
            self.fn(p, g, m, v, self.lr, self.step_t)


class Triad:
    """The in-place triad a = a + s * b, timed in the round-robin so that the floor sees the same load."""

    name, first_call_s, elements = "triad", 0.0, 32_000_000

    def __init__(self):
        self.a, self.b = torch.rand(self.elements), torch.rand(self.elements)

    def call(self):
        self.a.add_(self.b, alpha=1e-9)


def time_contenders(contenders: list, repeats: int, warmup: int) -> dict[str, float]:
    for c in contenders:  # the first call compiles
        t0 = time.perf_counter()
        c.call()
        c.first_call_s = time.perf_counter() - t0
    for _ in range(warmup):
        for c in contenders:
            c.call()
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    for _ in range(repeats):
        for c in contenders:
            t0 = time.perf_counter()
            c.call()
            samples[c.name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def prime_compile() -> float:
    """Seconds to compile a trivial function: the one-time cost of a process's first compile."""
    fn = torch.compile(lambda x: x.mul(2).add_(1))
    t0 = time.perf_counter()
    fn(torch.ones(8))
    return time.perf_counter() - t0


# -- (a) worker: runs in its own process so that "cold" and "warm" mean something ----------------------------
def worker(variants: list[str], shapes: list[str], repeats: int, warmup: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    out: dict = {"prime_s": prime_compile(), "shapes": {}}
    for shape in shapes:
        count, size = SHAPES[shape]
        contenders = [Contender(v, count, size, v) for v in variants]
        ms = time_contenders([*contenders, Triad()], repeats, warmup)
        reference = next(c for c in contenders if c.name == "fused") if "fused" in variants else None
        rows = {}
        for c in contenders:
            diff = None
            if reference is not None and c is not reference:
                ref = torch.cat([p.detach().reshape(-1) for p in reference.params])
                got = torch.cat([p.detach().reshape(-1) for p in c.params])
                diff = float((got - ref).abs().max() / ref.abs().max())
            rows[c.name] = {"ms": ms[c.name] * 1e3, "first_call_s": c.first_call_s, "max_rel_diff": diff}
        rows["triad"] = {"ms": ms["triad"] * 1e3, "bandwidth": 3 * Triad.elements * 4 / ms["triad"]}
        out["shapes"][shape] = rows
        del contenders
    from torch._dynamo.utils import counters

    out["graphs"] = counters["stats"]["unique_graphs"]
    out["fxgraph_cache"] = dict(counters["inductor"])
    return out


def run_worker(cache: str, variants: list[str], shapes: list[str], args: argparse.Namespace,
               timeout: float = 900) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    cmd = [sys.executable, __file__, "--worker", ",".join(variants), "--worker-shapes", ",".join(shapes),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {variants} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def part_a(args: argparse.Namespace) -> None:
    print("\n== (a) batching: AdamW step ms and compile seconds ==")
    print(f"in-place triad bandwidth before the runs {triad_bandwidth() / 1e9:.1f} GB/s; each shape's floor uses"
          " the triad timed in its round-robin: 7 passes x 4 bytes x elements / bandwidth")
    eager = ["fused", "foreach", "forloop", "eager-plain"]
    compiled = ["per-param", "flat-views", "flat-guard", "flat-gather", "flat-inkernel"]
    unrolled_shapes = list(SHAPES) if args.full else ["100x100k"]
    with tempfile.TemporaryDirectory(prefix="gradwise-inductor-") as cache:
        runs = {}
        for label in ("cold", "warm"):
            runs[label] = run_worker(cache, eager + compiled, list(SHAPES), args)
            runs[label + "-unrolled"] = run_worker(cache, ["fused", "unrolled"], unrolled_shapes, args)
            print(f"  {label}: process {runs[label]['process_s']:.0f} s (first compile in it "
                  f"{runs[label]['prime_s']:.1f} s), unrolled process {runs[label + '-unrolled']['process_s']:.0f} s",
                  flush=True)
    head = (f"{'variant':>12} {'shape':>9} {'step ms':>8} {'x fused':>7} {'x floor':>7} {'cold s':>7}"
            f" {'warm s':>7} {'rel diff':>8}")
    print(head + "\n" + "-" * len(head))
    for shape, (count, size) in SHAPES.items():
        bandwidth = runs["cold"]["shapes"][shape]["triad"]["bandwidth"]
        floor_ms = 7 * 4 * count * size / bandwidth * 1e3
        print(f"{'floor':>12} {shape:>9} {floor_ms:8.2f}   (triad {bandwidth / 1e9:.1f} GB/s)")
        for name in eager + compiled + ["unrolled"]:
            run = "-unrolled" if name == "unrolled" else ""
            cold = runs["cold" + run]["shapes"].get(shape, {})
            if name not in cold:
                print(f"{name:>12} {shape:>9}   (not run; --full compiles it)")
                continue
            r, w = cold[name], runs["warm" + run]["shapes"][shape][name]
            # Ratios against the fused AdamW and the triad timed in the same process and round-robin.
            own_fused = cold["fused"]["ms"]
            own_floor = 7 * 4 * count * size / cold["triad"]["bandwidth"] * 1e3
            compiles = name in compiled or name == "unrolled"
            cold_s = f"{r['first_call_s']:7.1f}" if compiles else f"{'-':>7}"
            warm_s = f"{w['first_call_s']:7.1f}" if compiles else f"{'-':>7}"
            diff = "-" if r["max_rel_diff"] is None else f"{r['max_rel_diff']:.1e}"
            print(f"{name:>12} {shape:>9} {r['ms']:8.2f} {r['ms'] / own_fused:7.2f} {r['ms'] / own_floor:7.2f} "
                  f"{cold_s} {warm_s} {diff:>8}" + ("   (own process)" if run else ""))
    print(f"graphs compiled in the cold process: {runs['cold']['graphs']} (per-param: one graph for every shape)")
    print(f"inductor cache counters, cold: {runs['cold']['fxgraph_cache']}; warm: {runs['warm']['fxgraph_cache']}")


# -- (b) scalars ----------------------------------------------------------------------------------------
FORMS: dict[str, Callable[[Tensor, Tensor, Tensor, object], object]] = {
    "p.addcdiv_(a, b, value=s)": lambda p, a, b, s: p.addcdiv_(a, b, value=s),
    "p.addcmul_(a, b, value=s)": lambda p, a, b, s: p.addcmul_(a, b, value=s),
    "p.add_(a, alpha=s)": lambda p, a, b, s: p.add_(a, alpha=s),
    "p.mul_(s)": lambda p, a, b, s: p.mul_(s),
    "p.lerp_(a, s)": lambda p, a, b, s: p.lerp_(a, s),
    "p.sub_(s * a / b)": lambda p, a, b, s: p.sub_(s * a / b),
    "p.addcdiv_(s * a, b)": lambda p, a, b, s: p.addcdiv_(s * a, b),
    "p.add_(a * s)": lambda p, a, b, s: p.add_(a * s),
}


def count_graphs(fn: Callable, inputs: Callable[[int], tuple], steps: int = 50, backend: str = "eager") -> dict:
    """Graphs compiled and graph breaks over `steps` calls of torch.compile(fn) with inputs(i)."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounterWithBackend
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend(backend)
    compiled = torch.compile(fn, backend=counter)
    try:
        for i in range(steps):
            compiled(*inputs(i))
    except Exception as error:  # noqa: BLE001 - the study reports what fails
        return {"graphs": counter.frame_count, "breaks": None, "error": f"{type(error).__name__}: {error}"[:90],
                "compiled": compiled}
    breaks = sum(counters["graph_break"].values())
    return {"graphs": counter.frame_count, "breaks": breaks, "error": None, "compiled": compiled}


def part_b(args: argparse.Namespace) -> None:
    print("\n== (b) scalars: 50 steps, lr changing every step ==")
    p, a, b = torch.randn(1000), torch.randn(1000), torch.rand(1000) + 0.5

    def lr_tensor(i: int) -> Tensor:
        return torch.tensor(1e-3 * (1 - i / 100))

    print(f"{'op form':>28} {'eager, 0-dim s':>16} {'graphs (s tensor)':>18} {'breaks':>6} {'graphs (s float)':>17}"
          f" {'|compiled - eager|':>18}")
    for name, form in FORMS.items():
        try:
            form(p.clone(), a, b, lr_tensor(0))
            eager = "accepted"
        except Exception as error:  # noqa: BLE001
            eager = type(error).__name__
        t = count_graphs(lambda p, a, b, s, form=form: form(p, a, b, s), lambda i: (p, a, b, lr_tensor(i)))
        f = count_graphs(lambda p, a, b, s, form=form: form(p, a, b, s),
                         lambda i: (p, a, b, 1e-3 * (1 - i / 100)))
        want, got = p.clone(), p.clone()
        form(want, a, b, 0.37)
        t["compiled"](got, a, b, torch.tensor(0.37))
        diff = float((got - want).abs().max())
        print(f"{name:>28} {eager:>16} {t['graphs']:>18} {t['breaks'] if t['breaks'] is not None else '-':>6} "
              f"{f['graphs']:>17} {diff:18.1e}" + (f"   ({t['error']})" if t["error"] else ""))

    # The whole AdamW step with lr and step as 0-dim tensors, and with Python numbers.
    m, v = torch.zeros(1000), torch.zeros(1000)
    res = count_graphs(adamw_plain, lambda i: (p, a, m, v, lr_tensor(i), torch.tensor(float(i + 1))),
                       backend=args.backend)
    print(f"adamw_plain, lr and step 0-dim tensors ({args.backend} backend): {res['graphs']} graph(s), "
          f"{res['breaks']} graph breaks in 50 steps")
    slots = [torch.tensor(0.0) for _ in range(3)]

    def kernel_inputs(i: int):
        for slot, value in zip(slots, adamw_coefficients(1e-3 * (1 - i / 100), i + 1), strict=True):
            slot.fill_(value)
        return (p, a, m, v, *slots)

    res = count_graphs(adamw_kernel, kernel_inputs, backend=args.backend)
    print(f"adamw_kernel, host scalars filled into 0-dim tensors ({args.backend} backend): {res['graphs']} "
          f"graph(s), {res['breaks']} graph breaks in 50 steps")

    def adamw_numbers(p, g, m, v, lr: float, step: int):
        p.mul_(1 - lr * WD)
        m.lerp_(g, 1 - BETA1)
        v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
        denom = (v.sqrt() / math.sqrt(1 - BETA2**step)).add_(EPS)
        p.addcdiv_(m, denom, value=-lr / (1 - BETA1**step))

    res = count_graphs(adamw_numbers, lambda i: (p, a, m, v, 1e-3 * (1 - i / 100), i + 1))
    print(f"adamw with Python lr (float) and step (int), addcdiv_(value=...) and math.sqrt: {res['graphs']} "
          f"graph(s), {res['breaks']} graph breaks in 50 steps")


# -- (c) branches -----------------------------------------------------------------------------------------
def rectified_where(p, m, v, lr: Tensor, step: Tensor, beta1: float, beta2: float, eps: float) -> None:
    """AdaBelief/RAdam step with the rho_t >= 5 switch as torch.where: no host sync, no recompile."""
    beta2_t = beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
    rectify = rho_t >= 5
    safe_rho = torch.where(rectify, rho_t, torch.full_like(rho_t, 5.0))  # keeps sqrt's argument >= 0
    r = torch.sqrt((safe_rho - 4) / (rho_inf - 4) * (safe_rho - 2) / safe_rho * rho_inf / (rho_inf - 2))
    bias1 = 1 - beta1**step
    adaptive = (lr * r * torch.sqrt(1 - beta2_t) / bias1) * m / (v.sqrt() + eps)
    plain = (lr / bias1) * m
    p.sub_(torch.where(rectify, adaptive, plain))


def rectified_if(p, m, v, lr, step, beta1: float, beta2: float, eps: float) -> None:
    """The same with a Python `if` on rho_t (a tensor when step is, a float when step is a number)."""
    beta2_t = beta2**step
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
    bias1 = 1 - beta1**step
    if rho_t >= 5:
        r = ((rho_t - 4) / (rho_inf - 4) * (rho_t - 2) / rho_t * rho_inf / (rho_inf - 2)) ** 0.5
        p.sub_((lr * r * (1 - beta2_t) ** 0.5 / bias1) * m / (v.sqrt() + eps))
    else:
        p.sub_((lr / bias1) * m)


def adabelief_step(rectified: Callable, p, g, m, s, lr, step) -> None:
    beta1, beta2, eps = 0.9, 0.999, 1e-16
    m.lerp_(g, 1 - beta1)
    residual = g - m
    s.mul_(beta2).addcmul_(residual, residual, value=1 - beta2).add_(eps)
    rectified(p, m, s, lr, step, beta1, beta2, eps)


def part_c(args: argparse.Namespace) -> None:
    print("\n== (c) branches: AdaBelief's rectification switch (rho_t >= 5 from step 6 on), 50 steps ==")
    import gradwise

    dtype = torch.float64
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(64, 32, generator=gen, dtype=dtype) for _ in range(50)]
    start = torch.randn(64, 32, generator=gen, dtype=dtype)

    def lrs(i: int) -> float:
        return 1e-2 * (1 - i / 100)

    def reference() -> Tensor:
        q = start.clone().requires_grad_()
        opt = gradwise.AdaBelief([q], lr=lrs(0))
        for i in range(50):
            opt.param_groups[0]["lr"] = lrs(i)
            q.grad = grads[i]
            opt.step()
        return q.detach()

    want = reference()
    cases = {
        "torch.where, tensor step": (rectified_where, True),
        "Python if, tensor step": (rectified_if, True),
        "Python if, float step": (rectified_if, False),
    }
    for label, (branch, tensor_step) in cases.items():
        p, m, s = start.clone(), torch.zeros_like(start), torch.zeros_like(start)

        def inputs(i: int, p=p, m=m, s=s, tensor_step=tensor_step):
            lr = torch.tensor(lrs(i), dtype=dtype) if tensor_step else lrs(i)
            step = torch.tensor(float(i + 1), dtype=dtype) if tensor_step else float(i + 1)
            return (p, grads[i], m, s, lr, step)

        res = count_graphs(lambda *xs, branch=branch: adabelief_step(branch, *xs), inputs, backend=args.backend)
        diff = float((p - want).abs().max() / want.abs().max())
        print(f"{label:>26}: {res['graphs']:>2} graph(s), {res['breaks']} graph breaks; max rel diff to "
              f"gradwise.AdaBelief after 50 steps {diff:.1e}" + (f" ({res['error']})" if res["error"] else ""))


# -- (d) the existing chain, compiled unchanged ------------------------------------------------------------
def part_d(args: argparse.Namespace) -> None:
    print("\n== (d) gradwise's own AdamW chain compiled unchanged: Python float lr and t, 50 steps, inductor ==")
    from types import SimpleNamespace

    from torch._dynamo.utils import counters

    import gradwise

    gen = torch.Generator().manual_seed(0)
    start, grad = torch.randn(1000, generator=gen), torch.randn(1000, generator=gen) * 1e-2
    opt = gradwise.AdamW([start.clone().requires_grad_()])
    base = {k: v for k, v in opt.param_groups[0].items() if k != "params"}

    def chain_step(p, g, state, t: float, h) -> None:
        u = g
        for transform in type(opt).chain(opt, h):
            u = transform.update(u, p, state, t)

    def fresh():
        p = start.clone()
        state = {}
        for transform in type(opt).chain(opt, SimpleNamespace(**base)):
            state.update(transform.init(p))
        return p, state

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(chain_step)
    (p, state), (q, ref_state) = fresh(), fresh()
    t0 = time.perf_counter()
    for i in range(50):
        h = SimpleNamespace(**{**base, "lr": 1e-3 * (1 - i / 100)})
        compiled(p, grad, state, float(i + 1), h)
        chain_step(q, grad, ref_state, float(i + 1), h)
    graphs = counters["stats"]["unique_graphs"]
    diff = float((p - q).abs().max() / q.abs().max())
    print(f"{graphs} graph(s) in 50 steps ({time.perf_counter() - t0:.0f} s); recompile limit "
          f"{torch._dynamo.config.recompile_limit}; max rel diff to the same chain run eagerly {diff:.1e}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="a,b,c,d")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (workers too)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="also compile the unrolled graph over 1000 tensors")
    parser.add_argument("--backend", default="eager", help="torch.compile backend for the counts of (b), (c)")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    parser.add_argument("--worker-shapes", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        result = worker(args.worker.split(","), args.worker_shapes.split(","), args.repeats, args.warmup,
                        args.threads)
        print(json.dumps(result))
        return 0
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {args.threads}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    parts = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}
    for key in args.parts.split(","):
        parts[key.strip()](args)
    print(f"\nstudy took {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
