"""Fixtures shared by all tests."""

import pytest
import torch

from tests.tiny import FAMILIES


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and several threads stall when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
