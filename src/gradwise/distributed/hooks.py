"""Gradient compression for `DistributedDataParallel.register_comm_hook`, with error feedback.

    state, hook = compression_hook("topk", ratio=0.01, momentum=0.9)   # Deep Gradient Compression
    ddp.register_comm_hook(state, hook)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)                # no momentum: the hook has it

Each hook sees one DDP bucket (a flat buffer of this rank's local gradients) and returns a future of the
averaged, decompressed gradient, which DDP writes into `.grad`. Every rank decodes the same gathered
messages in rank order, so every rank gets bit-identical gradients and the replicas stay identical.
Compression state (accumulated residuals, momentum) is kept per parameter, so it survives DDP's
bucket rebuild after the first iteration.

"topk": Deep Gradient Compression (Lin, Han, Mao, Wang, Dally, "Deep Gradient Compression: Reducing the
Communication Bandwidth for Distributed Training", ICLR 2018, arXiv:1712.01887), Algorithm 1 with its
four techniques. For each parameter, with local gradient g on this rank:
    g <- g * min(1, clip_norm / (sqrt(N) ||g||))     local gradient clipping (threshold scaled by N^-1/2)
    u <- m u + g;  v <- v + u                         momentum correction (m = 0: v <- v + g)
    S <- indices of the k = ceil(density * numel) largest |v|
    send (v[S], S);  v[S] <- 0;  u[S] <- 0            error feedback / local accumulation, factor masking
    grad <- (1 / N) sum over ranks of the sparse v[S]
and the optimizer must be plain SGD without momentum (momentum lives in the hook). Sparsity warm-up: the
density decays geometrically from `warmup_ratio` (the paper's 25 %) to `ratio` over `warmup_steps`
iterations (the paper quadruples sparsity each epoch for four epochs). Deviation: clipping is applied
per parameter tensor, because a hook sees one bucket, not the model's global norm. Values travel in the
gradient's dtype, indices as int32, together in one all-gather.

"sign": 1-bit sign compression with a per-tensor scale and error feedback (EF-SignSGD, Karimireddy,
Rebjock, Stich, Jaggi, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes", ICML 2019,
arXiv:1901.09847). For each parameter:
    c <- g + e;  scale <- mean |c|;  send (scale, sign(c)) as 1 bit per element;  e <- c - scale sign(c)
    grad <- (1 / N) sum over ranks of scale sign(c)

Checkpoints: the residuals (and DGC's momentum) differ from rank to rank, so `state.state_dict(params)`
is a collective that gathers every rank's buffers on rank 0; the other ranks get an empty dict. Rank 0
saves one file; every rank of a new run, of the same world size, loads that file and takes its own part:

    checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(),
                  "hook": state.state_dict(net)}                 # on every rank (collective)
    if dist.get_rank() == 0:
        torch.save(checkpoint, path)
    ...                                                           # later, fresh processes, every rank:
    checkpoint = torch.load(path, weights_only=True)
    net.load_state_dict(checkpoint["model"]); opt.load_state_dict(checkpoint["optimizer"])
    state.load_state_dict(checkpoint["hook"], net)                # before the first backward
    ddp = DistributedDataParallel(net); ddp.register_comm_hook(state, hook)

`params` (a module, e.g. the DDP model or the one inside it, or the list of its parameters) names the
buffers by position, so it must list the parameters in the same order when saving and loading.
Training resumed this way is bit-identical to training that was never interrupted. Loading into a
different world size raises a ValueError naming both sizes.
"""

# No `from __future__ import annotations`: DDP checks the hooks' annotations at registration.
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.futures import Future

from ..core import Flag, Integer, Interval, OneOf, Optional
from .comm import (
    PeerFailure,
    all_gather_bytes,
    as_bytes,
    failure_message,
    from_bytes,
    gather_checkpoint,
    own_part,
    pack_signs,
    signs,
    unpack_signs,
    world_of,
)

KINDS = ("topk", "sign")

Hook = Callable[[Any, dist.GradBucket], Future]


