"""Fixtures shared by all tests."""

import pytest
import torch

from tests.tiny import FAMILIES, tiny_model_dir


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


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    """A saved tiny Llama with its tokenizer (``tests.tiny.tiny_model_dir``), one per test module; a module
    that needs another folder defines its own ``tiny_dir``."""
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")
