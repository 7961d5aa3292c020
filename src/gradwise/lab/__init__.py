"""The gradwise lab: a fair, reproducible optimizer benchmark that runs offline on a CPU.

Protocol
--------
1. Optimizers: every registered optimizer whose registry entry has kind "optimizer" (samplers such as
   SGLD are skipped, as is any name in `gradwise.lab.runner.EXCLUDED`), or the ones named with
   --optimizers. AdamW is always included: it is the baseline the targets come from. An optimizer that
   cannot be built from `gradwise.create(name, model, lr=..., weight_decay=...)` is reported as such.
   A name may carry variants, "adamw+grokfast", "adamw+cautious", "adamw+8bit": the optimizer with that
   engine option on at its paper's defaults (8-bit: every state tensor quantised); the paper suite adds
   these three, which its claims need.
2. Problems: small and offline (2-D test functions; the 1-D functions F1, F2 and F3 of the diffGrad paper;
   logistic regression, MLPs and a CNN on scikit-learn's bundled digits and breast-cancer sets, split once
   60/20/20 train/validation/test with a fixed seed; modular-addition grokking; a character-level
   transformer). Each is deterministic given a seed: the seed fixes the initialisation, the mini-batch
   order and, for the test functions, a small jitter of the starting point. The quick suite runs
   shortened copies of the two digit networks (mlp-digits-quick: 120 steps, cnn-digits-quick: 100 steps
   with its training loss measured on a fixed 256 training images; the full problems train 300 steps),
   so that the whole suite costs about 30 CPU-seconds per optimizer (13 CPU-minutes for 27
   optimizers); the standard and paper suites run the full problems.
3. Equal tuning budget: for each (problem, optimizer), T trials of Optuna's TPE sampler (seeded; the
   first max(2, min(10, T // 3)) trials are random) over the problem's declared log-uniform
   learning-rate range, the same for every optimizer; with weight-decay tuning (suite standard) also
   weight decay, log-uniform in [1e-5, 1e-1]; otherwise weight decay is the problem's (0, except grokking,
   which needs weight decay to generalise at all) for every optimizer. All
   other hyper-parameters stay at the optimizer's paper defaults. Every tuning trial trains with seed 0
   and is scored by the final value of the problem's objective: validation loss for the networks, the
   function value for the 2-D functions. A diverged trial scores +inf and counts against the budget.
4. Seeds: the best configuration (lowest score; ties to the earlier trial) is re-run with S evaluation
   seeds (3 in quick, 10 in standard), seeds 1000..1000+S-1, which the tuner never saw.
5. Per problem, the report gives the median and the range [min, max] over seeds of the final training
   loss and test accuracy, and the steps and training wall time (evaluation excluded) to the target.
   The target is the problem's fixed goal where it declares one (grokking: 95 % validation accuracy),
   otherwise it is set from the tuned AdamW baseline: the value of the target metric (test accuracy for
   the networks, the function value for the test functions) that at least half its seed runs reach at
   their last evaluation. A run's time to target is its first evaluation at which the metric is at least
   as good; an optimizer's is the time by which half its seeds got there. Diverged runs and runs that
   never get there are misses: they are counted, never dropped.
6. Across problems: AlgoPerf-style performance profiles. On each problem an optimizer's ratio is its
   steps to target divided by the fewest steps of any optimizer (a miss is +inf); rho(tau) is the share
   of problems with ratio <= tau, and the score is the area under rho for 1 <= tau <= 4, divided by 3
   (1.0: fastest everywhere; 0.0: never within 4x of the fastest, or always a miss).
7. Storage and resume: every trial and seed run is an Optuna trial, persisted the moment it finishes
   (SQLite in --out by default, any SQLAlchemy URL with --storage). Restarting with the same --out
   resumes and never repeats a finished run; `gradwise lab worker --storage URL` processes share the
   work of one plan. Runs use one torch thread each by default.
8. Weight averaging (--average ema[:DECAY] | swa[:START] | lawa[:K[:EVERY]]): every run also keeps a
   gradwise.averaging average of its model, and every evaluation records the averaged model's metrics
   ("avg_" + metric) beside the raw ones; the report shows both validation losses. Training, tuning and
   targets use the raw model only.
9. Claims: `gradwise lab claims` reproduces each paper claim of gradwise.lab.claims at one fixed
   configuration (same lr for both optimizers, median over seeds) and says whether it held; the paper
   suite judges the same claims on tuned optimizers.
"""

from __future__ import annotations

PROTOCOL = __doc__ or ""

from .problems import PROBLEMS, SUITES, Problem, Suite  # noqa: E402
from .runner import Lab, Plan, benchmarkable, open_storage, run_lab, run_worker, storage_url, train  # noqa: E402

__all__ = [
    "PROBLEMS", "PROTOCOL", "SUITES", "Lab", "Plan", "Problem", "Suite", "benchmarkable", "open_storage",
    "run_lab", "run_worker", "storage_url", "train",
]
