"""Communication-efficient distributed training on `torch.distributed` (gloo on CPUs, NCCL on GPUs).

- `compression_hook("topk" | "sign", ...)`: a `(state, hook)` pair for
  `DistributedDataParallel.register_comm_hook`: Deep Gradient Compression, or 1-bit sign compression,
  both with error feedback.
- `OneBitAdam`: Adam that exchanges 1-bit momentum after a warm-up with a frozen variance.
- `DiLoCo`: any optimizer inside, replicas averaged every H steps by an outer Nesterov step.
- `check_peers` and `PeerFailure`: a failing peer (dead, or silent past the process group's timeout)
  raises `PeerFailure` with a clear message on the other ranks instead of hanging.

Under `torchrun --nproc-per-node 2 train.py`, for example:

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    model = DistributedDataParallel(net)
    model.register_comm_hook(*compression_hook("topk", ratio=0.01, momentum=0.9))
    # or, without DDP:  opt = OneBitAdam(net.parameters(), lr=1e-3, freeze_step=1000)
    # or:               opt = DiLoCo(net, gradwise.AdamW(net.parameters(), lr=1e-3), sync_every=500)

These classes need an initialised process group and are not in the single-process optimizer registry.
Set the failure timeout where the group is made: `torch.distributed.init_process_group("gloo",
timeout=datetime.timedelta(seconds=60))`; a collective waits at most that long for a silent peer, and a
peer that dies is noticed at once (its connections close).
"""

from .comm import PeerFailure, check_peers
from .diloco import DiLoCo
from .hooks import CompressionState, compression_hook
from .onebit_adam import OneBitAdam

__all__ = ["CompressionState", "DiLoCo", "OneBitAdam", "PeerFailure", "check_peers", "compression_hook"]
