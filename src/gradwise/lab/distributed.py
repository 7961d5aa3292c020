"""The lab's problems trained data-parallel under `torchrun`: loss against bytes communicated, per method.

    torchrun --nproc-per-node 2 -m gradwise.cli lab run --distributed topk --problems char-lm --out results
    # (or the `gradwise` script: torchrun --nproc-per-node 2 $(which gradwise) lab run --distributed ...)

Every rank builds the problem's instance: the model from the run's seed on rank 0, broadcast to the others
(so every replica starts identical), and its own stream of mini-batches (the problem's sampler seeded with
`seed + SHARD_STRIDE * rank`; rank 0 draws exactly the batches a single-process run of that seed draws).
Methods, each with a fixed learning rate (no tuning under torchrun; `lr=` overrides it):

    ddp     DistributedDataParallel, float32 all-reduce of the gradients (average); AdamW lr 3e-3
    topk    DDP + compression_hook("topk"): Deep Gradient Compression at `ratio` (default 0.01) with momentum
            correction 0.9 (the optimizer is plain SGD: the momentum lives in the hook), local clipping at 1,
            sparsity warm-up over the first 10 % of the steps; SGD lr 0.3
    sign    DDP + compression_hook("sign"): 1-bit sign with a per-tensor scale and error feedback; AdamW lr 3e-3
            (on char-lm, 2 ranks, 100 steps: SGD with momentum 0.9 diverged at lr 0.3 and trailed at 0.1 and
            0.03, train loss 2.82 and 2.84 against AdamW's 2.65)
    onebit  OneBitAdam (its own communication, no DDP), variance frozen after 20 % of the steps; lr 3e-3.
            A coordinate whose gradient was zero throughout the warm-up (a dead ReLU unit) has a frozen
            variance of 0, and its 1-bit momentum, never 0, is then divided by eps alone: on mlp-digits the
            run diverges; char-lm trains normally
    diloco  DiLoCo around AdamW lr 3e-3, synchronised every `sync_every` steps (default 20), outer Nesterov
            lr 0.7, momentum 0.9

`optimizer=` replaces the optimizer of ddp, topk, sign (the one after the hook) and diloco (the inner one) with
any registered gradwise optimizer, at lr 0.3 for SGD (momentum 0.9 except after topk) and 3e-3 for any other
unless `lr=` is given.
SGD at lr 0.3 with momentum 0.9 and AdamW at 3e-3 train char-lm about equally fast in one process (200
steps: train loss 2.46 and 2.44).

Recorded per step: the training loss averaged over the ranks (gathered once, at the end: no extra traffic
while training) and the bytes rank 0 has handed to its collectives so far, counted as the compression hooks
count them (the payload of each collective; for ddp the float32 buffer of every all-reduce, that is 4 bytes
per parameter per step), beside the float32 all-reduce volume of the same steps (`dense_bytes`). The initial
broadcast of the weights is not counted. At the end rank 0 evaluates its replica (`problem.evaluate`), and
the largest difference between any rank's parameters and rank 0's is recorded (0 where the method keeps
replicas identical: ddp, topk, sign, onebit, and diloco right after a synchronisation). Rank 0 writes
`<out>/distributed-<problem>-<method>-w<world>.json` (settings, per-step rows, final metrics) and a `.csv`
of the rows.

The lab's problems hold their data on the CPU, so the loop trains on the CPU with gloo, whatever the
accelerator (the methods themselves also run on NCCL; see gradwise.distributed).
"""

# No `from __future__ import annotations`: DDP checks the comm hook's annotations at registration.
import csv
import datetime
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.futures import Future
from torch.nn.parallel import DistributedDataParallel

import gradwise as gw

from ..distributed import DiLoCo, OneBitAdam, compression_hook
from .problems import Problem
from .problems import problem as find_problem

METHODS = ("ddp", "topk", "sign", "onebit", "diloco")
SHARD_STRIDE = 1_000_003  # rank r draws its batches with seed + SHARD_STRIDE * r
ADAM_LR, SGD_LR, SGD_MOMENTUM = 3e-3, 0.3, 0.9
DEFAULT_OPTIMIZER = {"ddp": "adamw", "topk": "sgd", "sign": "adamw", "diloco": "adamw"}


class TorchrunMissing(RuntimeError):
    """The distributed lab was started outside `torchrun` (no WORLD_SIZE in the environment)."""


