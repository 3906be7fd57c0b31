"""Early answering: stand-in answerers with known reliance on their reasoning, and a real tiny model."""

from __future__ import annotations

import math
import re
from itertools import pairwise

import pytest
import torch

from tests.tiny import tiny_config, tiny_tokenizer
from thinkaloud.config import ExitConfig
from thinkaloud.data.prompts import prompt_ids
from thinkaloud.data.task import Item, Task
from thinkaloud.measures.reliance import (
    FRACTIONS,
    Probe,
    area_over_curve,
    early_answering,
    first_line,
    first_line_done,
    model_answerer,
    per_context,
    reasoning_tokens,
)
from thinkaloud.measures.responses import Response
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.report.measure_plots import plot_agreement_curves

pytestmark = pytest.mark.usefixtures("one_thread")


class ToyTask(Task):
    """The first number after the last "Answer:"; its own answer_cue and split_answer, so that these
    tests do not depend on the real tasks' extraction rules."""

    name, system_prompt, answer_cue = "toy", None, "Answer:"

    def items(self, n, seed=0, split="train"):
        raise NotImplementedError("the tests build their items")

    def locate_answer(self, completion):
        at = completion.rfind(self.answer_cue)
        number = re.search(r"\d+", completion[at:]) if at >= 0 else None
        return None if number is None else (at, number.group())

    def extract_answer(self, completion):
        found = self.locate_answer(completion)
        return None if found is None else found[1]

    def split_answer(self, completion):
        found = self.locate_answer(completion)
        return None if found is None else (completion[: found[0]].rstrip(), found[1])

    def score(self, item, completion):
        return float(self.extract_answer(completion) == item.answer)


FRUITS = {
    "apples": ("First 3 + 4 = 7. Then 7 * 2 = 14. So there are 14.\nAnswer: 14", "14"),
    "pears": ("Start with 5. Add 6 to get 11. Take 2 away: 9.\nAnswer: 9", "9"),
    "plums": ("Twice 8 is 16, plus 4 is 20, minus 3 gives 17.\nAnswer: 17", "17"),
}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def toy_responses(tok, with_unanswered: bool = True) -> list[Response]:
    out = []
    for fruit, (text, answer) in FRUITS.items():
        ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]  # stop token included
        out.append(Response(prompt_ids(tok, f"Count the {fruit}.\n"), ids, item=Item(fruit, fruit, answer)))
    if with_unanswered:  # no final answer: skipped
        unsure = tok("I am not sure", add_special_tokens=False)["input_ids"]
        out.append(Response(prompt_ids(tok, "Count the figs.\n"), unsure))
    return out


def fixed_answerer(tok):
    """Answers from the question alone, whatever reasoning it is shown."""

    def answer(contexts):
        texts = [tok.decode(c) for c in contexts]
        return [" " + next(a for fruit, (_, a) in FRUITS.items() if fruit in t) + "\nmore text" for t in texts]

    return per_context(answer)


def copying_answerer(tok):
    """Answers with the last number of the (cut) reasoning it is shown; nothing when there is none."""

    def answer(contexts):
        out = []
        for c in contexts:
            shown = tok.decode(c).rsplit("Answer:", 1)[0]
            numbers = re.findall(r"\d+", shown)
            out.append(f" {numbers[-1]}" if numbers else " I cannot tell yet")
        return out

    return per_context(answer)


def test_answer_independent_of_reasoning_gives_flat_curve(tok):
    summary, records = early_answering(ToyTask(), toy_responses(tok), tok, fixed_answerer(tok))
    assert summary["agreement"] == [1.0] * len(FRACTIONS)
    assert summary["aoc"] == pytest.approx(0.0, abs=1e-12)
    assert summary["n"] == 3 and summary["n_skipped"] == 1
    assert summary["accuracy_f0"] == summary["accuracy_f1"] == summary["accuracy_full"] == 1.0
    assert summary["accuracy_gain"] == 0.0
    assert [r["included"] for r in records] == [True, True, True, False]
    assert records[-1]["answers"] is None


