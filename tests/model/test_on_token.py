"""The engine's streaming hook: one call per step with the rows still generating, output unchanged."""

from __future__ import annotations

import pytest
import torch

from tests.tiny import build_tiny, left_padded_batch
from thinkaloud import EarlyExitModel, ExitConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def model() -> EarlyExitModel:
    m = EarlyExitModel.from_base(build_tiny("llama"), ExitConfig(exit_every=2)).eval()
    with torch.no_grad():
        m.heads.bias.fill_(0.0)  # exits at every exit layer with probability 1/2: all layers occur
    return m


def test_streamed_steps_rebuild_the_output_and_rows_finish_independently():
    m = model()
    ids, mask = left_padded_batch([7, 3, 5], seed=3)
    free = m.generate(ids, mask, max_new_tokens=10, do_sample=True, seed=0)
    stop = int(free.new_tokens[1, 2])  # row 1 stops at its third token at the latest
    plain = m.generate(ids, mask, max_new_tokens=10, do_sample=True, seed=0, stop_token_ids=[stop])
    steps: list[tuple[list[int], list[int], list[int], list[float]]] = []

    def on_token(rows, tokens, exit_layers, logprobs):
        steps.append((rows.tolist(), tokens.tolist(), exit_layers.tolist(), logprobs.tolist()))

    out = m.generate(ids, mask, max_new_tokens=10, do_sample=True, seed=0, stop_token_ids=[stop], on_token=on_token)
    for name in ("sequences", "exit_layers", "token_logprobs", "exit_logprobs", "lengths"):
        assert torch.equal(getattr(out, name), getattr(plain, name)), name  # the hook changes nothing

    lengths = out.lengths.tolist()
    assert len(set(lengths)) > 1  # rows finished at different steps
    assert len(steps) == max(lengths)
    streamed = {b: ([], [], [], []) for b in range(3)}
    for rows, tokens, layers, logprobs in steps:
        for b, t, e, lp in zip(rows, tokens, layers, logprobs):
            for part, value in zip(streamed[b], (t, e, lp)):
                part.append(value)
    for b in range(3):
        n = lengths[b]
        assert streamed[b][0] == out.new_tokens[b, :n].tolist()  # a finished row is no longer reported
        assert streamed[b][1] == out.exit_layers[b, :n].tolist()
        torch.testing.assert_close(torch.tensor(streamed[b][2]), out.token_logprobs[b, :n])


def test_an_interrupt_in_the_hook_ends_generation_and_restores_the_mode():
    m = model().train()
    ids, mask = left_padded_batch([4], seed=1)
    seen = []

    def on_token(rows, tokens, exit_layers, logprobs):
        seen.append(int(tokens[0]))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        m.generate(ids, mask, max_new_tokens=20, do_sample=False, on_token=on_token, stop_token_ids=[])
    assert len(seen) == 3 and m.training
