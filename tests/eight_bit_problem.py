"""The small 8-bit problem shared by the flat 8-bit tests (tests/state/test_state_compiled_flat.py and
tests/state/test_state_native.py): parameters whose sizes are not multiples of the block, a loss whose
gradient changes from step to step, and the layouts of the flat 8-bit path."""

from __future__ import annotations

import torch

SHAPES = [(40, 30), (1000,), (7,), (333, 3), (256,)]  # not multiples of the block; (7,) stays 32-bit
EIGHT_BIT = dict(state_bits=8, state_block=64, state_min_size=200)


def parameters(seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def run(opt, params, steps, start=0):
    """`steps` steps of a loss whose gradient changes with the step number k."""
    for k in range(start, start + steps):
        opt.zero_grad()
        sum((torch.sin(p * (1 + (k + i) % 3)) * p).sum() for i, p in enumerate(params)).backward()
        opt.step()


def quantized(opt):
    """What the compiled step keeps for the flat 8-bit path (gradwise.core.compiled_state), or None."""
    return getattr(opt._compiled, "_gradwise_quantized", None)


def layouts(opt):
    found = quantized(opt)
    return [] if found is None else [layout for group in found.layouts.values() for layout in group]
