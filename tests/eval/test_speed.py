"""Decode time per token and the speedup over the base model, from the engine's recorded timings."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tests.tiny import build_tiny, left_padded_batch
from thinkaloud.config import ExitConfig
from thinkaloud.eval.speed import speedup, timing
from thinkaloud.model.early_exit import EarlyExitModel

pytestmark = pytest.mark.usefixtures("one_thread")


def test_speedup_is_the_ratio_of_decode_times_per_token():
    model = EarlyExitModel.from_base(build_tiny("llama"), ExitConfig(exit_every=2)).eval()
    ids, mask = left_padded_batch([5, 3, 4], seed=1)
    gen = model.generate(ids, mask, max_new_tokens=6, do_sample=False, offset=-math.inf, stop_token_ids=[])
    assert gen.decode_tokens == 3 * 5
    # Fake timings: the model spends 0.3 s on 15 decode tokens (20 ms/token) over two batches, the base
    # 0.45 s on 15 (30 ms/token): the model decodes 1.5× faster.
    mine = timing(
        [
            dataclasses.replace(gen, prefill_seconds=0.5, decode_seconds=0.1),
            dataclasses.replace(gen, prefill_seconds=0.25, decode_seconds=0.2),
        ]
    )
    base = timing([dataclasses.replace(gen, prefill_seconds=9.0, decode_seconds=0.45 / 2)] * 2)
    assert mine["prefill_s"] == pytest.approx(0.75) and mine["decode_tokens"] == 30
    assert mine["decode_ms_per_token"] == pytest.approx(1000 * 0.3 / 30)
    assert mine["n_tokens"] == 2 * 18
    assert speedup(mine, base) == pytest.approx(1.5)
    assert speedup(base, mine) == pytest.approx(1 / 1.5)
    # One token per row: nothing was decoded after the first token, so there is no per-token time.
    short = dataclasses.replace(gen, lengths=torch.ones_like(gen.lengths), decode_seconds=0.0)
    assert timing([short])["decode_ms_per_token"] is None and speedup(timing([short]), base) is None