@dataclass
class CompressionState:
    """What a compression hook keeps between iterations; pass it to `register_comm_hook` as `state`.

    `bytes_sent`: bytes this rank has handed to its collectives so far; `dense_bytes`: what a float32
    all-reduce of the same gradients would have handed over; `step`: iterations completed.
    """

    kind: str
    process_group: Any = None
    ratio: float = 0.01
    momentum: float = 0.0
    factor_masking: bool = True
    clip_norm: float | None = None
    warmup_steps: int = 0
    warmup_ratio: float = 0.25
    step: int = 0
    bytes_sent: int = 0
    dense_bytes: int = 0
    buffers: dict[Tensor, dict[str, Tensor]] = field(default_factory=dict, repr=False)

    def density(self) -> float:
        """The fraction of each tensor "topk" sends at the current step (sparsity warm-up included)."""
        if self.step >= self.warmup_steps or self.warmup_ratio <= self.ratio:
            return self.ratio
        return self.warmup_ratio * (self.ratio / self.warmup_ratio) ** (self.step / self.warmup_steps)

    def buffer(self, p: Tensor, name: str, like: Tensor) -> Tensor:
        slot = self.buffers.setdefault(p, {})
        if name not in slot:
            slot[name] = torch.zeros_like(like)
        return slot[name]

    # -- saving and loading --------------------------------------------------------------------------
    def state_dict(self, params: nn.Module | Iterable[Tensor]) -> dict[str, Any]:
        """The whole group's hook state on rank 0 (an empty dict elsewhere); a collective, call it on every rank.

        The shared part (kind, step count, dense byte count) comes from rank 0; under "ranks", entry r
        holds rank r's buffers, keyed by the position of their parameter in `params`, and its byte count.
        """
        index = _positions(params)
        unknown = [p for p in self.buffers if id(p) not in index]
        if unknown:
            raise ValueError(
                f"CompressionState.state_dict: the hook holds state for {len(unknown)} tensor(s) that are not in "
                f"`params`; pass the module whose gradients the hook compresses"
            )
        own = {
            "buffers": {index[id(p)]: dict(slot) for p, slot in self.buffers.items()},
            "bytes_sent": self.bytes_sent,
        }
        ranks = gather_checkpoint(f"{self.kind} compression hook", own, self.process_group)
        if ranks is None:
            return {}
        return {"kind": self.kind, "step": self.step, "dense_bytes": self.dense_bytes, "ranks": ranks}

    def load_state_dict(self, state_dict: dict[str, Any], params: nn.Module | Iterable[Tensor]) -> None:
        """Restore this rank's part of a checkpoint that rank 0 saved; `params` in the same order as then."""
        mine = own_part("CompressionState", state_dict, self.process_group)
        if state_dict["kind"] != self.kind:
            raise ValueError(
                f"CompressionState.load_state_dict: the checkpoint holds {state_dict['kind']!r} hook state, "
                f"this hook is {self.kind!r}"
            )
        by_position = list(params.parameters()) if isinstance(params, nn.Module) else list(params)
        saved = mine["buffers"]
        if saved and max(saved) >= len(by_position):
            raise ValueError(
                f"CompressionState.load_state_dict: the checkpoint holds state for parameter {max(saved)}, "
                f"but `params` has only {len(by_position)}"
            )
        self.buffers = {
            by_position[i]: {name: t.to(by_position[i].device, copy=True) for name, t in slot.items()}
            for i, slot in saved.items()
        }
        self.step = int(state_dict["step"])
        self.dense_bytes = int(state_dict["dense_bytes"])
        self.bytes_sent = int(mine["bytes_sent"])


def _positions(params: nn.Module | Iterable[Tensor]) -> dict[int, int]:
    """id(parameter) -> its position in `params` (a module's parameters, or the given tensors)."""
    tensors = params.parameters() if isinstance(params, nn.Module) else params
    return {id(p): i for i, p in enumerate(tensors)}


def compression_hook(
    kind: str,
    *,
    ratio: float = 0.01,
    momentum: float = 0.0,
    factor_masking: bool = True,
    clip_norm: float | None = None,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.25,
    process_group: Any = None,
) -> tuple[CompressionState, Hook]:
    """A `(state, hook)` pair for `DistributedDataParallel.register_comm_hook(state, hook)`.

    kind: "topk" (Deep Gradient Compression) or "sign" (1-bit sign with a per-tensor scale); both with
    error feedback. ratio, momentum, factor_masking, clip_norm, warmup_steps and warmup_ratio apply to
    "topk" only (see the module docstring); ratio=1 with momentum=0 is an exact averaging all-reduce.
    """
    OneOf(KINDS).check("kind", kind)
    Interval(0.0, 1.0, low_closed=False).check("ratio", ratio)
    Interval(0.0, 1.0, high_closed=False).check("momentum", momentum)
    Flag().check("factor_masking", factor_masking)
    Optional(Interval(0.0, low_closed=False)).check("clip_norm", clip_norm)
    Integer(0).check("warmup_steps", warmup_steps)
    Interval(0.0, 1.0, low_closed=False).check("warmup_ratio", warmup_ratio)
    state = CompressionState(kind, process_group, ratio, momentum, factor_masking, clip_norm, warmup_steps,
                             warmup_ratio)
    return state, (_topk_hook if kind == "topk" else _sign_hook)


