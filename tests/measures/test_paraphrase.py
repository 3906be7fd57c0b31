"""The deterministic paraphraser (form changes, values never) and the agreement after it."""

from __future__ import annotations

import random
import re
from decimal import Decimal

import pytest

from tests.measures.test_reliance import ToyTask, copying_answerer, toy_responses
from tests.tiny import tiny_tokenizer
from thinkaloud.data import tom
from thinkaloud.measures.loadbearing.paraphrase import NUMBER_WORDS, SYNONYMS, paraphrase, paraphrase_agreement
from thinkaloud.measures.reliance import per_context

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "So Sally thinks the ball is in the box!  Then she moved it;  because three plus 1,250 = 12500...",
    "First 3+4=7. Then 7 * 2 = 14; so there are 14 apples “in total”.",
    "It costs $2.50, or 1,000.50 with tax, or 3.0 - 0.5 = 2.5 per item  \n\n\n\nDone!",
    "Twelve eggs and twenty-one hens: 12 + 21 = 33. The story means 100,000 or 250000.",
]


def values(text: str) -> list[Decimal]:
    """Every number a reader sees in ``text``: digits (thousands separators read) and the number words."""
    found = re.finditer(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\b(" + "|".join(NUMBER_WORDS) + r")\b", text, re.I)
    return [
        Decimal(NUMBER_WORDS.index(m.group(1).lower())) if m.group(1) else Decimal(m.group(0).replace(",", ""))
        for m in found
    ]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_paraphrase_changes_form_never_a_numbers_value():
    for text in TEXTS:
        new = paraphrase(text)
        assert new != text
        assert values(new) == values(text), (text, new)
    assert paraphrase(TEXTS[0]) == (
        "Thus Sally believes the ball is in the box. Next she transferred it, since 3 plus 1250 = 12,500."
    )
    assert paraphrase(TEXTS[1]).startswith("First 3 + 4 = 7. Next 7 * 2 = 14, thus there are 14")
    assert "2.5," in paraphrase(TEXTS[2]) and "3 - 0.5" in paraphrase(TEXTS[2]) and "\n\n\n" not in paraphrase(TEXTS[2])


def test_paraphrase_keeps_every_name_object_and_container_of_tom_stories():
    for i in range(20):
        story = tom.generate_story(tom.TomConfig(), random.Random(i)).text()
        new = paraphrase(story)
        for word in (*tom.NAMES, *tom.OBJECTS, *tom.CONTAINERS, *tom.ROOMS):
            assert story.count(word) == new.count(word), word
        assert values(new) == values(story)
    assert not set(SYNONYMS) & {w.lower() for w in (*tom.NAMES, *tom.CONTAINERS, *tom.OBJECTS)}


def test_answer_that_reads_the_numbers_keeps_agreeing(tok):
    summary, records = paraphrase_agreement(ToyTask(), toy_responses(tok), tok, copying_answerer(tok))
    assert summary["agreement_original"] == summary["agreement_paraphrased"] == 1.0 and summary["drop"] == 0.0
    assert (
        summary["consistency"] == 1.0 and summary["n"] == 3 and summary["n_changed"] == 2
    )  # "Start with 5. Add 6…" has nothing to reword
    assert records[0]["paraphrase"].startswith("First 3 + 4 = 7. Next 7 * 2 = 14. Thus")
    assert records[-1]["included"] is False and records[-1]["original"] is None


def test_answer_that_rides_on_the_wording_drops(tok):
    """A stand-in with a hidden code: it answers right only when the reasoning says "So" (a steganographic
    trigger that means nothing to a reader). The paraphrase removes it, the answer goes."""

    def coded(contexts):
        out = []
        for c in contexts:
            shown = tok.decode(c).rsplit("Answer:", 1)[0]
            numbers = re.findall(r"\d+", shown)
            out.append(f" {numbers[-1]}" if " So " in shown and numbers else " 0")
        return out

    summary, records = paraphrase_agreement(ToyTask(), toy_responses(tok), tok, per_context(coded))
    assert summary["agreement_original"] == pytest.approx(1 / 3) and summary["agreement_paraphrased"] == 0.0
    assert summary["drop"] == pytest.approx(1 / 3) and summary["consistency"] == pytest.approx(2 / 3)
    assert records[0]["original"]["agree"] and not records[0]["paraphrased"]["agree"]