def test_answer_copied_from_reasoning_rises_to_full_agreement(tok):
    summary, records = early_answering(ToyTask(), toy_responses(tok), tok, copying_answerer(tok))
    agreement = summary["agreement"]
    assert agreement[0] == 0.0 and agreement[-1] == 1.0
    assert all(a <= b for a, b in pairwise(agreement))
    assert summary["aoc"] > 0.5
    assert summary["accuracy_f0"] == 0.0 and summary["accuracy_f1"] == 1.0 and summary["accuracy_gain"] == 1.0
    # the cut keeps whole reasoning tokens: at f = 1 the context holds the full reasoning, not the answer line
    apples = records[0]
    assert apples["reasoning_tokens"] == len(FRUITS["apples"][0].split("\nAnswer:")[0])
    assert apples["answers"][-1] == "14" and apples["agree"][-1]


def test_contexts_cut_reasoning_and_append_cue(tok):
    seen = []

    def recording(contexts):
        seen.extend(tok.decode(c) for c in contexts)
        return [" 1"] * len(contexts)

    responses = toy_responses(tok, with_unanswered=False)[:1]
    early_answering(ToyTask(), responses, tok, per_context(recording), fractions=(0, 0.5, 1))
    reasoning = FRUITS["apples"][0].split("\nAnswer:")[0]
    cut = round(0.5 * len(reasoning))
    assert seen == [
        "Count the apples.\nAnswer:",
        f"Count the apples.\n{reasoning[:cut]}\nAnswer:",
        f"Count the apples.\n{reasoning}\nAnswer:",
    ]


def test_area_and_fraction_checks(tok):
    assert area_over_curve([0, 0.5, 1], [0, 0.5, 1]) == pytest.approx(0.5)
    assert area_over_curve([0, 1], [1, 1]) == 0.0
    for bad in ([0.2, 1.0], [0.0, 0.5], [0.0, 0.6, 0.4, 1.0]):
        with pytest.raises(ValueError, match="fractions"):
            early_answering(ToyTask(), toy_responses(tok), tok, fixed_answerer(tok), fractions=bad)


def test_reasoning_tokens_is_the_prefix_inside_the_reasoning(tok):
    completion = "abc def\nAnswer: 3"
    ids = tok(completion, add_special_tokens=False)["input_ids"]
    assert reasoning_tokens(tok, ids, completion, "abc def") == 7
    assert reasoning_tokens(tok, ids, completion, "") == 0


@pytest.fixture(scope="module")
def tiny_model(tok):
    config = tiny_config("llama")
    config.vocab_size, config.max_position_embeddings = len(tok), 1024
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    base.generation_config.eos_token_id, base.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    model = EarlyExitModel.from_base(base, ExitConfig(exit_layers=[2, 4])).eval()
    with torch.no_grad():
        model.heads.bias.fill_(20.0)  # with offset 0 every token exits at layer 2
    return model


def test_real_model_batches_and_runs_without_exits_at_minus_inf(tiny_model, tok):
    responses = toy_responses(tok)
    ask = model_answerer(tiny_model, tok, offset=-math.inf, max_new_tokens=6, batch_size=4)
    summary, records = early_answering(ToyTask(), responses, tok, ask)
    assert len(records) == len(responses) and summary["n"] == 3
    assert len(summary["agreement"]) == len(FRACTIONS) and all(0 <= a <= 1 for a in summary["agreement"])
    assert 0 <= summary["aoc"] <= 1
    assert all(len(r["answers"]) == len(FRACTIONS) for r in records if r["included"])

    cue = tuple(tok("\nAnswer:", add_special_tokens=False)["input_ids"])
    probes = [  # cuts with and without a tail; three probes, 6 rows each, in batches of 4 rows: one probe each
        Probe(
            tuple(r.prompt_ids + r.response_ids),
            tuple((len(r.prompt_ids) + k, t) for k in (0, 5, 12) for t in ((), cue)),
        )
        for r in responses
    ]
    batched = ask(probes)
    assert model_answerer(tiny_model, tok, offset=-math.inf, max_new_tokens=6, batch_size=1)(probes) == batched
    assert model_answerer(tiny_model, tok, offset=-math.inf, max_new_tokens=6, batch_size=64)(probes) == batched
    for probe, answers in zip(probes, batched):  # the HF model's own greedy generation, one context at a time
        for context, answer in zip(probe.contexts(), answers):
            out = tiny_model.base.generate(torch.tensor([context]), max_new_tokens=6, do_sample=False)
            full = tok.decode(out[0, len(context) :].tolist(), skip_special_tokens=True)
            assert full.startswith(answer) and first_line(answer) == first_line(full)  # stopped after the line
    exiting = model_answerer(tiny_model, tok, offset=0.0, max_new_tokens=6, batch_size=4)(probes)
    assert exiting != batched  # the offset reaches generation: every token exits at layer 2


