"""Answer decodability: probes on planted features, chance on shuffled labels, and a tiny model whose
answer sits in the prompt or is copied from the reasoning."""

from __future__ import annotations

import random
import re

import pytest
import torch

from tests.measures.test_reliance import ToyTask
from tests.tiny import tiny_config, tiny_tokenizer
from thinkaloud.config import ExitConfig
from thinkaloud.data.prompts import prompt_ids
from thinkaloud.data.task import Item
from thinkaloud.measures.loadbearing.decodability import (
    FRACTIONS,
    answer_decodability,
    answer_labels,
    positions,
    probe_tables,
    two_folds,
)
from thinkaloud.measures.loadbearing.forced import split_reasoning
from thinkaloud.measures.responses import Response
from thinkaloud.model.early_exit import EarlyExitModel

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = ("red", "blue", "green")


class ColourTask(ToyTask):
    """The word after the last "Answer:"."""

    def locate_answer(self, completion):
        found = list(re.finditer(r"Answer:\s*(\w+)", completion))
        return None if not found else (found[-1].start(), found[-1].group(1))


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def planted(n: int, informative: list[bool], classes: int = 3, dim: int = 16, seed: int = 0):
    """States (len(informative), n, dim): the label one-hot (× 3) plus noise where informative, noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    states = torch.randn(len(informative), n, dim, generator=g)
    for i, keep in enumerate(informative):
        if keep:
            states[i, :, :classes] += 3 * torch.nn.functional.one_hot(labels, classes)
    return states, [COLOURS[k] for k in labels.tolist()]


def test_probes_find_a_planted_answer_and_shuffled_labels_give_chance():
    states, labels = planted(60, [True, False])
    tables = probe_tables(states, labels, shuffles=8)
    assert tables["accuracy"][0] >= 0.9  # planted: decodable
    assert tables["accuracy"][1] <= 0.6  # noise: near 1/3
    for chance in tables["chance"]:  # shuffled training labels: near 1/3 even where the answer is planted
        assert 0.15 <= chance <= 0.5
    assert tables["majority"] == pytest.approx(1 / 3, abs=0.1)
    # the tables keep the leading shape of the states
    grid = probe_tables(states.reshape(2, 1, 60, 16), labels, shuffles=1)
    assert len(grid["accuracy"]) == 2 and len(grid["accuracy"][0]) == 1


def test_folds_put_every_repeated_label_on_both_sides():
    assert two_folds(list("aabbbcacd")) == [0, 1, 1, 0, 1, 0, 0, 1, 1]
    parity = [("box", "tin", "jar", "bag")[i % 4] for i in range(16)]  # alternating folds would split by label
    fold = two_folds(parity)
    for label in set(parity):
        assert {f for f, x in zip(fold, parity) if x == label} == {0, 1}
    assert sum(fold) == 8
    states = 0.1 * torch.randn(1, 16, 8, generator=torch.Generator().manual_seed(0))
    states[0, :, :4] += 3 * torch.nn.functional.one_hot(torch.arange(16) % 4, 4)
    assert probe_tables(states, parity, shuffles=2)["accuracy"][0] >= 0.9  # split by parity, it would be 0


def test_labels_are_answer_classes_or_first_tokens(tok):
    def reasoned(answers):
        rs = [
            Response(prompt_ids(tok, "Q\n"), tok(f"r\nAnswer: {a}", add_special_tokens=False)["input_ids"])
            for a in answers
        ]
        return [s for s in split_reasoning(ColourTask(), rs, tok) if s is not None]

    labels, kind = answer_labels(ColourTask(), reasoned(["Red", "blue", "red"]), tok)
    assert (labels, kind) == (["red", "blue", "red"], "answer")  # same_answer folds case
    labels, kind = answer_labels(ToyTask(), reasoned(["42", "17", "40"]), tok)
    assert (labels, kind) == (["4", "1", "4"], "first_token")  # numbers: the first non-blank token
    assert positions(5, 10) == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14] and len(FRACTIONS) == 11


@pytest.fixture(scope="module")
def tiny_model(tok):
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.vocab_size, config.max_position_embeddings = len(tok), 1024
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    return EarlyExitModel.from_base(base, ExitConfig(exit_layers=[2, 4])).eval()


def colour_responses(tok, where: str, n: int = 30) -> list[Response]:
    """``where="prompt"``: the prompt names the colour and the reasoning is noise; ``"reasoning"``: the prompt
    is noise and the reasoning ends with the colour (copied into the answer)."""
    rng = random.Random(0)
    noise = lambda k: "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(k))
    out = []
    for i in range(n):
        colour = COLOURS[i % 3]
        if where == "prompt":
            prompt, reasoning = f"Colour {colour}.\n", noise(24)
        else:
            prompt, reasoning = f"Colour {noise(8)}.\n", f"{noise(16)} so {colour}"
        ids = tok(f"{reasoning}\nAnswer: {colour}", add_special_tokens=False)["input_ids"]
        out.append(Response(prompt_ids(tok, prompt), ids, item=Item(str(i), prompt, colour)))
    return out


def test_answer_fixed_in_the_prompt_is_decodable_at_the_prompts_end(tiny_model, tok):
    summary, records = answer_decodability(tiny_model, ColourTask(), colour_responses(tok, "prompt"), tok)
    assert summary["label"] == "answer" and summary["classes"] == {"blue": 10, "green": 10, "red": 10}
    assert summary["layers"] == [1, 2, 3, 4, 5, 6] and len(summary["accuracy"]) == 6
    assert summary["best"][0] == 1.0  # f = 0: before any reasoning
    assert summary["best_chance"][0] < 0.8 and 0.15 < summary["chance_mean"] < 0.55
    assert [r["fold"] for r in records[:4]] == [0, 1, 0, 1]


def test_answer_copied_from_the_reasoning_is_decodable_late_only(tiny_model, tok):
    summary, _ = answer_decodability(tiny_model, ColourTask(), colour_responses(tok, "reasoning"), tok)
    assert summary["best"][-1] >= 0.9  # f = 1: the colour has been written
    assert summary["best"][0] <= summary["best_chance"][0] + 0.2  # f = 0: no better than shuffled labels
    assert summary["best"][0] < 0.7


def test_too_few_answers_or_one_label_raise(tiny_model, tok):
    with pytest.raises(ValueError, match="at least 4"):
        answer_decodability(tiny_model, ColourTask(), colour_responses(tok, "prompt", n=3), tok)
    same = [r for i, r in enumerate(colour_responses(tok, "prompt", n=12)) if i % 3 == 0]
    with pytest.raises(ValueError, match="same label"):
        answer_decodability(tiny_model, ColourTask(), same, tok)
    singletons = [
        Response(prompt_ids(tok, "Colour?\n"), tok(f"x\nAnswer: {c}", add_special_tokens=False)["input_ids"])
        for c in (*COLOURS, "grey")
    ]
    with pytest.raises(ValueError, match="no label is given twice"):
        answer_decodability(tiny_model, ColourTask(), singletons, tok)
