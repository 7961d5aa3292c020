"""1-bit Adam's non-finite policy: one rank's NaN gradient is seen by every rank, which skip (or raise) together."""

from __future__ import annotations

import distributed_harness as H
import pytest
import torch

from gradwise.distributed import OneBitAdam

STEPS, FREEZE, BAD_STEP = 16, 6, 9  # the bad step falls in the compression stage
HYPER = dict(lr=5e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def train(rank: int, world: int, poison: bool, nonfinite: str = "skip"):
    """Rank 1 gets a NaN gradient at BAD_STEP when `poison`; otherwise that step is simply not taken."""
    x, y = H.data(world)
    net = H.model()
    opt = OneBitAdam(net.parameters(), freeze_step=FREEZE, nonfinite=nonfinite, **HYPER)
    trajectory = []
    for t in range(STEPS):
        opt.zero_grad()
        H.loss_of(net, x, y, rank, t).backward()
        if t == BAD_STEP and poison and rank == 1:
            next(net.parameters()).grad.view(-1)[0] = float("nan")
        if t != BAD_STEP or poison:
            opt.step()
        trajectory.append(H.flat(net))
    checkpoint = opt.state_dict()  # gathered on rank 0; an empty dict on rank 1
    return torch.stack(trajectory), opt.skipped_steps, checkpoint["onebit"]["skipped_steps"] if rank == 0 else None


def both(rank: int, world: int):
    return train(rank, world, poison=True), train(rank, world, poison=False)


def test_a_nan_on_one_rank_skips_the_step_on_every_rank():
    runs = H.run(both, world=2)
    for rank in (0, 1):
        (poisoned, skipped, saved), (clean, _, _) = runs[rank]
        assert skipped == 1 and saved == (1 if rank == 0 else None)
        assert torch.isfinite(poisoned).all()
        # skipping leaves no trace: the run equals one that never took that step
        assert torch.equal(poisoned, clean)
    assert torch.equal(runs[0][0][0], runs[1][0][0])


def raising(rank: int, world: int):
    try:
        train(rank, world, poison=True, nonfinite="raise")
    except FloatingPointError as error:
        return str(error)
    return None


def test_raise_stops_every_rank_with_a_clear_error():
    messages = H.run(raising, world=2)
    assert all(m is not None and "non-finite" in m and "nonfinite='raise'" in m for m in messages)


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite"):
        OneBitAdam(H.model().parameters(), nonfinite="drop")