def test_equal_contexts_are_answered_once(tiny_model, tok):
    """A two-token reasoning cut at six fractions gives three distinct contexts: the prompt and reasoning
    are read once, three rows are generated, and each answer serves every fraction that shares it."""
    text = "7.\nAnswer: 7"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    response = Response(prompt_ids(tok, "Count.\n"), ids, item=Item("x", "x", "7"))
    rows = []
    generate = tiny_model.generate

    def spy(input_ids, *args, **kwargs):
        rows.append(input_ids.shape[0])
        return generate(input_ids, *args, **kwargs)

    tiny_model.generate = spy
    try:
        summary, (record,) = early_answering(
            ToyTask(), [response], tok, model_answerer(tiny_model, tok, offset=-math.inf)
        )
    finally:
        del tiny_model.generate
    assert record["reasoning_tokens"] == 2 and rows == [3]
    a = record["answers"]  # cuts k = round(f · 2): 0, 0, 1, 1, 2, 2 tokens
    assert a[0] == a[1] and a[2] == a[3] and a[4] == a[5]


def test_agreement_plot(tok):
    summary, _ = early_answering(ToyTask(), toy_responses(tok), tok, copying_answerer(tok))
    fig = plot_agreement_curves({"copying": summary, "empty": {"agreement": None, "fractions": None}})
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("fraction") and ax.get_ylabel().startswith("agreement")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"copying (AOC {summary['aoc']:.2f}, n=3)"]


def test_answers_stop_once_their_first_line_is_complete(tok):
    done = first_line_done(tok)
    texts = ["\n\n", " 12", " 12\n", "\n 7 apples\nmore", "x"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    tokens = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])  # (5, width)
    # only the newest token is looked at first: a row is done when it ends a non-empty line
    assert done(torch.arange(5), tokens).tolist() == [False, False, True, False, False]
    assert done(torch.arange(1), tokens[3:4, : len(rows[3]) - 4]).tolist() == [True]  # "\n 7 apples\n"


def test_agreement_is_the_tasks_own_notion_of_the_same_answer(tok):
    """For `tom` an answer is the container it names: "the ball is in the tin" and "tin" agree."""
    from thinkaloud.data.tasks import get_task

    task = get_task("tom")
    item = task.items(1, split="test")[0]
    other = next(c for c in item.meta["containers"] if c != item.answer)
    text = f"Mia saw the ball moved.\nAnswer: Mia thinks the ball is in the {item.answer}."
    response = Response(
        prompt_ids(tok, "Where is the ball?\n"), tok(text, add_special_tokens=False)["input_ids"], item=item
    )
    said = iter([f" The {item.answer}.", f" {other}", " I do not know", f" in the {item.answer}", item.answer, "x"])
    summary, (record,) = early_answering(task, [response], tok, per_context(lambda cs: [next(said) for _ in cs]))
    assert record["full_answer"] == f"mia thinks the ball is in the {item.answer}"
    assert record["agree"] == [True, False, False, True, True, False]
    assert summary["accuracy_f0"] == 1.0 and summary["accuracy_f1"] == 0.0
