import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """These tests run many tiny ops; on a busy 2-core machine two intra-op threads spin against each other
    and make a 1000-step sampling loop ~20x slower, so run them single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
