"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny tensors and thousands of small steps only pay for a second thread's
    synchronisation, and on a busy 2-core machine idle threads spin against other work. Use it with
    `pytestmark = pytest.mark.usefixtures("one_thread")` for a whole file, or as an argument."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
