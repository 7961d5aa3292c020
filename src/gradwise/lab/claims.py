"""The `paper` suite's headline claims, checked at CPU scale against the lab's stored results.

A claim names the optimizers and problems it needs and a check that reads the results and returns
whether the claim held, with the evidence. The lab tunes every optimizer with the same budget; the
papers often compared at fixed, shared hyper-parameters, so a claim holding (or not) here is a statement
about tuned optimizers at this scale, not a verdict on the paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from . import analysis
from .analysis import Results


@dataclass(frozen=True)
class Claim:
    name: str
    source: str
    statement: str
    optimizers: tuple[str, ...]
    problems: tuple[str, ...]
    check: Callable[[Results], tuple[bool, str]] | None = None
    missing: str = ""  # why the lab cannot check it yet (empty when it can)


def _steps(results: Results, problem: str, optimizer: str) -> float:
    return analysis.time_to_target(results, problem, optimizer)[0]


def _faster_on_every(candidate: str, baseline: str, problems: tuple[str, ...]):
    def check(results: Results) -> tuple[bool, str]:
        held, evidence = True, []
        for p in problems:
            mine, theirs = _steps(results, p, candidate), _steps(results, p, baseline)
            held &= math.isfinite(mine) and mine <= theirs
            evidence.append(f"{p}: {candidate} {_show(mine)} vs {baseline} {_show(theirs)} steps")
        return held, "; ".join(evidence)

    return check


def _show(value: float) -> str:
    return "miss" if not math.isfinite(value) else f"{value:g}"


BELIEF_TOYS = ("belief-abs", "belief-skew-abs", "belief-quadratic")

CLAIMS: tuple[Claim, ...] = (
    Claim("adabelief-toys", "Zhuang et al. 2020, AdaBelief, Fig. 3",
          "on the paper's three 2-D toy functions AdaBelief reaches the optimum faster than Adam",
          ("adabelief", "adamw"), BELIEF_TOYS, _faster_on_every("adabelief", "adamw", BELIEF_TOYS)),
    Claim("grokfast-grokking", "Lee et al. 2024, Grokfast",
          "amplifying slow gradients makes modular-arithmetic grokking happen several times sooner",
          ("adamw",), (), missing="the grokking problem is not in the lab yet"),
    Claim("cautious-lm", "Liang et al. 2024, Cautious Optimizers",
          "the cautious mask speeds up language-model training", ("adamw",), ("char-lm",),
          missing="the lab does not run cautious=True variants yet"),
    Claim("8bit-parity", "Dettmers et al. 2022, 8-bit Optimizers",
          "8-bit block-wise optimizer state matches 32-bit state", ("adamw",), ("char-lm",),
          missing="the lab does not run state_bits=8 variants yet"),
)


def verdicts(results: Results) -> list[tuple[Claim, str, str]]:
    """(claim, "held" | "did not hold" | "not checked", evidence or reason) for every claim."""
    out = []
    for claim in CLAIMS:
        if claim.missing or claim.check is None:
            out.append((claim, "not checked", claim.missing))
            continue
        absent = [o for o in claim.optimizers if o not in results.optimizers]
        absent += [p for p in claim.problems if p not in results.plan.problems]
        unfinished = [f"{p}/{o}" for p in claim.problems for o in claim.optimizers
                      if p in results.plan.problems and o in results.optimizers
                      and not results.cell(p, o).runs]
        if absent or unfinished:
            reason = f"needs {', '.join(absent)} in the run" if absent else f"unfinished: {', '.join(unfinished)}"
            out.append((claim, "not checked", reason))
            continue
        held, evidence = claim.check(results)
        out.append((claim, "held" if held else "did not hold", evidence))
    return out
