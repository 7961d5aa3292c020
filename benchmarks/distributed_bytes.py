"""Loss against bytes communicated for every distributed method of the lab, on char-lm with 2 and 4 gloo processes.

    .venv/bin/python benchmarks/distributed_bytes.py                      # 2 and 4 processes, 200 steps
    .venv/bin/python benchmarks/distributed_bytes.py --worlds 2 --steps 100 --methods ddp,topk

For each world size the script launches one `python -m torch.distributed.run --nproc_per_node N` job (gloo on
127.0.0.1, one thread per process) that trains the lab problem (default char-lm: a 2-layer character
transformer, 83,681 parameters) with each method in turn through gradwise.lab.distributed, the loop behind
`gradwise lab run --distributed METHOD`. Every method starts from the same weights and each rank draws its
own batches; the methods' fixed settings are in gradwise.lab.distributed's docstring ("ddp:sgd" is ddp with
SGD lr 0.3, momentum 0.9: the baseline with topk's optimizer).

Columns: final loss = training loss averaged over the ranks and the last 20 steps; val loss = rank 0's
replica on the problem's validation windows after the last step; MB sent = bytes rank 0 handed to its
collectives (for ddp the float32 all-reduce buffer, 4 bytes per parameter per step), in 10^6 bytes;
x less = ddp's bytes over the method's, for the whole run and for the last half (past every warm-up).
What crosses the wire depends on the backend's algorithm (see gradwise.distributed.comm).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("ddp", "ddp:sgd", "topk", "sign", "onebit", "diloco")


def _worker(problem: str, specs: list[str], steps: int, out: str) -> None:
    """Runs under torchrun: every method in turn on one process group; rank 0 writes each result."""
    import torch
    import torch.distributed as dist

    from gradwise.lab.distributed import Settings, init_from_env, train

    torch.set_num_threads(1)
    rank, _ = init_from_env(timeout=300)
    for spec in specs:
        method, _, optimizer = spec.partition(":")
        result = train(problem, Settings(method, steps=steps, optimizer=optimizer or None))
        if rank == 0:
            (Path(out) / f"{spec.replace(':', '-')}.json").write_text(json.dumps({
                "spec": spec, "optimizer": result.settings["optimizer"], "lr": result.settings["lr"],
                "rows": result.rows, "final_loss": result.final_loss(20), "val_loss": result.final.get("val_loss"),
                "wall_s": result.wall_s, "replica_difference": result.replica_difference,
                "parameters": result.parameters}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, problem: str, specs: list[str], steps: int) -> tuple[dict[str, dict], float]:
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                   "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), __file__, "--worker",
                   "--problem", problem, "--methods", ",".join(specs), "--steps", str(steps), "--out", out]
        env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"torchrun with {world} processes failed:\n{done.stdout}\n{done.stderr}")
        return {spec: json.loads((Path(out) / f"{spec.replace(':', '-')}.json").read_text()) for spec in specs}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="2,4", help="comma-separated numbers of processes")
    parser.add_argument("--steps", type=int, default=200, help="steps per run (char-lm's own: 300)")
    parser.add_argument("--methods", default=",".join(METHODS), help="METHOD or METHOD:OPTIMIZER, comma-separated")
    parser.add_argument("--problem", default="char-lm")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    specs = [s.strip() for s in args.methods.split(",") if s.strip()]
    if args.worker:
        _worker(args.problem, specs, args.steps, args.out)
        return
    header = (f"{'method':<9} {'optimizer':<11} {'world':>5} {'steps':>5} {'final loss':>10} {'val loss':>8} "
              f"{'MB sent':>8} {'x less':>7} {'x less, 2nd half':>16} {'wall s':>7}")
    print(f"{args.problem}: gloo on 127.0.0.1, one thread per process, {args.steps} steps; "
          f"MB sent per rank; x less: ddp's bytes over the method's")
    print(header)
    for world in [int(w) for w in args.worlds.split(",")]:
        found, seconds = launch(world, args.problem, specs, args.steps)
        n = next(iter(found.values()))["parameters"]
        half = args.steps // 2
        dense, dense_half = 4 * n * args.steps, 4 * n * (args.steps - half)
        for spec, r in found.items():
            sent = r["rows"][-1]["bytes_sent"]
            sent_half = sent - r["rows"][half - 1]["bytes_sent"] if half > 0 else sent
            val = r["val_loss"] if r["val_loss"] is not None else float("nan")
            print(f"{spec.partition(':')[0]:<9} {r['optimizer']:<11} {world:>5} {args.steps:>5} "
                  f"{r['final_loss']:>10.4f} {val:>8.4f} {sent / 1e6:>8.2f} {dense / max(sent, 1):>7.1f} "
                  f"{dense_half / max(sent_half, 1):>16.1f} {r['wall_s']:>7.1f}", flush=True)
        print(f"({world} processes: {seconds:.0f} s in all, torchrun's start included)", flush=True)


if __name__ == "__main__":
    main()
