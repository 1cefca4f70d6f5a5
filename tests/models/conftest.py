import pytest
import torch

from models_testkit import TINY, randomize
from opensora_core.models import build_model


@pytest.fixture
def tiny_model():
    def make(name="STDiT-tiny", seed=0, randomized=True, **overrides):
        torch.manual_seed(seed)
        kwargs = dict(TINY, input_size=(3, 4, 6))
        kwargs.update(overrides)
        model = build_model(name, **kwargs)
        return (randomize(model, seed) if randomized else model).eval()

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread; the 2 shared cores are oversubscribed by other test runs."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
