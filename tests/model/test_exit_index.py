"""``exit_index``: exit layers → outcome indices, and a clear error for layers that are not outcomes."""

from __future__ import annotations

import pytest
import torch

from thinkaloud.model.exits import exit_index

LAYERS, L = [5, 10, 15], 30


def test_every_outcome_maps_to_its_index():
    idx = exit_index(torch.tensor([[30, 15, 10, 5]]), LAYERS, L)
    assert idx.dtype == torch.long and idx.tolist() == [[3, 2, 1, 0]]


@pytest.mark.parametrize("bad", [[7], [1], [29], [31], [0], [-1], [7, 31, 7]])
def test_layers_that_are_not_outcomes_are_named_in_the_error(bad):
    layers = torch.tensor([5] + bad + [30])
    names = ", ".join(str(b) for b in sorted(set(bad)))
    with pytest.raises(
        ValueError,
        match=rf"exit layers \[{names}\] are not exit layers \[5, 10, 15\] or the last "
        rf"layer 30",
    ):
        exit_index(layers, LAYERS, L)


def test_layer_zero_is_not_an_outcome_even_next_to_an_exit_at_one():
    """Layer 0 (the embeddings) is never an outcome, also when layer 1 is an exit layer."""
    assert exit_index(torch.tensor([1, 3, 4]), [1, 3], 4).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match=r"exit layers \[0\]"):
        exit_index(torch.tensor([0, 1]), [1, 3], 4)
