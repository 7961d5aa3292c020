import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """The test-bed tensors are tiny: every test here runs on one intra-op thread (`one_thread`, tests/conftest.py)."""