@dataclass(frozen=True)
class Settings:
    """How one method runs; see the module docstring for the defaults and what they mean."""

    method: str
    steps: int
    seed: int = 0
    optimizer: str | None = None  # None: the method's default (DEFAULT_OPTIMIZER); OneBitAdam takes none
    lr: float | None = None  # None: 0.3 for SGD, 3e-3 otherwise
    ratio: float = 0.01  # topk density
    sync_every: int = 20  # diloco H
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    freeze_fraction: float = 0.2  # onebit: variance frozen after this share of the steps
    warmup_fraction: float = 0.1  # topk: sparsity warm-up over this share of the steps

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} is not a distributed method: choose one of {', '.join(METHODS)}")
        if self.method == "onebit" and self.optimizer is not None:
            raise ValueError("optimizer= does not apply to method 'onebit' (OneBitAdam is the optimizer)")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be at least 1")
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio={self.ratio} must lie in (0, 1]")
        if self.sync_every < 1:
            raise ValueError(f"sync_every={self.sync_every} must be at least 1")
        for name in ("freeze_fraction", "warmup_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} must lie in [0, 1]")

    @property
    def optimizer_name(self) -> str:
        return "onebit-adam" if self.method == "onebit" else (self.optimizer or DEFAULT_OPTIMIZER[self.method])

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return SGD_LR if self.optimizer_name == "sgd" else ADAM_LR


@dataclass
class Result:
    """One distributed run as rank 0 sees it (the other ranks get the same object with empty rows)."""

    problem: str
    world_size: int
    backend: str
    settings: dict[str, Any]
    parameters: int
    rows: list[dict[str, float]] = field(default_factory=list)  # step, loss, bytes_sent, dense_bytes
    final: dict[str, float] = field(default_factory=dict)  # rank 0's problem.evaluate() after the last step
    replica_difference: float = 0.0  # max |p_rank - p_0| over ranks and parameters after the last step
    bytes_by_rank: list[int] = field(default_factory=list)
    wall_s: float = 0.0

    def final_loss(self, last: int = 20) -> float:
        """The training loss averaged over the last `last` steps (and over the ranks)."""
        tail = [r["loss"] for r in self.rows[-last:]]
        return sum(tail) / len(tail) if tail else math.nan

    def stem(self) -> str:
        return f"distributed-{self.problem}-{self.settings['method']}-w{self.world_size}"

    def write(self, out: Path) -> tuple[Path, Path]:
        """`<stem>.json` (everything) and `<stem>.csv` (the rows) in `out`."""
        out.mkdir(parents=True, exist_ok=True)
        json_path, csv_path = out / f"{self.stem()}.json", out / f"{self.stem()}.csv"
        json_path.write_text(json.dumps(asdict(self), indent=1, default=_jsonable))
        with csv_path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step", "loss", "bytes_sent", "dense_bytes"])
            writer.writeheader()
            writer.writerows(self.rows)
        return json_path, csv_path


def _jsonable(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else str(value)


# -- the process group -------------------------------------------------------------------------------
def init_from_env(timeout: float = 120.0) -> tuple[int, int]:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT); gloo.

    Raises TorchrunMissing, naming torchrun, when WORLD_SIZE is not set. `timeout`: seconds a collective
    waits for a silent peer before failing (a dead peer is noticed at once)."""
    if "WORLD_SIZE" not in os.environ:
        raise TorchrunMissing(
            "--distributed needs the process group that torchrun sets up (RANK, WORLD_SIZE, MASTER_ADDR, "
            "MASTER_PORT are not set): launch it as `torchrun --nproc-per-node N -m gradwise.cli lab run "
            "--distributed METHOD ...` (or `python -m torch.distributed.run ...`)"
        )
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=timeout))
    return dist.get_rank(), dist.get_world_size()


# -- byte counting for plain DDP ------------------------------------------------------------------------
@dataclass
class AllReduceCount:
    """State of `counting_allreduce_hook`: the bytes this rank has handed to its all-reduces."""

    process_group: Any = None
    bytes_sent: int = 0


def counting_allreduce_hook(state: AllReduceCount, bucket: dist.GradBucket) -> Future[Tensor]:
    """DDP's own averaging all-reduce (torch's `allreduce_hook`), counting the buffer's bytes as sent."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    buffer = bucket.buffer()
    state.bytes_sent += buffer.numel() * buffer.element_size()
    return allreduce_hook(state.process_group, bucket)


# -- one run ------------------------------------------------------------------------------------------
def _inner_optimizer(settings: Settings, model: nn.Module, weight_decay: float) -> torch.optim.Optimizer:
    import inspect

    name = settings.optimizer_name
    hyper: dict[str, Any] = {"lr": settings.learning_rate}
    accepted = inspect.signature(gw.get(name)).parameters
    if "weight_decay" in accepted:
        hyper["weight_decay"] = weight_decay
    if name == "sgd" and settings.method != "topk":
        hyper["momentum"] = SGD_MOMENTUM
    return gw.create(name, model, **hyper)