def _finish(state: CompressionState, bucket: dist.GradBucket, payload: Tensor,
            decode: Callable[[Tensor, Tensor], None]) -> Future:
    """Gather `payload` from every rank; the future's value is the averaged gradient of the bucket."""
    group = state.process_group
    _, world = world_of(group)
    buffer = bucket.buffer()
    state.bytes_sent += payload.numel()
    state.dense_bytes += 4 * buffer.numel()
    if bucket.is_last():
        state.step += 1
    try:
        gathered, work = all_gather_bytes(payload, group, async_op=True)
        assert work is not None  # async_op=True always returns a Work
    except (RuntimeError, dist.DistBackendError) as error:
        raise PeerFailure(failure_message(f"{state.kind} compression hook", group, error)) from error

    def average(fut: Future) -> Tensor:
        try:
            fut.wait()
        except (RuntimeError, dist.DistBackendError) as error:
            raise PeerFailure(failure_message(f"{state.kind} compression hook", group, error)) from error
        out = torch.zeros_like(buffer)
        for message in gathered.unbind(0):  # rank order: the same sum on every rank
            decode(message, out)
        return out.div_(world)

    return work.get_future().then(average)


def _topk_hook(state: CompressionState, bucket: dist.GradBucket) -> Future[Tensor]:
    _, world = world_of(state.process_group)
    if bucket.buffer().numel() >= 2**31:
        raise ValueError(
            f"topk compression sends int32 indices: a bucket of {bucket.buffer().numel()} elements is too large; "
            f"pass a smaller bucket_cap_mb to DistributedDataParallel (at most 2**31 - 1 elements per bucket)"
        )
    density = state.density()
    values, indices, offset = [], [], 0
    for p, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
        g = grad.reshape(-1)
        n = g.numel()
        if state.clip_norm is not None:
            limit = state.clip_norm / math.sqrt(world)
            g = g * (limit / (torch.linalg.vector_norm(g) + 1e-6)).clamp(max=1.0)
        accumulated = state.buffer(p, "accumulated", g)
        if state.momentum > 0:
            velocity = state.buffer(p, "velocity", g)
            velocity.mul_(state.momentum).add_(g)
            accumulated.add_(velocity)
        else:
            accumulated.add_(g)
        k = min(n, max(1, math.ceil(density * n)))
        selected = accumulated.abs().topk(k, sorted=False).indices
        values.append(accumulated[selected])
        indices.append(selected + offset)
        accumulated.index_fill_(0, selected, 0.0)
        if state.momentum > 0 and state.factor_masking:
            velocity.index_fill_(0, selected, 0.0)
        offset += n
    values_bytes = as_bytes(torch.cat(values))
    payload = torch.cat([values_bytes, as_bytes(torch.cat(indices).to(torch.int32))])
    split = values_bytes.numel()
    dtype = bucket.buffer().dtype

    def decode(message: Tensor, out: Tensor) -> None:
        out.index_add_(0, from_bytes(message[split:], torch.int32).long(), from_bytes(message[:split], dtype))

    return _finish(state, bucket, payload, decode)


def _sign_hook(state: CompressionState, bucket: dist.GradBucket) -> Future[Tensor]:
    scales, bits, sizes = [], [], []
    for p, grad in zip(bucket.parameters(), bucket.gradients(), strict=True):
        g = grad.reshape(-1)
        error = state.buffer(p, "error", g)
        corrected = g + error
        scale = corrected.abs().mean()
        error.copy_(corrected - scale * signs(corrected))
        scales.append(scale.reshape(1))
        bits.append(pack_signs(corrected))
        sizes.append(g.numel())
    scale_bytes = as_bytes(torch.cat(scales))
    payload = torch.cat([scale_bytes, *bits])
    dtype = bucket.buffer().dtype
    return _finish(state, bucket, payload, _scaled_decoder(scale_bytes.numel(), sizes, dtype))


def _scaled_decoder(scale_nbytes: int, sizes: list[int], dtype: torch.dtype) -> Callable[[Tensor, Tensor], None]:
    def decode(message: Tensor, out: Tensor) -> None:
        rank_scales = from_bytes(message[:scale_nbytes], dtype)
        start, offset = scale_nbytes, 0
        for scale, n in zip(rank_scales.unbind(0), sizes, strict=True):
            nbytes = (n + 7) // 8
            out[offset : offset + n].add_(unpack_signs(message[start : start + nbytes], n, dtype) * scale)
            start += nbytes
            offset += n

    return decode
