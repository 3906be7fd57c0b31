"""Degenerate completions (empty, one repeated token, a loop, no answer) and the collapse of a run."""

from __future__ import annotations

import torch

from thinkaloud.model.generation_output import GenerationOutput
from thinkaloud.train.degenerate import KINDS, collapse, counts, kinds, shares, trailing_loop

EOS = 2


def test_kinds_of_one_completion():
    assert kinds([EOS], {EOS}, None, None) == {"empty": True, "repeat": False, "loop": False, "no_answer": False}
    assert kinds([5, 6, EOS], {EOS}, "  \n", True)["empty"]  # blank text is empty
    assert kinds([7, 7, 7, EOS], {EOS}, "...", False) == {
        "empty": False,
        "repeat": True,
        "loop": False,
        "no_answer": True,
    }
    assert kinds([7, 7, 7], {EOS}, None, None)["repeat"]  # cut at the cap: no stop token
    assert not kinds([7, 8, 9], {EOS}, "Let us think", False)["no_answer"]  # cut at the cap: may yet answer
    assert kinds([7, 8, 9, EOS], {EOS}, "Let us think", False)["no_answer"]  # ended without an answer
    assert not kinds([7, EOS], {EOS}, ".", None)["repeat"]  # one token is not a repeat
    assert not any(kinds([7, 8, 7, EOS], {EOS}, "Answer: box", True).values())


A, B, C, D, E = 11, 12, 13, 14, 15
SENTENCE = [20, 21, 22, 23, 24, 25, 26, 27, 28, 29]  # "the cat sat on the mat …": no block repeats


def test_trailing_loop_counts_whole_repetitions_of_the_last_block():
    assert trailing_loop([A, B, C] * 3) == 9
    assert trailing_loop([D, A, B, C, A, B, C, A, B, C, A, B]) == 9  # cut mid-cycle: (C, A, B) × 3
    assert trailing_loop([D, A, B, C, A, B, C, A, B]) == 0  # (C, A, B) only twice
    assert trailing_loop([A, B, C, D] * 3) == 12 and trailing_loop([A, B, C, D, E] * 3) == 0  # blocks of 1–4
    assert trailing_loop([A] * 7) == 7 and trailing_loop([A, B] * 3) == 6
    assert trailing_loop(SENTENCE) == 0 and trailing_loop([]) == 0 and trailing_loop([A]) == 0


def test_loop_needs_the_end_six_tokens_and_half_the_content():
    loop = lambda ids: kinds(ids, {EOS}, None, None)["loop"]
    assert loop([A, B, C] * 3 + [EOS]) and loop([A, B, C] * 3)  # with or without the stop token
    assert loop([A, A, B] * 4) and loop(SENTENCE[:6] + [A, B] * 3)  # "the the of …"; 6 of 12 tokens loop
    assert not loop(SENTENCE + [EOS])  # a normal sentence
    assert not loop([A, B] * 2 + [EOS]) and not loop([A] * 5)  # fewer than 6 tokens
    assert not loop(SENTENCE + [A, B] * 3)  # 6 of 16 tokens: less than half
    assert not loop([A, B, C] * 4 + SENTENCE[:4] + [EOS])  # a loop at the start, not at the end
    assert kinds([A] * 6, {EOS}, None, None)["repeat"] and loop([A] * 6)  # one token, 6 times: both kinds
    assert loop([A, B, A] * 3)  # a block may hold one token twice
    assert not kinds([A, B] * 4, {EOS}, "  ", None)["loop"]  # blank text is empty, like repeat


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
    assert KINDS == ("empty", "repeat", "loop", "no_answer")
    assert counts(out, {EOS}, None, None) == [4, 1, 1, 0, 0, 2]
    answered = torch.tensor([False, False, False, True])
    assert counts(out, {EOS}, None, answered) == [4, 1, 1, 0, 2, 3]  # rows 0 and 2 ended unanswered, 1 was cut
    assert shares([4, 1, 1, 1, 2, 3]) == {
        "degenerate": 0.75,
        "empty": 0.25,
        "repeat": 0.25,
        "loop": 0.25,
        "no_answer": 0.5,
    }


def test_a_loop_of_several_tokens_counts_as_degenerate():
    new = torch.tensor([[A, B, A, B, A, B, EOS], [*SENTENCE[:6], EOS]])  # (B=2, N=7)
    out = GenerationOutput(
        sequences=torch.cat([torch.ones(2, 1, dtype=torch.long), new], 1),
        attention_mask=torch.ones(2, 8, dtype=torch.long),
        prompt_length=1,
        exit_layers=torch.full((2, 7), 6),
        token_logprobs=torch.zeros(2, 7),
        exit_logprobs=torch.zeros(2, 7),
        lengths=torch.tensor([7, 7]),
        num_layers=6,
    )
    assert shares(counts(out, {EOS}, None, None)) == {
        "degenerate": 0.5,
        "empty": 0.0,
        "repeat": 0.0,
        "loop": 0.5,
        "no_answer": 0.0,
    }


def test_collapse_needs_consecutive_steps_above_the_share():
    rows = lambda values: [{"step": s + 1, "degenerate": v} for s, v in enumerate(values)]
    assert collapse(rows([0.6, 0.7, 0.2, 0.9, 0.9])) is None  # never 3 in a row
    found = collapse(rows([0.1, 0.6, 0.7, 0.9, 1.0, 0.4]))
    assert found is not None and (found["from_step"], found["to_step"], found["steps"]) == (2, 5, 4)
    assert "collapsed" in found["message"] and "2–5" in found["message"]
    assert collapse(rows([0.5, 0.5, 0.5])) is None  # more than half, not half
    assert collapse(rows([0.6, None, 0.6, 0.6])) is None