class _Method:
    """The model's forward (DDP-wrapped or not), the optimizer, and the byte counters of one method."""

    def __init__(self, settings: Settings, model: nn.Module, weight_decay: float) -> None:
        self.counter: Any = None
        self.forward: nn.Module = model
        method = settings.method
        self.optimizer: Any
        if method in ("ddp", "topk", "sign"):
            ddp = DistributedDataParallel(model)
            if method == "ddp":
                self.counter = AllReduceCount()
                ddp.register_comm_hook(self.counter, counting_allreduce_hook)
            else:
                options: dict[str, Any] = {}
                if method == "topk":
                    options = dict(ratio=settings.ratio, momentum=SGD_MOMENTUM, clip_norm=1.0,
                                   warmup_steps=int(settings.warmup_fraction * settings.steps))
                self.counter, hook = compression_hook(method, **options)
                ddp.register_comm_hook(self.counter, hook)
            self.forward = ddp
            self.optimizer = _inner_optimizer(settings, model, weight_decay)
        elif method == "onebit":
            self.optimizer = OneBitAdam(model.parameters(), lr=settings.learning_rate, weight_decay=weight_decay,
                                        freeze_step=int(settings.freeze_fraction * settings.steps))
            self.counter = self.optimizer
        else:
            inner = _inner_optimizer(settings, model, weight_decay)
            self.optimizer = DiLoCo(model, inner, outer_lr=settings.outer_lr, outer_momentum=settings.outer_momentum,
                                    sync_every=settings.sync_every)
            self.counter = self.optimizer

    @property
    def bytes_sent(self) -> int:
        return int(self.counter.bytes_sent)


class _Swap:
    """Routes the instance's `self.model(...)` calls through the DDP wrapper while training."""

    def __init__(self, instance: Any, forward: nn.Module) -> None:
        self.instance, self.forward, self.model = instance, forward, instance.model

    def __enter__(self) -> None:
        self.instance.model = self.forward

    def __exit__(self, *exc: object) -> None:
        self.instance.model = self.model


@torch.no_grad()
def _broadcast_model(model: nn.Module) -> None:
    for t in [*model.parameters(), *model.buffers()]:
        dist.broadcast(t.data, src=0)


@torch.no_grad()
def _replica_difference(model: nn.Module) -> float:
    worst = torch.zeros(())
    for p in model.parameters():
        reference = p.detach().clone()
        dist.broadcast(reference, src=0)
        worst = torch.maximum(worst, (p.detach() - reference).abs().max().to(worst.dtype))
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    return float(worst)


def train(prob: Problem | str, settings: Settings) -> Result:
    """Train `prob` data-parallel with `settings.method` on the initialised default process group.

    A collective: every rank calls it with the same arguments. Every rank returns the run's Result; only
    rank 0's holds the rows, the final metrics and the per-rank bytes."""
    return train_model(prob, settings)[0]


def train_model(prob: Problem | str, settings: Settings) -> tuple[Result, nn.Module]:
    """`train`, also returning this rank's trained model."""
    prob = find_problem(prob) if isinstance(prob, str) else prob
    rank, world = dist.get_rank(), dist.get_world_size()
    if prob.kind == "function":
        raise ValueError(f"problem {prob.name!r} is a test function: it has no data to split between ranks; "
                         f"choose a classification or language-model problem")
    # rank 0's weights (broadcast below), this rank's own batches
    instance = prob.instance(settings.seed + SHARD_STRIDE * rank)
    model = instance.model
    _broadcast_model(model)
    method = _Method(settings, model, prob.weight_decay)
    losses: list[float] = []
    sent: list[int] = []
    start = time.perf_counter()
    for step in range(settings.steps):
        method.optimizer.zero_grad(set_to_none=True)
        with _Swap(instance, method.forward):
            loss = instance.train_loss(step)
        loss.backward()
        method.optimizer.step()
        losses.append(float(loss.detach()))
        sent.append(method.bytes_sent)
    wall = time.perf_counter() - start
    difference = _replica_difference(model)
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, (losses, sent[-1] if sent else 0))
    parameters = sum(p.numel() for p in model.parameters())
    result = Result(prob.name, world, dist.get_backend(), asdict(settings) | {"optimizer": settings.optimizer_name,
                    "lr": settings.learning_rate}, parameters, replica_difference=difference, wall_s=wall)
    if rank == 0:
        mean_loss = [sum(rank_losses[t] for rank_losses, _ in gathered) / world for t in range(settings.steps)]
        result.rows = [{"step": t + 1, "loss": mean_loss[t], "bytes_sent": sent[t],
                        "dense_bytes": 4 * parameters * (t + 1)} for t in range(settings.steps)]
        result.bytes_by_rank = [int(b) for _, b in gathered]
        result.final = instance.evaluate()
    return result, model
