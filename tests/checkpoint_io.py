"""Shared by the tests that save and load: an object through torch.save and torch.load, as a checkpoint file
would take it (weights_only=True, the safe loader users are told to use). `tests/` is on pytest's pythonpath."""

from __future__ import annotations

import io
from typing import Any

import torch


def roundtrip(obj: Any) -> Any:
    """`obj` saved with torch.save into memory and loaded back with torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)
