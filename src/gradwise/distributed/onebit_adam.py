"""1-bit Adam: Adam whose momentum, not its gradient, is exchanged in 1-bit form after a warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..core import NONFINITE_POLICIES, Betas, Integer, NonNegative, OneOf
from .comm import (
    all_gather_bytes,
    as_bytes,
    from_bytes,
    gather_checkpoint,
    guarded,
    own_part,
    pack_signs,
    signs,
    to_cpu,
    unpack_signs,
    world_of,
)

_RANGES = dict(lr=NonNegative, betas=Betas(2), eps=NonNegative, weight_decay=NonNegative)


class OneBitAdam(torch.optim.Optimizer):
    """1-bit Adam (Tang et al., 2021): Adam with a frozen variance and 1-bit compressed momentum exchange.

    It does its own communication: use it without DistributedDataParallel (or with DDP's gradient
    all-reduce disabled), on a model whose replicas start identical. On every rank, at step t:

    warm-up (t <= freeze_step): Adam on the averaged gradient g = (1 / N) sum_i g_i (one all-reduce)
        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
    compression stage (t > freeze_step): v stays frozen; only the momentum travels, 1 bit per element
        m_i <- b1 m + (1 - b1) g_i                        local momentum from the local gradient
        c_i <- m_i + e_i;  e_i <- c_i - C(c_i)             worker: compress with error feedback
        server j owns chunk j of the flattened momentum:
        a <- (1 / N) sum_i C(c_i)[chunk j] + e_s;  e_s <- a - C(a);  m[chunk j] <- C(a)
        every rank gathers every chunk, so m is identical on every replica
    update (both stages): p <- p - lr (m / (sqrt(v) + eps) + weight_decay p)

    C(x) = scale * sign(x) with scale = ||x||_2 / sqrt(len(x)) (zero counts as positive), per parameter
    tensor on the worker side and per chunk on the server side. Workers send their chunks with an
    all-to-all; servers return theirs with an all-gather: N - 1 + 1 / N eighths of a byte per element
    instead of 4 (float32). As in the authors' DeepSpeed implementation, neither moment is bias
    corrected and weight decay is added to the update. Every parameter takes part in every step (a
    missing gradient counts as zero), all parameters share one dtype and device, and all ranks must
    call `step` together. `bytes_sent` counts the bytes this rank hands to its collectives (payloads;
    the 4-byte non-finite flag below is not counted).

    nonfinite ("skip" | "raise" | "ignore", default "skip"), as every gradwise optimizer: the ranks agree
    (one all-reduce of a single flag per step) whether any rank's gradient holds NaN or infinity; if so,
    "skip" leaves parameters, moments and error buffers untouched on every rank and counts the step in
    `skipped_steps`, "raise" raises FloatingPointError on every rank, and "ignore" removes the check.
    One rank's bad batch would otherwise reach every replica through the averaged momentum.

    Defaults: DeepSpeed's OnebitAdam (lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
    freeze_step=100000); the paper warms up for about 15-25 % of training. Tang, Gan, Awan, Rajbhandari,
    Li, Lian, Liu, Zhang, He, "1-bit Adam: Communication Efficient Large-Scale Training with Adam's
    Convergence Speed", ICML 2021, arXiv:2102.02888.

    Checkpoints: the error-feedback residuals are each rank's own, so `state_dict()` is a collective
    that gathers them on rank 0 (the other ranks get an empty dict); everything else is identical on
    every replica and is taken from rank 0. Rank 0 saves one file; every rank of a new run of the same
    world size loads it and takes its own residuals:

        checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict()}   # every rank (collective)
        if dist.get_rank() == 0:
            torch.save(checkpoint, path)
        ...                                                       # fresh processes, every rank:
        checkpoint = torch.load(path, weights_only=True)
        net.load_state_dict(checkpoint["model"]); opt.load_state_dict(checkpoint["optimizer"])

    Resumed training is bit-identical to uninterrupted training; a checkpoint from a different world
    size raises a ValueError naming both sizes.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        freeze_step: int = 100000,
        process_group: dist.ProcessGroup | None = None,
        *,
        nonfinite: str = "skip",
    ) -> None:
        self.nonfinite = OneOf(NONFINITE_POLICIES).check("nonfinite", nonfinite)
        self.skipped_steps = 0
        self.freeze_step = Integer(0).check("freeze_step", freeze_step)
        self.process_group = process_group
        self.bytes_sent = 0
        self._step = 0
        self._server_error: Tensor | None = None
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        world_of(process_group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            for key, rng in _RANGES.items():
                group[key] = rng.check(key, group[key])
            kinds = {(p.dtype, p.device) for g in self.param_groups for p in g["params"]}
            if len(kinds) > 1:
                raise TypeError(
                    f"OneBitAdam needs one dtype and device for all parameters, got {sorted(map(str, kinds))}"
                )
        except (TypeError, ValueError):
            self.param_groups.pop()
            raise

    def _all(self) -> list[tuple[dict[str, Any], Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._all()
        if self.nonfinite != "ignore" and not self._all_ranks_finite(work):
            if self.nonfinite == "raise":
                raise FloatingPointError(
                    f"OneBitAdam: a non-finite gradient on at least one rank at step {self._step + 1}; "
                    f"nonfinite='raise'. Use nonfinite='skip' to skip such steps on every rank"
                )
            self.skipped_steps += 1
            return loss
        self._step += 1
        for _, p in work:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                for name in ("exp_avg", "exp_avg_sq", "worker_error"):
                    state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in work]
        if self._step <= self.freeze_step:
            for (group, p), g in zip(work, self._averaged(grads), strict=True):
                beta1, beta2 = group["betas"]
                state = self.state[p]
                state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
        else:
            local = [self.state[p]["exp_avg"] * group["betas"][0] + g * (1 - group["betas"][0])
                     for (group, p), g in zip(work, grads, strict=True)]
            for (_, p), m in zip(work, self._compressed_average(local), strict=True):
                self.state[p]["exp_avg"].copy_(m)
        for group, p in work:
            state = self.state[p]
            update = state["exp_avg"] / (state["exp_avg_sq"].sqrt() + group["eps"])
            if group["weight_decay"] != 0:
                update.add_(p, alpha=group["weight_decay"])
            p.add_(update, alpha=-group["lr"])
        return loss

    # -- communication -------------------------------------------------------------------------------
    def _all_ranks_finite(self, work: list[tuple[dict[str, Any], Tensor]]) -> bool:
        """Whether every gradient on every rank is finite: a local check, then one MIN all-reduce."""
        grads = [p.grad for _, p in work if p.grad is not None and p.grad.numel() > 0]
        device = work[0][1].device if work else torch.device("cpu")
        local = all(bool(torch.isfinite(torch.stack(torch.aminmax(g))).all()) for g in grads)
        flag = torch.tensor([1.0 if local else 0.0], device=device)
        with guarded(f"OneBitAdam non-finite check at step {self._step + 1}", self.process_group):
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.process_group)
        return bool(flag.item() == 1.0)

    def _averaged(self, grads: list[Tensor]) -> list[Tensor]:
        """The gradients averaged over the ranks: one all-reduce (SUM, then divide)."""
        _, world = world_of(self.process_group)
        flat = torch.cat([g.reshape(-1) for g in grads])
        with guarded(f"OneBitAdam gradient all-reduce at step {self._step}", self.process_group):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.process_group)
        self.bytes_sent += flat.numel() * flat.element_size()
        return _split_like(flat.div_(world), grads)

    def _compressed_average(self, local: list[Tensor]) -> list[Tensor]:
        """The 1-bit, error-compensated average of the ranks' local momenta (identical on every rank)."""
        rank, world = world_of(self.process_group)
        sizes = [m.numel() for m in local]
        n = sum(sizes)
        chunk = 8 * math.ceil(n / (8 * world))  # each rank serves one chunk of the flat momentum
        padded = chunk * world
        dtype, device = local[0].dtype, local[0].device
        sizes_padded = [*sizes, padded - n]

        # worker: c = m_i + e_i, compressed per tensor, e_i <- c - C(c)
        errors = [self.state[p]["worker_error"] for _, p in self._all()]
        corrected = torch.cat([(m + e).reshape(-1) for m, e in zip(local, errors, strict=True)])
        worker_scales = torch.stack([_rms(c) for c in corrected.split(sizes)])
        corrected = torch.cat([corrected, corrected.new_zeros(padded - n)])
        scale_of = _expand(worker_scales, sizes_padded)
        residual = corrected - scale_of * signs(corrected)
        for e, r in zip(errors, residual[:n].split(sizes), strict=True):
            e.copy_(r.view_as(e))
        scale_bytes = as_bytes(worker_scales)
        bits = pack_signs(corrected).view(world, chunk // 8)
        send = torch.cat([scale_bytes.expand(world, -1), bits], dim=1).contiguous()
        received = torch.empty_like(send)
        with guarded(f"OneBitAdam momentum all-to-all at step {self._step}", self.process_group):
            dist.all_to_all_single(received, send, group=self.process_group)
        self.bytes_sent += send.numel()

        # server for chunk `rank`: average the workers' 1-bit chunks, compress again with error feedback
        low = rank * chunk
        valid = max(0, min(n - low, chunk))
        average = torch.zeros(chunk, dtype=dtype, device=device)
        for message in received.unbind(0):
            scales = from_bytes(message[: scale_bytes.numel()], dtype)
            chunk_scale = _expand(scales, sizes_padded)[low : low + chunk]
            average.add_(chunk_scale * unpack_signs(message[scale_bytes.numel():], chunk, dtype))
        average.div_(world)
        if self._server_error is None or self._server_error.numel() != chunk:
            self._server_error = torch.zeros(chunk, dtype=dtype, device=device)
        average.add_(self._server_error)
        server_scale = _rms(average[:valid]) if valid > 0 else average.new_zeros(())
        self._server_error.copy_(average - server_scale * signs(average))
        self._server_error[valid:] = 0
        reply = torch.cat([as_bytes(server_scale.reshape(1)), pack_signs(average)])
        with guarded(f"OneBitAdam momentum all-gather at step {self._step}", self.process_group):
            gathered, _ = all_gather_bytes(reply, self.process_group)
        self.bytes_sent += reply.numel()

        itemsize = server_scale.element_size()
        momentum = torch.cat([
            from_bytes(message[:itemsize], dtype) * unpack_signs(message[itemsize:], chunk, dtype)
            for message in gathered.unbind(0)
        ])
        return _split_like(momentum[:n], local)

    # -- saving and loading --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole group's state on rank 0 (an empty dict elsewhere); a collective, call it on every rank.

        torch's layout ("state", "param_groups") holds what every replica shares (step, momentum, frozen
        variance); "onebit" adds the counters and, under "ranks", each rank's error-feedback residuals
        (the worker error of every parameter, the server error of its chunk) and byte count.
        """
        sd = super().state_dict()
        shared = {i: {k: v for k, v in s.items() if k != "worker_error"} for i, s in sd["state"].items()}
        own = {
            "worker_error": {i: s["worker_error"] for i, s in sd["state"].items() if "worker_error" in s},
            "server_error": self._server_error,
            "bytes_sent": self.bytes_sent,
        }
        ranks = gather_checkpoint("OneBitAdam", own, self.process_group)
        if ranks is None:
            return {}
        return {
            "state": to_cpu(shared),
            "param_groups": sd["param_groups"],
            "onebit": {"step": self._step, "skipped_steps": self.skipped_steps, "ranks": ranks},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore this rank's part of a checkpoint that rank 0 saved (same world size and parameters)."""
        extra = state_dict.get("onebit") if isinstance(state_dict, dict) else None
        mine = own_part("OneBitAdam", extra, self.process_group)
        assert extra is not None  # own_part raised otherwise
        super().load_state_dict({"state": state_dict["state"], "param_groups": state_dict["param_groups"]})
        for i, p in enumerate(p for _, p in self._all()):
            if i in mine["worker_error"]:
                self.state[p]["worker_error"] = mine["worker_error"][i].to(p.device, p.dtype, copy=True)
        self._step = int(extra["step"])
        self.skipped_steps = int(extra["skipped_steps"])
        self.bytes_sent = int(mine["bytes_sent"])
        server_error = mine["server_error"]
        self._server_error = None if server_error is None else server_error.to(self._device(), copy=True)

    def _device(self) -> torch.device:
        work = self._all()
        return work[0][1].device if work else torch.device("cpu")


def _rms(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x) / math.sqrt(max(1, x.numel()))


def _expand(scales: Tensor, sizes_padded: list[int]) -> Tensor:
    """One scale per element: scales[j] over tensor j's elements, zero over the padding."""
    with_pad = torch.cat([scales, scales.new_zeros(1)])
    return with_pad.repeat_interleave(torch.tensor(sizes_padded, device=scales.device))


def _split_like(flat: Tensor, like: list[Tensor]) -> list[Tensor]:
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in like]), like, strict=True)]
