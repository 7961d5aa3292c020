"""The `gradwise` command. `gradwise lab run | report | list | claims | worker | sampling`: the benchmark lab."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="gradwise: optimizers that read their gradients, and the lab that measures them.",
                  no_args_is_help=True, add_completion=False)
lab_app = typer.Typer(help="The benchmark lab: tune, re-run over seeds, report.", no_args_is_help=True)
app.add_typer(lab_app, name="lab")
console = Console()


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


class _Bar:
    """Turns the lab's events into one rich progress bar over every trial and seed run."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if event == "start":
            self.task = self.progress.add_task("starting", total=data["total"], completed=data["done"])
        elif event == "skip":
            console.print(f"[yellow]skipping {data['optimizer']}[/]: {data['reason']}")
        elif event in ("trial", "seed") and self.task is not None:
            what = (f"tuning {data['number']}/{data['of']}" if event == "trial"
                    else f"seed {data['seed'] + 1}/{data['of']}")
            self.progress.update(self.task, advance=1,
                                 description=f"{data['problem']} / {data['optimizer']}: {what}")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}", style="cyan"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console)


def _report(storage: str, out: Path) -> Path:
    from .lab.report import LEADERBOARD_HEADER, leaderboard_rows, write_report
    from .lab.runner import open_storage

    with console.status("rendering the report"):
        path, results = write_report(open_storage(storage), out)
    table = Table(title=f"gradwise lab: suite {results.plan.suite}")
    for column in LEADERBOARD_HEADER:
        table.add_column(column, justify="left" if column == "optimizer" else "right")
    for row in leaderboard_rows(results):
        table.add_row(*row)
    console.print(table)
    if results.plan.average:
        from .lab.report import averaged_header, averaged_rows

        for problem in results.plan.problems:
            averaged = Table(title=f"{problem}: raw and averaged model")
            for column in averaged_header(results, problem):
                averaged.add_column(column)
            for row in averaged_rows(results, problem):
                averaged.add_row(*row)
            console.print(averaged)
    if results.plan.suite == "paper":
        from .lab.claims import verdicts

        claims = Table(title="paper claims")
        for column in ("claim", "verdict", "evidence"):
            claims.add_column(column)
        for claim, verdict, evidence in verdicts(results):
            claims.add_row(claim.name, verdict, escape(evidence))
        console.print(claims)
    console.print(f"report: [bold]{path}[/]")
    return path


@lab_app.command("run")
def lab_run(
    suite: Annotated[str, typer.Option(help="quick, standard or paper (see `gradwise lab list`)")] = "quick",
    optimizers: Annotated[str | None, typer.Option(help="comma-separated names; default: all")] = None,
    problems: Annotated[str | None, typer.Option(help="comma-separated problems; default: the suite's")] = None,
    seeds: Annotated[int | None, typer.Option(help="evaluation seeds; default: the suite's")] = None,
    trials: Annotated[int | None, typer.Option(help="tuning trials per optimizer; default: the suite's")] = None,
    tune_weight_decay: Annotated[bool | None, typer.Option(help="also tune weight decay")] = None,
    storage: Annotated[str | None, typer.Option(help="SQLAlchemy URL; default: sqlite in --out")] = None,
    out: Annotated[Path, typer.Option(help="folder for the storage and the report")] = Path("lab-results"),
    threads: Annotated[int, typer.Option(help="torch threads per run")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="processes working on the plan at once (one per core)")] = 1,
    average: Annotated[str | None, typer.Option(
        help="also evaluate a weight average of each model: ema[:DECAY], swa[:START] or lawa[:K[:EVERY]]")] = None,
    distributed: Annotated[str | None, typer.Option(
        help="under torchrun: train data-parallel with ddp, topk, sign, onebit or diloco instead of tuning, "
             "recording loss against bytes sent (default problem char-lm; --optimizers: at most one, the "
             "optimizer the method wraps)")] = None,
    steps: Annotated[int | None, typer.Option(min=1, help="with --distributed: steps; default: the problem's")] = None,
    lr: Annotated[float | None, typer.Option(help="with --distributed: learning rate; default: the method's")] = None,
    ratio: Annotated[float, typer.Option(help="with --distributed topk: the density sent")] = 0.01,
    sync_every: Annotated[int, typer.Option(min=1, help="with --distributed diloco: steps between syncs")] = 20,
    timeout: Annotated[float, typer.Option(help="with --distributed: seconds a collective waits for a peer")] = 120,
) -> None:
    """Tune every optimizer, re-run the best configurations over seeds, write the report. Resumes.
    Optimizer names may carry variants: adamw+grokfast, adamw+cautious, adamw+8bit.
    With --distributed METHOD (launched by torchrun), train the problems data-parallel instead and write
    loss against bytes communicated to --out (see gradwise.lab.distributed)."""
    from .lab.runner import Plan, run_lab, storage_url

    if distributed is not None:
        _distributed_run(distributed, _split(problems), _split(optimizers), seeds or 1, steps, lr, ratio,
                         sync_every, out, threads, timeout)
        return
    try:
        plan = Plan.make(suite, _split(problems), _split(optimizers), trials, seeds, tune_weight_decay, average)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    url = storage_url(out, storage)
    console.print(f"suite [bold]{plan.suite}[/]: {len(plan.problems)} problems x {len(plan.optimizers)} "
                  f"optimizers ({', '.join(plan.optimizers)}), {plan.trials} trials + {plan.seeds} seeds each")
    with _progress() as progress:
        run_lab(plan, url, on_event=_Bar(progress), threads=threads, workers=workers)
    _report(url, out)


