"""Top-p (nucleus) sampling keeps exactly the smallest set of most likely tokens whose mass reaches p,
and samples within it in proportion to the (tempered) probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from tests.moved import moved_model
from thinkaloud.model.generate import _sample

pytestmark = pytest.mark.usefixtures("one_thread")

# Out of order on purpose: by probability the tokens are 1 (.5), 3 (.3), 0 (.15), 2 (.04), 4 (.01);
# the prefix masses are .5, .8, .95, .99, 1.
PROBS = torch.tensor([0.15, 0.5, 0.04, 0.3, 0.01], dtype=torch.float64)
DRAWS = 20_000


def draw(logits: torch.Tensor, top_p: float, temperature: float = 1.0) -> torch.Tensor:
    """DRAWS tokens from one distribution's logits (V,) → (DRAWS,)."""
    batch = logits.float().expand(DRAWS, -1).contiguous()  # (DRAWS, V)
    return _sample(batch, True, temperature, top_p, torch.Generator().manual_seed(0))


def nucleus(probs: torch.Tensor, top_p: float) -> set[int]:
    """The documented set, computed directly: the smallest prefix (by probability) with mass >= p."""
    order = probs.argsort(descending=True).tolist()
    kept, mass = set(), 0.0
    for token in order:
        kept.add(token)
        mass += float(probs[token])
        if mass >= top_p:
            break
    return kept


@pytest.mark.parametrize(
    "top_p, kept",
    [
        (0.3, {1}),
        (0.6, {1, 3}),
        (0.9, {1, 3, 0}),
        (0.97, {1, 3, 0, 2}),
        (0.995, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_smallest_prefix_whose_mass_reaches_p(top_p, kept):
    assert nucleus(PROBS, top_p) == kept  # the table above is the definition
    tokens = draw(PROBS.log(), top_p)
    assert set(tokens.unique().tolist()) == kept
    freq = torch.bincount(tokens, minlength=5).double() / DRAWS
    inside = torch.tensor([float(t in kept) for t in range(5)], dtype=torch.float64)
    torch.testing.assert_close(freq, PROBS * inside / (PROBS * inside).sum(), atol=0.015, rtol=0)


def test_top_p_applies_to_the_tempered_distribution():
    # T = 2: probabilities ∝ √p → 1 (.364), 3 (.282), 0 (.199), …; prefix masses .364, .646, .845:
    # p = 0.7 keeps three tokens here, where the untempered distribution would keep two.
    tempered = torch.softmax(PROBS.log() / 2.0, -1)
    assert nucleus(tempered, 0.7) == {1, 3, 0} and nucleus(PROBS, 0.7) == {1, 3}
    assert set(draw(PROBS.log(), 0.7, temperature=2.0).unique().tolist()) == {1, 3, 0}


def test_generate_samples_first_tokens_from_the_nucleus_of_the_model():
    """Through ``generate``: the first new token of many copies of one prompt, with p half-way
    between two prefix masses of the model's own next-token distribution (no exits)."""
    model = moved_model(lora_scale=0.0)
    prompt = torch.tensor([[5, 17, 42, 8]])
    with torch.no_grad():
        probs = torch.softmax(model(prompt, offset=-math.inf).logits[0, -1].double(), -1)  # (V,)
    sorted_p = probs.sort(descending=True).values
    k = next(i for i in range(2, len(sorted_p)) if sorted_p[i] >= 0.02 and sorted_p[i + 1] < sorted_p[i] - 1e-3)
    prefix = sorted_p.cumsum(0)
    top_p = float(prefix[k - 1] + prefix[k]) / 2  # the nucleus is the k + 1 most likely tokens
    expected = nucleus(probs, top_p)
    assert len(expected) == k + 1
    out = model.generate(prompt.expand(3000, -1), max_new_tokens=1, top_p=top_p, offset=-math.inf, seed=0)
    assert set(out.new_tokens[:, 0].unique().tolist()) == expected


def test_top_p_stops_at_a_prefix_whose_mass_equals_p_exactly():
    """Dyadic probabilities make the prefix masses exact in floating point: .5 + .25 = .75 reaches p = .75."""
    probs = torch.tensor([0.125, 0.5, 0.125, 0.25], dtype=torch.float64)
    assert nucleus(probs, 0.75) == {1, 3}
    tokens = draw(probs.log(), 0.75)
    assert set(tokens.unique().tolist()) == {1, 3}
