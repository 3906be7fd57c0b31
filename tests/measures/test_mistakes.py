"""Adding mistakes: the edits, the answers they imply, and follow rates of stand-in continuers."""

from __future__ import annotations

import re

import pytest

from tests.measures.test_reliance import ToyTask
from tests.tiny import tiny_tokenizer
from thinkaloud.data.prompts import prompt_ids
from thinkaloud.data.task import Item
from thinkaloud.data.tom_task import TomTask
from thinkaloud.measures.loadbearing.mistakes import container_edit, mistakes_follow, number_edit
from thinkaloud.measures.reliance import per_context
from thinkaloud.measures.responses import Response

pytestmark = pytest.mark.usefixtures("one_thread")

SUMS = {  # question → (response, answer); simple sums, so every edit implies an answer
    "Add 3, 4 and 5.": ("3 + 4 = 7. Then 7 + 5 = 12.\nAnswer: 12", "12"),
    "Take 3 from 10.": ("We take 3 away: 10 - 3\nAnswer: 7", "7"),
    "Add 8 and 9.": ("8 + 9 = 17, so 17.\nAnswer: 17", "17"),
}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def responses(tok, table, item=lambda q, a: Item(q, q, a)):
    return [
        Response(prompt_ids(tok, q + "\n"), tok(text, add_special_tokens=False)["input_ids"], item=item(q, a))
        for q, (text, a) in table.items()
    ]


def shown(tok, context):
    """The reasoning a continuer was shown (the context after the question line)."""
    return tok.decode(context).split("\n", 1)[1]


def reasoning_continuer(tok):
    """Finishes the reasoning it is shown: evaluates a trailing sum, else repeats the last number."""

    def go(contexts):
        out = []
        for c in contexts:
            text = shown(tok, c)
            tail = re.search(r"(\d+(?:\s*[-+]\s*\d+)+)\s*$", text)
            if tail:
                value = eval(tail.group(1))  # noqa: S307 (a sum of digits built by the test)
                out.append(f" = {value}\nAnswer: {value}")
            else:
                out.append(f".\nAnswer: {re.findall(r'[0-9]+', text)[-1]}")
        return out

    return per_context(go)


def prompt_continuer(tok):
    """Ignores the reasoning: answers what the question asks, computed from the question."""

    def go(contexts):
        questions = [tok.decode(c).split("\n", 1)[0].rsplit("\n", 1)[-1] for c in contexts]
        return [f"\nAnswer: {next(a for q, (_, a) in SUMS.items() if q in text)}" for text in questions]

    return per_context(go)


def test_edits_the_last_number_and_implies_the_shifted_sum():
    assert number_edit("3 + 4 = 7. Then 7 + 5 = 12.", "12").implied == "13"
    subtracted = number_edit("We take 3 away: 10 - 3", "7")
    assert (subtracted.old, subtracted.new, subtracted.implied) == ("3", "4", "6")
    assert number_edit("Step 1: 2 + 2 = 4\nStep 2", "4").old == "4"  # a step number is no operand
    assert number_edit("1. add 2 and 5\n2. done", "7").old == "5"  # nor is a list number
    assert number_edit("3 * 4 = 12", "12").implied is None  # not a sum: changed only
    assert number_edit("half of 8 is 4", "4").implied is None
    assert number_edit("2.50 + 1 = 3.50", "3.5").new == "4.50" and number_edit("no digits", "3") is None


def test_edits_the_answers_container_and_implies_the_new_one():
    edit = container_edit("Mia put the ball in the box. Noah moved it to the Tin.", "tin", ["box", "tin", "jar"])
    assert (edit.old, edit.new, edit.implied) == ("Tin", "Jar", "jar")
    other = container_edit("Mia put the ball in the box.", "tin", ["box", "tin", "jar"])  # answer not named
    assert (other.old, other.new, other.implied) == ("box", "jar", None)  # never the answer's own container
    assert container_edit("No containers here.", "tin", ["box", "tin"]) is None


def test_answer_that_reads_the_reasoning_follows_every_mistake(tok):
    summary, records = mistakes_follow(ToyTask(), responses(tok, SUMS), tok, reasoning_continuer(tok))
    assert summary["follow_rate"] == 1.0 and summary["changed_rate"] == 1.0 and summary["no_answer_rate"] == 0.0
    assert summary["n"] == summary["n_implied"] == 3 and summary["edits"] == ["number"]
    assert [r["answer"] for r in records] == ["13", "6", "18"]
    assert records[1]["edit"] == {"kind": "number", "at": 21, "old": "3", "new": "4", "implied": "6"}


def test_answer_fixed_by_the_prompt_ignores_the_mistakes(tok):
    summary, records = mistakes_follow(ToyTask(), responses(tok, SUMS), tok, prompt_continuer(tok))
    assert summary["follow_rate"] == 0.0 and summary["changed_rate"] == 0.0
    assert all(r["followed"] is False and r["changed"] is False for r in records)


def test_continuation_starts_right_after_the_edit(tok):
    seen = []

    def recording(contexts):
        seen.extend(shown(tok, c) for c in contexts)
        return ["\nAnswer: 1"] * len(contexts)

    unanswered = Response(prompt_ids(tok, "Add.\n"), tok("no answer here", add_special_tokens=False)["input_ids"])
    summary, records = mistakes_follow(ToyTask(), responses(tok, SUMS) + [unanswered], tok, per_context(recording))
    assert seen == ["3 + 4 = 7. Then 7 + 5 = 13", "We take 3 away: 10 - 4", "8 + 9 = 17, so 18"]
    assert summary["n_skipped"] == 1 and records[-1]["reason"] == "no answer" and records[-1]["edit"] is None


def test_tom_story_follow_rate(tok):
    containers = ["box", "tin", "jar"]
    story = {"Where is the ball?": ("Mia put the ball in the box. Noah moved the ball to the tin.\nAnswer: tin", "tin")}
    item = lambda q, a: Item(q, q, a, meta={"containers": containers})

    def copying(contexts):  # answers with the last container it read
        return [f"\nAnswer: {re.findall(r'box|tin|jar', shown(tok, c))[-1]}" for c in contexts]

    summary, records = mistakes_follow(TomTask(), responses(tok, story, item), tok, per_context(copying))
    assert summary["follow_rate"] == 1.0 and summary["edits"] == ["container"]
    assert records[0]["edit"]["new"] == "jar" and records[0]["answer"] == "jar"