def _distributed_run(method: str, problems: list[str] | None, optimizers: list[str] | None, seeds: int,
                     steps: int | None, lr: float | None, ratio: float, sync_every: int, out: Path, threads: int,
                     timeout: float) -> None:
    """`lab run --distributed`: every rank trains each problem and seed; rank 0 prints and writes the results."""
    import torch
    import torch.distributed as dist

    from .lab.distributed import Settings, TorchrunMissing, init_from_env, train
    from .lab.problems import problem

    try:
        if optimizers is not None and len(optimizers) > 1:
            raise ValueError(f"--optimizers: --distributed trains with one optimizer, got {', '.join(optimizers)}")
        chosen = [problem(name) for name in (problems or ["char-lm"])]
        settings = [Settings(method, steps or p.steps, seed, optimizers[0] if optimizers else None, lr, ratio,
                             sync_every) for p in chosen for seed in range(seeds)]
        rank, world = init_from_env(timeout)
    except (ValueError, TorchrunMissing) as error:
        raise typer.BadParameter(str(error)) from error
    torch.set_num_threads(threads)
    try:
        for p, s in zip([p for p in chosen for _ in range(seeds)], settings, strict=True):
            result = train(p, s)
            if rank == 0:
                last = result.rows[-1]
                paths = result.write(out / f"seed-{s.seed}" if seeds > 1 else out)
                console.print(f"{p.name} / {method} ({result.settings['optimizer']}, lr {result.settings['lr']:g}), "
                              f"{world} ranks, {s.steps} steps: loss {result.final_loss():.4f}, "
                              f"{last['bytes_sent'] / 1e6:.3f} MB sent per rank "
                              f"({last['dense_bytes'] / max(1, last['bytes_sent']):.1f}x less than a float32 "
                              f"all-reduce), {result.wall_s:.1f} s: [bold]{paths[0]}[/]", soft_wrap=True)
    finally:
        dist.destroy_process_group()


@lab_app.command("report")
def lab_report(
    out: Annotated[Path, typer.Argument(help="the folder of a lab run")],
    storage: Annotated[str | None, typer.Option(help="SQLAlchemy URL; default: sqlite in DIR")] = None,
) -> None:
    """Re-render the report (and print the leaderboard) from the stored results."""
    from .lab.runner import storage_url

    if storage is None and not (out / "lab.db").exists():
        raise typer.BadParameter(f"{out} holds no lab.db: give the --out folder of a `gradwise lab run`")
    _report(storage_url(out, storage), out)


@lab_app.command("list")
def lab_list() -> None:
    """List the problems, the suites and the optimizers the lab would run."""
    from .lab.problems import PROBLEMS, SUITES
    from .lab.runner import benchmarkable

    table = Table(title="problems")
    for column in ("name", "kind", "steps", "lr range", "target", "description"):
        table.add_column(column)
    for p in PROBLEMS.values():
        table.add_row(p.name, p.kind, str(p.steps), f"{p.lr_range[0]:g}..{p.lr_range[1]:g}", p.target,
                      p.description)
    console.print(table)
    table = Table(title="suites")
    for column in ("name", "trials", "seeds", "weight decay tuned", "problems", "description"):
        table.add_column(column)
    for s in SUITES.values():
        table.add_row(s.name, str(s.trials), str(s.seeds), "yes" if s.tune_weight_decay else "no",
                      ", ".join(s.problems), s.description)
    console.print(table)
    chosen, skipped = benchmarkable()
    console.print(f"optimizers: {', '.join(chosen)}")
    for name, reason in skipped.items():
        console.print(f"not benchmarked: {name} ({reason})")


@lab_app.command("claims")
def lab_claims(
    names: Annotated[str | None, typer.Argument(help="comma-separated claims; default: every reproducible one")] = None,
) -> None:
    """Reproduce the papers' claims directly, each at one fixed configuration (CPU seconds to a minute each),
    and say per claim whether it held. Exits with 1 when one did not."""
    from .lab.claims import reproductions

    table = Table(title="paper claims, reproduced at fixed settings")
    for column in ("claim", "source", "verdict", "evidence"):
        table.add_column(column)
    try:
        with console.status("reproducing the claims"):
            found = reproductions(_split(names))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    for claim, verdict, evidence in found:
        table.add_row(claim.name, claim.source, verdict, escape(evidence))
    console.print(table)
    if any(verdict != "held" for _, verdict, _ in found):
        raise typer.Exit(1)


@lab_app.command("worker")
def lab_worker(
    storage: Annotated[str, typer.Option(help="SQLAlchemy URL of a lab started by `gradwise lab run`")],
    threads: Annotated[int, typer.Option(help="torch threads per run")] = 1,
    stale_after: Annotated[float, typer.Option(help="seconds after which another host's claim is void")] = 1800,
    poll: Annotated[float, typer.Option(help="seconds between checks while others hold the last runs")] = 2.0,
) -> None:
    """Join a lab: work on its stored plan next to other workers until every run is finished."""
    from .lab.runner import run_worker

    with _progress() as progress:
        try:
            plan = run_worker(storage, on_event=_Bar(progress), threads=threads, stale_after=stale_after,
                              poll=poll)
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
    console.print(f"worker done: suite {plan.suite}, {plan.units} runs finished in {storage}")


from .lab.sampling_suite import sampling_command  # noqa: E402

lab_app.command("sampling")(sampling_command)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
