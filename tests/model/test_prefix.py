"""Generation that continues a prefilled prefix equals generation from the whole text, reading only the rest."""

from __future__ import annotations

import math

import pytest
import torch

from tests.tiny import build_tiny, tolerance
from thinkaloud.config import ExitConfig
from thinkaloud.data.prompts import left_pad
from thinkaloud.model import arch
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.generate import prefill
from thinkaloud.model.kv_cache import Prefix

pytestmark = pytest.mark.usefixtures("one_thread")

# Two texts read once; four continuations: (text row, tokens kept, tail). Row 0 is cut twice, and the
# cuts leave holes (the dropped tokens, the tails' left padding) longer than every tiny sliding window.
TEXTS = [[5, 17, 23, 41, 8, 66, 12, 90, 33, 71, 14], [9, 28, 54, 3, 77, 61]]
CONTINUATIONS = [(0, 11, [44, 19]), (0, 3, [50]), (1, 6, [21, 7, 86]), (1, 1, [38, 38])]


def wrap(family: str) -> EarlyExitModel:
    model = EarlyExitModel.from_base(build_tiny(family), ExitConfig(exit_every=2)).eval()
    with torch.no_grad():
        model.heads.bias.fill_(-0.5)  # exits at roughly a third of the layers: some rows exit, some go on
    return model


def both_ways(model, do_sample: bool, offset: float, seed: int = 4):
    """(from the prefix, from the whole contexts) with the same seed."""
    ids, mask = left_pad(TEXTS, 0)
    shared = prefill(model, ids, mask)
    rows, keep, tails = zip(*CONTINUATIONS)
    tail_ids, tail_mask = left_pad(tails, 0)
    kw = dict(max_new_tokens=8, do_sample=do_sample, offset=offset, stop_token_ids=[])
    ours = model.generate(tail_ids, tail_mask, prefix=shared.select(rows, keep), seed=seed, **kw)
    whole_ids, whole_mask = left_pad([TEXTS[r][:k] + t for r, k, t in CONTINUATIONS], 0)
    whole = model.generate(whole_ids, whole_mask, seed=seed, **kw)
    return ours, whole


def test_sampling_with_exits_from_a_prefix_equals_sampling_from_the_whole_text(family):
    model = wrap(family)
    ours, whole = both_ways(model, do_sample=True, offset=0.0)
    assert torch.equal(ours.new_tokens, whole.new_tokens)
    assert torch.equal(ours.exit_layers, whole.exit_layers)
    assert 0 < (ours.exit_layers < model.num_layers).float().mean() < 1  # exits were really drawn
    tol = 10 * tolerance(family)
    torch.testing.assert_close(ours.token_logprobs, whole.token_logprobs, atol=tol, rtol=0)
    torch.testing.assert_close(ours.exit_logprobs, whole.exit_logprobs, atol=tol, rtol=0)
    assert ours.prompt_length == 3 and torch.equal(
        ours.sequences[:, :3], left_pad([t for *_, t in CONTINUATIONS], 0)[0]
    )


def test_greedy_from_a_prefix_without_exits_equals_hf_generate():
    model = wrap("llama")
    ours, _ = both_ways(model, do_sample=False, offset=-math.inf)
    for b, (r, k, tail) in enumerate(CONTINUATIONS):
        context = torch.tensor([TEXTS[r][:k] + tail])
        hf = model.base.generate(context, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert ours.new_tokens[b].tolist() == hf[0, context.shape[1] :].tolist()


def test_the_prefix_is_not_read_again():
    """The first layer sees the texts once in ``prefill``, then only the tails and the new tokens."""
    model = wrap("llama")
    seen = []
    hook = arch.decoder_layers(model.peft)[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    try:
        both_ways(model, do_sample=False, offset=-math.inf)
    finally:
        hook.remove()
    width = max(map(len, TEXTS))
    # prefill: (2, 11); the tails but their last token, one column at a time: 2 × (4, 1); 8 steps of (4, 1);
    # then the run over the whole contexts reads them in one block
    assert seen[0] == (2, width, 32) and all(s == (4, 1, 32) for s in seen[1:11])
    assert seen[11][1] == max(k + len(t) for _, k, t in CONTINUATIONS) - 1


def test_select_and_generate_refuse_what_does_not_fit():
    model = wrap("llama")
    ids, mask = left_pad(TEXTS, 0)
    shared = prefill(model, ids, mask)
    with pytest.raises(ValueError, match="keeps 7 tokens of a prefix of 6"):
        shared.select([1], [7])
    with pytest.raises(ValueError, match="equal-length"):
        shared.select([0, 1], [3])
    with pytest.raises(ValueError, match="prefix of 2 rows"):
        model.generate(torch.tensor([[5]]), prefix=shared, max_new_tokens=2)
    with pytest.raises(ValueError, match="exceeds the model context of 128"):
        model.generate(torch.tensor([[5], [6]]), prefix=shared, max_new_tokens=118)
    cut = shared.select([0, 0], [2, 5])
    assert cut.valid.shape == (2, 5) and cut.valid.sum(-1).tolist() == [2, 5] and cut.next_position.tolist() == [2, 5]


def test_select_copies_no_keys_and_generate_gathers_them_once():
    model = wrap("llama")
    ids, mask = left_pad(TEXTS, 0)
    shared = prefill(model, ids, mask)
    rows, keep, tails = zip(*CONTINUATIONS)
    cut = shared.select(rows, keep)
    for mine, theirs in ((cut.cache.k, shared.cache.k), (cut.cache.v, shared.cache.v)):
        assert all(a.data_ptr() == b.data_ptr() for a, b in zip(mine, theirs))  # the same storage: no copy
    assert cut.rows.tolist() == list(rows) and cut.columns == max(len(TEXTS[r]) for r in rows)
    # a selection of a selection reads the rows of the one cache, as a direct selection would
    again = cut.select([2, 0], [4, 11])
    assert again.cache is shared.cache and again.rows.tolist() == [1, 0]
    direct = shared.select([1, 0], [4, 11])
    assert torch.equal(again.valid, direct.valid) and torch.equal(again.positions, direct.positions)
    # generate gathers the kept rows into its own cache, once, and writes nothing into the shared one
    before = [k.clone() for k in shared.cache.k]
    copies = []
    real = Prefix.copy_into
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Prefix, "copy_into", lambda self, cache: copies.append(cache) or real(self, cache))
        tail_ids, tail_mask = left_pad(tails, 0)
        model.generate(
            tail_ids, tail_mask, prefix=cut, max_new_tokens=3, do_sample=False, offset=-math.inf, stop_token_ids=[]
        )
    assert len(copies) == 1 and all(c.data_ptr() != s.data_ptr() for c, s in zip(copies[0].k, shared.cache.k))
    assert all(torch.equal(a, b) for a, b in zip(before, shared.cache.k))
    S, kept = cut.columns, list(rows)
    assert all(torch.equal(c[:, :, :S], k[kept, :, :S]) for c, k in zip(copies[0].k, shared.cache.k))
    assert all(torch.equal(c[:, :, :S], v[kept, :, :S]) for c, v in zip(copies[0].v, shared.cache.v))
