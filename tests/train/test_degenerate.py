"""Degenerate completions (empty, one repeated token, no answer) and the collapse of a run."""

from __future__ import annotations

import torch

from thinkaloud.model.generation_output import GenerationOutput
from thinkaloud.train.degenerate import collapse, counts, kinds, shares

EOS = 2


def test_kinds_of_one_completion():
    assert kinds([EOS], {EOS}, None, None) == {"empty": True, "repeat": False, "no_answer": False}
    assert kinds([5, 6, EOS], {EOS}, "  \n", True)["empty"]  # blank text is empty
    assert kinds([7, 7, 7, EOS], {EOS}, "...", False) == {"empty": False, "repeat": True, "no_answer": True}
    assert kinds([7, 7, 7], {EOS}, None, None)["repeat"]  # cut at the cap: no stop token
    assert not kinds([7, 8, 9], {EOS}, "Let us think", False)["no_answer"]  # cut at the cap: may yet answer
    assert kinds([7, 8, 9, EOS], {EOS}, "Let us think", False)["no_answer"]  # ended without an answer
    assert not kinds([7, EOS], {EOS}, ".", None)["repeat"]  # one token is not a repeat
    assert kinds([7, 8, 7, EOS], {EOS}, "Answer: box", True) == {"empty": False, "repeat": False, "no_answer": False}


def test_counts_and_shares_of_a_generation():
    new = torch.tensor([[EOS, 0, 0], [4, 4, 4], [4, 5, EOS], [6, 7, 8]])  # (B=4, N=3)
    lengths = torch.tensor([1, 3, 3, 3])
    P = 2
    out = GenerationOutput(
        sequences=torch.cat([torch.ones(4, P, dtype=torch.long), new], 1),
        attention_mask=torch.ones(4, P + 3, dtype=torch.long),
        prompt_length=P,
        exit_layers=torch.full((4, 3), 6),
        token_logprobs=torch.zeros(4, 3),
        exit_logprobs=torch.zeros(4, 3),
        lengths=lengths,
        num_layers=6,
    )
    assert counts(out, {EOS}, None, None) == [4, 1, 1, 0, 2]
    answered = torch.tensor([False, False, False, True])
    assert counts(out, {EOS}, None, answered) == [4, 1, 1, 2, 3]  # rows 0 and 2 ended unanswered, row 1 was cut
    assert shares([4, 1, 1, 2, 3]) == {"degenerate": 0.75, "empty": 0.25, "repeat": 0.25, "no_answer": 0.5}


def test_collapse_needs_consecutive_steps_above_the_share():
    rows = lambda values: [{"step": s + 1, "degenerate": v} for s, v in enumerate(values)]
    assert collapse(rows([0.6, 0.7, 0.2, 0.9, 0.9])) is None  # never 3 in a row
    found = collapse(rows([0.1, 0.6, 0.7, 0.9, 1.0, 0.4]))
    assert found is not None and (found["from_step"], found["to_step"], found["steps"]) == (2, 5, 4)
    assert "collapsed" in found["message"] and "2–5" in found["message"]
    assert collapse(rows([0.5, 0.5, 0.5])) is None  # more than half, not half
    assert collapse(rows([0.6, None, 0.6, 0.6])) is None
