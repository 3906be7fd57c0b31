"""A teacher-forced pass that continues a cached prefix equals the pass over the whole text, on every family."""

from __future__ import annotations

import pytest
import torch

from tests.moved import moved_model
from tests.tiny import FAMILIES, tolerance
from thinkaloud.model.generate import prefill
from thinkaloud.model.kv_cache import shared_copy

pytestmark = pytest.mark.usefixtures("one_thread")

B, P, N = 3, 9, 7  # the prefix is the first P - 1 columns: a prompt less its last token, which may exit


def batch(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (B, P + N), generator=g)
    mask = torch.ones(B, P + N, dtype=torch.long)
    mask[0, :3] = 0  # left padding of different lengths
    mask[2, :1] = 0
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_after_a_cached_prefix_equals_the_whole_pass(family):
    model = moved_model(family)
    ids, mask = batch(model.hf_config.vocab_size)
    sampled = model(ids, mask, exit_layers="sample", generator=torch.Generator().manual_seed(1), exits_from=P - 1)
    exits = sampled.exit_layers[:, P - 1 :].clone()
    exits[0, ::2] = model.num_layers  # both kinds of position: exited and full depth
    assert (exits < model.num_layers).any()
    full_exits = torch.cat([torch.full((B, P - 1), model.num_layers), exits], dim=1)
    full = model(ids, mask, exit_layers=full_exits, exits_from=P - 1)
    cache = model.prefix_cache(ids[:, : P - 1], mask[:, : P - 1])
    for _ in range(2):  # the cache is copied, not extended: a second call sees the same prefix
        out = model.forward_after(cache, ids[:, P - 1 :], mask, exit_layers=exits)
        torch.testing.assert_close(out.logits, full.logits[:, P - 1 :], rtol=1e-5, atol=tolerance(family))
        torch.testing.assert_close(out.exit_logprobs, full.exit_logprobs[:, P - 1 :], rtol=1e-5, atol=tolerance(family))
        assert torch.equal(out.exit_layers, exits)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_prefix_read_by_generation_serves_forward_after(family):
    """``prefill``'s keys and values as a Hugging Face cache (``Prefix.hf_cache``) give the pass over the whole text."""
    model = moved_model(family)
    ids, mask = batch(model.hf_config.vocab_size)
    full = model(ids, mask, exit_layers=None)
    prefix = prefill(model, ids[:, : P - 1], mask[:, : P - 1])
    for rows in (None, [2, 0]):  # every row, and a selection (rows of a shared cache)
        p = prefix if rows is None else prefix.select(rows, prefix.next_position[rows])
        r = slice(None) if rows is None else rows
        cache = p.hf_cache(model.hf_config)
        for _ in range(2):  # a shared copy extended in place leaves the cache as it was
            out = model.forward_after(shared_copy(cache), ids[r, P - 1 :], mask[r], extend=True)
            torch.testing.assert_close(out.logits, full.logits[r, P - 1 :], rtol=1e-5, atol=tolerance(family))
        assert cache.get_seq_length() == P - 1


def test_forward_after_samples_exits_on_the_new_columns_only():
    model = moved_model("llama")
    ids, mask = batch(model.hf_config.vocab_size)
    cache = model.prefix_cache(ids[:, : P - 1], mask[:, : P - 1])
    out = model.forward_after(
        cache, ids[:, P - 1 :], mask, exit_layers="sample", offset=4.0, generator=torch.Generator().manual_seed(0)
    )
    assert out.exit_layers.shape == (B, N + 1) and (out.exit_layers < model.num_layers).all()  # offset 4: all exit
    with pytest.raises(ValueError, match="cover the 8 cached and 8 new columns"):
        model.forward_after(cache, ids[:, P - 1 :], mask[:, 1:])
