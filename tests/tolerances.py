"""Tolerances for comparing the same maths computed two ways, set from the dtype it was computed in.

Two computations of the same quantity that differ in batch shape, chunking or kernel (a batch of one
against a batch of four, readouts 3 rows at a time against all at once) add their terms in another
order, so each result may move by a few rounding steps of its dtype, and which way depends on the
CPU's kernels. A tolerance of 1e-9 on float32 values passes on one machine and fails on the next.

Use ``tol`` for these comparisons. Where the *same* computation runs again on the *same* shapes (a
resumed run, a seeded rerun), results are bit-for-bit equal: assert that exactly (``torch.equal``,
``==``), not with a tolerance.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

ULPS = 64
"""Rounding steps of slack, relative to the compared values: float32 → 7.6e-6, float64 → 1.4e-14."""


def tol(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    """``{"rtol", "atol"}`` for ``torch.testing.assert_close(a, b, **tol(dtype))``.

    rtol = ULPS · eps(dtype). atol = rtol · ``scale``: give ``scale``, the size of the terms that were
    summed, when a result can cancel to near zero (there rtol alone would ask for more than the dtype
    holds).
    """
    rtol = ULPS * torch.finfo(dtype).eps
    return {"rtol": rtol, "atol": rtol * scale}


def approx(expected: Any, dtype: torch.dtype, scale: float = 1.0) -> Any:
    """``pytest.approx(expected)`` with ``tol(dtype, scale)``, for plain floats and lists of them."""
    t = tol(dtype, scale)
    return pytest.approx(expected, rel=t["rtol"], abs=t["atol"])
