"""Necessity against filler with stand-in answerers whose use of the reasoning is known."""

from __future__ import annotations

import re

import pytest

from tests.measures.test_reliance import FRUITS, ToyTask, copying_answerer, fixed_answerer, toy_responses
from tests.tiny import tiny_tokenizer
from thinkaloud.measures.loadbearing.filler import FILLER, filler_ids, filler_necessity
from thinkaloud.measures.reliance import per_context

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_answer_fixed_in_the_prompt_gives_own_equal_to_none(tok):
    summary, records = filler_necessity(ToyTask(), toy_responses(tok), tok, fixed_answerer(tok))
    assert summary["agreement"] == {"own": 1.0, "none": 1.0, "filler": 1.0}
    assert summary["accuracy"] == {"own": 1.0, "none": 1.0, "filler": 1.0} and summary["gap"] == 0.0
    assert summary["n"] == 3 and summary["n_skipped"] == 1
    assert records[-1] == {"included": False, "reasoning_tokens": None, "full_answer": None} | dict.fromkeys(
        ("own", "none", "filler")
    )


def test_answer_copied_from_the_reasoning_gives_own_above_none_equal_to_filler(tok):
    summary, records = filler_necessity(ToyTask(), toy_responses(tok), tok, copying_answerer(tok))
    assert summary["agreement"] == {"own": 1.0, "none": 0.0, "filler": 0.0}
    assert summary["accuracy"]["own"] == 1.0 and summary["accuracy"]["none"] == summary["accuracy"]["filler"] == 0.0
    assert summary["gap"] == 1.0
    assert records[0]["own"] == {"answer": "14", "agree": True, "score": 1.0}
    assert records[0]["filler"]["answer"] is None


def test_room_to_compute_shows_as_filler_above_none(tok):
    """An answerer that is right whenever it is given room (many tokens after the prompt), whatever they say:
    filler = own > none, the pattern of Pfau et al. (compute, not content)."""
    answers = {fruit: a for fruit, (_, a) in FRUITS.items()}

    def roomy(contexts):
        out = []
        for c in contexts:
            text = tok.decode(c)
            fruit = next(f for f in answers if f in text)
            shown = text.split(f"Count the {fruit}.\n", 1)[1].rsplit("Answer:", 1)[0]
            out.append(f" {answers[fruit]}" if len(shown) > 20 else " 0")
        return out

    summary, _ = filler_necessity(ToyTask(), toy_responses(tok), tok, per_context(roomy))
    assert summary["agreement"] == {"own": 1.0, "none": 0.0, "filler": 1.0} and summary["gap"] == 0.0


def test_filler_has_the_reasoning_length_and_the_contexts(tok):
    seen = []

    def recording(contexts):
        seen.extend(tok.decode(c) for c in contexts)
        return [" 1"] * len(contexts)

    responses = toy_responses(tok, with_unanswered=False)[:1]
    filler_necessity(ToyTask(), responses, tok, per_context(recording))
    reasoning = FRUITS["apples"][0].split("\nAnswer:")[0]
    padded = tok.decode(filler_ids(tok, len(reasoning)))
    assert len(filler_ids(tok, len(reasoning))) == len(reasoning) and re.fullmatch(r"( \.\.\.)*( \.{0,3})?", padded)
    assert seen == [
        "Count the apples.\nAnswer:",
        f"Count the apples.\n{reasoning}\nAnswer:",
        f"Count the apples.\n{padded}\nAnswer:",
    ]
    assert padded.startswith(FILLER)
