import pytest
import torch


@pytest.fixture(autouse=True)
def threads_restored():
    """The benchmarks set torch's thread count for steadier timings; later tests get theirs back."""
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)
