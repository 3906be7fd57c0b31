"""Fixtures shared by all tests."""

import pytest

from tests.tiny import FAMILIES


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param
