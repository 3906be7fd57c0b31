"""The tolerance helper: float32 results of another batch shape pass, and the dtype sets the bar."""

from __future__ import annotations

import pytest
import torch

from tests.tolerances import approx, tol


def test_float32_sums_in_other_chunks_agree_within_tol_not_bit_for_bit():
    x = torch.randn(4096, generator=torch.Generator().manual_seed(1)) * 3 + 1  # (N,)
    whole = float(x.sum())
    for rows in (4, 64, 512):
        chunked = float(x.view(rows, -1).sum(0).sum())  # the same terms, added in another order
        assert chunked == approx(whole, torch.float32)
        torch.testing.assert_close(torch.tensor(chunked), torch.tensor(whole), **tol(torch.float32))
    assert whole == approx(float(x.double().sum()), torch.float32)  # and the exact sum


def test_the_dtype_sets_the_tolerance():
    assert tol(torch.float64)["rtol"] < 1e-12 < tol(torch.float32)["rtol"] < 1e-4 < tol(torch.bfloat16)["rtol"]
    assert tol(torch.float32, scale=100.0)["atol"] == pytest.approx(100 * tol(torch.float32)["rtol"])
    assert 1.0 + 1e-6 == approx(1.0, torch.float32) and 1.0 + 1e-6 != approx(1.0, torch.float64)
