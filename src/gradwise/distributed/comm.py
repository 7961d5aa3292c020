"""Communication helpers shared by the compressed methods: sign bit packing, byte messages, clear failures.

Every compressed method sends one byte message per collective: tensors of any dtype are viewed as bytes
and concatenated, so that values, indices and scales travel together in a single all-gather or
all-to-all. Byte counts (`bytes_sent`) are the sizes of the buffers a rank hands to its collectives;
what crosses the wire depends on the backend's algorithm (a ring all-reduce of B bytes sends about
2 (N - 1) / N * B per rank, an all-gather of B bytes (N - 1) / N * N * B).

Failure behaviour: a collective that fails because a peer process died (connection reset) or did not
answer within the process group's timeout (the `timeout=` of `torch.distributed.init_process_group`;
30 minutes by default for gloo) is re-raised as `PeerFailure`, whose message names the operation, this
rank, and the cause. `check_peers` is a monitored barrier that names the ranks that did not arrive.

Checkpoints: `gather_checkpoint` collects every rank's own state (error-feedback residuals, local
optimizer state) on the group's rank 0, so that one file written by rank 0 resumes all ranks;
`own_part` picks this rank's entry back out of it and refuses a checkpoint written by a different
number of ranks.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


class PeerFailure(RuntimeError):
    """A collective failed because another rank died, hung past the timeout, or left the group."""


def world_of(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(rank, world size) of this process in `group` (None: the default group)."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "gradwise.distributed needs an initialised process group: call "
            "torch.distributed.init_process_group(backend, timeout=...) first (torchrun sets the rest)"
        )
    return dist.get_rank(group), dist.get_world_size(group)


def failure_message(what: str, group: dist.ProcessGroup | None, cause: BaseException) -> str:
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    return (
        f"gradwise.distributed: {what} failed on rank {rank} of {world}: a peer process died, hung past the "
        f"process group's timeout (init_process_group(timeout=...)), or left the group. "
        f"Check the other ranks' logs. Cause: {cause}"
    )


@contextlib.contextmanager
def guarded(what: str, group: dist.ProcessGroup | None) -> Iterator[None]:
    """Re-raise a failing collective as `PeerFailure` with a message that says what and where."""
    try:
        yield
    except PeerFailure:
        raise
    except (RuntimeError, dist.DistBackendError) as error:
        raise PeerFailure(failure_message(what, group, error)) from error


def check_peers(timeout: float = 60.0, group: dist.ProcessGroup | None = None) -> None:
    """Wait at most `timeout` seconds for every rank of `group`; raise `PeerFailure` naming the absent ones.

    Uses `torch.distributed.monitored_barrier` (gloo); on other backends a plain barrier bounded by the
    process group's own timeout.
    """
    try:
        if dist.get_backend(group) == "gloo":
            dist.monitored_barrier(group, timeout=datetime.timedelta(seconds=timeout), wait_all_ranks=True)
        else:
            dist.barrier(group)
    except (RuntimeError, dist.DistBackendError) as error:
        raise PeerFailure(failure_message(f"check_peers(timeout={timeout} s)", group, error)) from error


# -- sign bits ---------------------------------------------------------------------------------------
def pack_signs(x: Tensor) -> Tensor:
    """One bit per element of `x` (1 where x >= 0), eight to a byte; the last byte is zero-padded."""
    bits = (x.reshape(-1) >= 0).to(torch.uint8)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    return (bits.view(-1, 8) << _SHIFTS.to(bits.device)).sum(1, dtype=torch.uint8)


def unpack_signs(packed: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """The first `n` signs in `packed` as +1 / -1 of `dtype` (inverse of `pack_signs`)."""
    bits = (packed.unsqueeze(1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(-1)[:n].to(dtype).mul_(2).sub_(1)


def signs(x: Tensor) -> Tensor:
    """+1 where x >= 0, -1 elsewhere: the 1-bit code of `pack_signs` (zero counts as positive)."""
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


# -- byte messages -----------------------------------------------------------------------------------
def as_bytes(t: Tensor) -> Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    """Bytes back to `dtype` (copied: a slice of a message need not be aligned for a view)."""
    return b.clone().view(dtype)


def split_bytes(message: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    return list(torch.split(message, list(sizes)))


def all_gather_bytes(
    payload: Tensor, group: dist.ProcessGroup | None, async_op: bool = False
) -> tuple[Tensor, dist.Work | None]:
    """Gather every rank's equally long uint8 `payload` into a (world, len) tensor, rank order."""
    _, world = world_of(group)
    out = payload.new_empty(world, payload.numel())
    work = dist.all_gather(list(out.unbind(0)), payload, group=group, async_op=async_op)
    return out, work


# -- checkpoints -------------------------------------------------------------------------------------
def to_cpu(obj: Any) -> Any:
    """A copy of `obj` (nested dicts, lists, tuples) with every tensor detached and copied to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def gather_checkpoint(what: str, own: Any, group: dist.ProcessGroup | None) -> list[Any] | None:
    """Every rank's `own` state, in rank order, on the group's rank 0 (None on the other ranks).

    A collective: every rank of `group` must call it. Tensors travel as CPU copies (pickled by
    `gather_object`); with NCCL, set each process's device (`torch.cuda.set_device`) first.
    """
    rank, world = world_of(group)
    destination = dist.get_global_rank(group, 0) if group is not None else 0
    gathered: list[Any] | None = [None] * world if rank == 0 else None
    with guarded(f"{what}: gathering every rank's state for a checkpoint", group):
        dist.gather_object(to_cpu(own), gathered, dst=destination, group=group)
    return gathered


def own_part(what: str, checkpoint: Any, group: dist.ProcessGroup | None) -> Any:
    """This rank's entry of `checkpoint["ranks"]`, after checking that the world sizes agree."""
    rank, world = world_of(group)
    if not isinstance(checkpoint, dict) or "ranks" not in checkpoint:
        raise ValueError(
            f"{what}.load_state_dict: not a gradwise.distributed checkpoint (no per-rank part). Save the "
            f"state_dict() that rank 0 returns (the other ranks return an empty dict) and load that file on every rank"
        )
    saved = len(checkpoint["ranks"])
    if saved != world:
        raise ValueError(
            f"{what}.load_state_dict: the checkpoint was written by a process group of world size {saved}, "
            f"but this process group has world size {world}; per-rank state (error-feedback residuals, local "
            f"optimizer state) cannot be redistributed: resume with {saved} processes"
        )
    return checkpoint["ranks"][rank]
