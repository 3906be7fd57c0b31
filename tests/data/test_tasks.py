"""Tasks: prompts, answer extraction, scoring, GSM8K loading, reasoning-gym wrapping, the factory."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from thinkaloud.data import tasks
from thinkaloud.data.tasks import (DEFAULT_TASK, KNOWN_TASKS, Gsm8kTask, Item, ReasoningGymTask, TomTask,
                                   extract_final_answer, extract_number, get_task, normalize_number, rg_seed)
from thinkaloud.data.tom import TomConfig

GSM8K_TRAIN = Path(__file__).parents[2] / ".." / "shared" / "data" / "gsm8k" / "train.jsonl"
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_SYSTEM_TEMPLATE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                      "{% endif %}" + TEMPLATE)


def tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    """A real HF tokenizer built in code (one-word vocabulary): only its chat template matters here."""
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = template
    return tok


ITEM = Item(id="x/0", question="What is 2 + 2?", answer="4", meta={})


# ------------------------------------------------------------- prompts


def test_prompt_with_chat_template_and_system_prompt():
    task = get_task("rg:chain_sum", system_prompt="Be brief.")
    assert task.prompt(ITEM, tokenizer(TEMPLATE)) == (
        "<|system|>Be brief.\n<|user|>What is 2 + 2?\n<|assistant|>")


def test_prompt_without_system_prompt():
    task = get_task("rg:chain_sum", system_prompt="")
    assert task.prompt(ITEM, tokenizer(TEMPLATE)) == "<|user|>What is 2 + 2?\n<|assistant|>"


def test_prompt_folds_system_prompt_into_user_turn_when_template_rejects_it():
    task = get_task("rg:chain_sum", system_prompt="Be brief.")
    assert task.prompt(ITEM, tokenizer(NO_SYSTEM_TEMPLATE)) == (
        "<|user|>Be brief.\n\nWhat is 2 + 2?\n<|assistant|>")


def test_prompt_without_chat_template_is_plain_text():
    task = get_task("rg:chain_sum", system_prompt="Be brief.")
    assert task.prompt(ITEM, tokenizer(None)) == "Be brief.\n\nQuestion: What is 2 + 2?\nAnswer:"
    assert get_task("tom", system_prompt="").prompt(ITEM, tokenizer(None)) == "Question: What is 2 + 2?\nAnswer:"


def test_default_system_prompts_ask_for_what_the_scorers_read():
    assert "####" in get_task("gsm8k", path=__file__).system_prompt
    assert "Answer: <answer>" in get_task("rg:chain_sum").system_prompt
    assert "Answer: <container>" in get_task("tom").system_prompt


# ------------------------------------------------------------- extraction


@pytest.mark.parametrize("completion, expected", [
    ("She sells 48 + 24 = 72 clips.\n#### 72", "72"),
    ("#### $1,200.00", "1200"),
    ("#### 72\nThat took 3 steps.", "72"),
    ("Answer: 5 apples\n#### 6", "6"),
    ("So 3 then 5.\n#### 7.", "7"),
    ("We get \\boxed{42} since 6*7 = 42 and 10 more", "42"),
    ("\\boxed{\\$1,000}", "1000"),
    ("The answer is 18 dollars, since 3 * 6 = 18 and 2 more", "18"),
    ("Answer: -5\nCheck: 2 - 7 = -5 and 3", "-5"),
    ("First 12, then 15, finally 19.5", "19.5"),
    ("It costs 3.50 dollars", "3.5"),
    ("I am not sure.", None),
    ("#### 12\n\nQuestion: Tom has 5 apples. How many?\nAnswer: 5", "12"),  # base model starting a new example
])
def test_extract_number(completion, expected):
    assert extract_number(completion) == expected


@pytest.mark.parametrize("raw, expected", [("$1,000", "1000"), ("72.", "72"), ("72.00", "72"), ("-3.50", "-3.5"),
                                           ("+4", "4"), ("0.0", "0"), ("100", "100"), ("x", "x")])
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize("completion, expected", [
    ("Let me add.\nAnswer: 17", "17"),
    ("Answer: maybe 3\nActually recheck.\nFinal answer: **17**", "17"),
    ("The answer is $\\boxed{17}$.", "17"),  # boxed comes after "answer is"
    ("so the answer is 17.", "17."),
    ("Answer:\n1 2\n3 4\n\nThat is the grid.", "1 2\n3 4"),
    ("<answer>yes</answer> and later Answer: no", "yes"),
    ("thinking...\n17", "17"),
    ("   \n", None),
    ("Question: restated.\nAnswer: 4\n\nQuestion: What is 3 + 3?\nAnswer: 6", "4"),
])
def test_extract_final_answer(completion, expected):
    assert extract_final_answer(completion) == expected


# ------------------------------------------------------------- gsm8k


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"} for i in range(600)]


@pytest.mark.skipif(not GSM8K_TRAIN.is_file(), reason="shared GSM8K file not present")
def test_gsm8k_real_file():
    task = get_task(f"gsm8k:{GSM8K_TRAIN}")
    items = task.items(20, seed=0)
    assert items == task.items(20, seed=0)
    assert [it.id for it in items] != [it.id for it in task.items(20, seed=1)]
    assert len({it.id for it in items}) == 20
    lines = GSM8K_TRAIN.read_text().splitlines()
    for it in items:
        row = json.loads(lines[it.meta["index"]])
        assert it.question == row["question"]
        assert it.answer == row["answer"].split("####")[-1].strip().replace(",", "")
        assert task.score(it, it.meta["solution"]) == 1.0  # the reference solution scores itself
        assert task.score(it, f"#### {int(it.answer) + 1}") == 0.0
    natalia = next(it for it in task.items(len(lines)) if it.id == "gsm8k/train/0")
    assert natalia.answer == "72"


def test_gsm8k_items_are_a_seeded_sample(tmp_path):
    task = Gsm8kTask(path=write_jsonl(tmp_path / "train.jsonl", ROWS))
    items = task.items(5, seed=3)
    assert items == task.items(5, seed=3)
    assert task.items(3, seed=3) == items[:3]
    assert items[0].answer == str(2 * items[0].meta["index"])  # "1,000" normalised to "1000"
    assert task.score(items[0], f"The total is {items[0].answer}.") == 1.0
    assert task.score(items[0], "I don't know") == 0.0
    with pytest.raises(ValueError, match="asked for 601 GSM8K items but .* has 600"):
        task.items(601)


def test_gsm8k_directory_reads_the_split_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "test.jsonl", ROWS[10:12])
    task = get_task("gsm8k", path=str(tmp_path))
    assert len(task.items(3, split="train")) == 3
    assert {it.answer for it in task.items(2, split="test")} == {"20", "22"}
    with pytest.raises(FileNotFoundError, match="validation.jsonl"):
        task.items(1, split="validation")


def test_gsm8k_single_file_for_another_split_warns(tmp_path):
    task = Gsm8kTask(path=write_jsonl(tmp_path / "train.jsonl", ROWS[:3]))
    with pytest.warns(UserWarning, match="not test.jsonl"):
        task.items(2, split="test")


@pytest.mark.parametrize("bad_line, message", [
    ("{not json", "invalid JSON"),
    (json.dumps({"question": "q"}), "'question' and 'answer'"),
    (json.dumps({"question": "q", "answer": 42}), "'question' and 'answer'"),
    (json.dumps({"question": "q", "answer": "42"}), "####"),
])
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS[:2] + [bad_line])
    with pytest.raises(ValueError, match=rf"train\.jsonl:3: .*{message}"):
        Gsm8kTask(path=path).items(1)


def test_gsm8k_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv(tasks.GSM8K_ENV, str(write_jsonl(tmp_path / "train.jsonl", ROWS[:4])))
    assert len(get_task("gsm8k").items(4)) == 4


def test_gsm8k_without_a_source_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv(tasks.GSM8K_ENV, raising=False)
    monkeypatch.setattr(tasks, "_hub_gsm8k", lambda split: None)  # never touch the network in tests
    with pytest.raises(FileNotFoundError, match="gsm8k:/path/to/train.jsonl") as err:
        get_task("gsm8k").items(1)
    assert tasks.GSM8K_ENV in str(err.value) and "../shared/data/gsm8k/train.jsonl" in str(err.value)


# ------------------------------------------------------------- reasoning-gym


def test_default_task_is_easy_chain_sum():
    task = get_task(DEFAULT_TASK)
    assert isinstance(task, ReasoningGymTask) and task.name == "rg:chain_sum"
    items = task.items(50, seed=0)
    for it in items:
        terms = it.meta["entry"]["metadata"]["expression"].split()[::2]
        assert 2 <= len(terms) <= 3 and all(1 <= len(t) <= 2 for t in terms)
        assert str(eval(it.meta["entry"]["metadata"]["expression"])) == it.answer
    assert items[0].id == "rg:chain_sum/train/seed0/0"


def test_rg_kwargs_override_the_easy_defaults():
    task = get_task("rg:chain_sum", rg_kwargs={"min_terms": 4, "max_terms": 4})
    assert all(it.meta["entry"]["metadata"]["num_terms"] == 4 for it in task.items(10))
    assert task.rg_kwargs["max_digits"] == 2


def test_rg_scoring_uses_the_dataset_scorer():
    task = get_task("rg:chain_sum")
    item = task.items(1, seed=0)[0]
    assert task.score(item, f"Adding up step by step.\nAnswer: {item.answer}") == 1.0
    assert task.score(item, f"<answer>{item.answer}</answer>") == 1.0
    assert task.score(item, f"Answer: {item.answer}.") == 1.0  # trailing period is optional
    assert task.score(item, f"Answer: {int(item.answer) + 1}") == 0.0
    assert task.score(item, "") == 0.0


def test_rg_other_dataset_round_trips():
    task = get_task("rg:spell_backward")
    for item in task.items(5, seed=1):
        assert task.score(item, f"Reversing letters.\nAnswer: {item.answer}") == 1.0


def test_rg_items_deterministic_and_disjoint_across_seeds_and_splits():
    task = get_task("rg:chain_sum", rg_kwargs={"max_terms": 3, "min_digits": 2, "max_digits": 2})
    a = [it.question for it in task.items(30, seed=0)]
    assert a == [it.question for it in task.items(30, seed=0)]
    b = [it.question for it in task.items(30, seed=1)]
    test = [it.question for it in task.items(30, seed=0, split="test")]
    assert a[1:] != b[:-1]  # reasoning-gym's own seed s+1 would be seed s shifted by one item
    assert len(set(a) & set(b)) < 3 and len(set(a) & set(test)) < 3
    assert len({rg_seed(s, sp) for s in range(3) for sp in tasks.SPLITS}) == 9
    with pytest.raises(ValueError, match="seeds must be in"):
        task.items(1, seed=10**6)
    with pytest.raises(ValueError, match="unknown split"):
        task.items(1, split="dev")


def test_rg_errors():
    with pytest.raises(ValueError, match="Did you mean chain_sum") as err:
        get_task("rg:chainsum")
    assert "basic_arithmetic" in str(err.value)  # lists the available datasets
    with pytest.raises(ValueError, match="unknown settings \\['max_term'\\].*max_terms"):
        get_task("rg:chain_sum", rg_kwargs={"max_term": 5})
    with pytest.raises(ValueError, match="invalid settings"):
        get_task("rg:chain_sum", rg_kwargs={"min_terms": 5, "max_terms": 2})
    with pytest.raises(ValueError, match="does not come from"):
        get_task("rg:chain_sum").score(get_task("rg:spell_backward").items(1)[0], "Answer: x")


# ------------------------------------------------------------- tom and the factory


def test_tom_task_items_and_scoring():
    task = get_task("tom", tom_config=TomConfig(n_agents=3, n_moves=3, n_unwitnessed=2))
    items = task.items(10, seed=5)
    assert items == task.items(10, seed=5)
    assert items != task.items(10, seed=6)
    assert items != task.items(10, seed=5, split="test")
    for it in items:
        others = [c for c in it.meta["containers"] if c != it.answer]
        assert it.question.endswith("?") and it.answer in it.meta["containers"]
        assert task.score(it, f"They saw it move.\nAnswer: the {it.answer.title()}.") == 1.0
        assert task.score(it, f"Answer: in the {others[0]}") == 0.0
        assert task.score(it, f"Answer: {it.answer} or {others[0]}") == 0.0
    assert task.extract_answer("So...\nAnswer: **In the Basket.**") == "basket"


def test_get_task_specs_and_errors(tmp_path):
    assert isinstance(get_task("tom"), TomTask)
    path = str(write_jsonl(tmp_path / "train.jsonl", ROWS[:2]))
    assert get_task(f"gsm8k:{path}").path == Path(path)
    assert get_task("gsm8k", system_prompt="S").system_prompt == "S"
    for spec in ("gsm9k", "rg:", "tom:hard", ""):
        with pytest.raises(ValueError, match="unknown task") as err:
            get_task(spec)
        assert all(k in str(err.value) for k in KNOWN_TASKS)
    with pytest.raises(ValueError, match="do not apply"):
        get_task("tom", rg_kwargs={"max_terms": 3})
    with pytest.raises(ValueError, match="do not apply"):
        get_task("rg:chain_sum", path=path)
    with pytest.raises(ValueError, match="give one"):
        get_task(f"gsm8k:{path}", path="/elsewhere.jsonl")


def test_scores_are_in_unit_interval():
    rng = random.Random(0)
    junk = ["", "Answer:", "\\boxed{", "#### ", "Answer: " + "9" * 50, "<answer></answer>"]
    for task in (get_task("rg:chain_sum"), get_task("tom")):
        for item in task.items(5):
            for completion in junk + [rng.choice(junk) + item.answer]:
                assert 0.0 <= task.score(item, completion) <= 1.0
