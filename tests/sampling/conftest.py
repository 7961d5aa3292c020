import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """The test-bed tensors are tiny: one intra-op thread avoids thread contention on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
