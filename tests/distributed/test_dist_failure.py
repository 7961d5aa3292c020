"""A rank that dies or hangs makes the others fail with a clear error within the timeout, never hang."""

from __future__ import annotations

import os
import time

import distributed_harness as H
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel

from gradwise.distributed import DiLoCo, OneBitAdam, PeerFailure, check_peers, compression_hook

PG_TIMEOUT = 2.0  # seconds: init_process_group(timeout=...) in every rank


def failing(rank: int, world: int, method: str, fault: str) -> dict | None:
    """Train with `method`; rank 1 dies (or hangs) after two steps. Rank 0 reports how it failed."""
    x, y = H.data(world)
    net = H.model()
    if method in ("diloco", "barrier"):
        opt, forward = DiLoCo(net, torch.optim.SGD(net.parameters(), lr=0.05), sync_every=3), net
    elif method == "onebit":
        opt, forward = OneBitAdam(net.parameters(), lr=1e-3, freeze_step=1), net
    else:
        forward = DistributedDataParallel(net)
        forward.register_comm_hook(*compression_hook(method))
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
    start = time.monotonic()
    try:
        for t in range(6):
            if rank == 1 and t == 2:
                if fault == "die":
                    os._exit(1)
                time.sleep(60)  # hangs; the parent kills it once rank 0 has reported
            if method == "barrier" and rank == 0 and t == 2:
                check_peers(timeout=PG_TIMEOUT)
            opt.zero_grad()
            H.loss_of(forward, x, y, rank, t).backward()
            start = time.monotonic()
            opt.step()
    except Exception as error:  # noqa: BLE001  (what the user would see)
        return {"type": type(error).__name__, "peer_failure": _caused_by_peer_failure(error), "message": str(error),
                "seconds": time.monotonic() - start}
    return None


def _caused_by_peer_failure(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, PeerFailure):
            return True
        error = error.__cause__ or error.__context__
    return False


@pytest.mark.parametrize("method, fault", [
    ("diloco", "die"), ("onebit", "hang"), ("sign", "die"), ("topk", "hang"), ("barrier", "hang"),
])
def test_a_lost_peer_is_a_clear_error_within_the_timeout(method, fault):
    began = time.monotonic()
    report = H.run(failing, method, fault, pg_timeout=PG_TIMEOUT, wait_for=[0], limit=30)[0]
    assert report is not None, "rank 0 finished without noticing that rank 1 was gone"
    # DDP re-raises a hook's error from C++ as RuntimeError: there the message is what tells the user
    assert report["peer_failure"] or method in ("sign", "topk"), report
    assert "gradwise.distributed" in report["message"], report
    assert "rank 0 of 2" in report["message"] and "peer process died" in report["message"], report
    if method == "barrier":
        assert "Ranks 1 failed to pass monitoredBarrier" in report["message"], report  # names the absent rank
    assert report["seconds"] < PG_TIMEOUT + 3, report
    assert time.monotonic() - began < PG_TIMEOUT + 15
