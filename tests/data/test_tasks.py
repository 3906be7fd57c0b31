"""Tasks: prompts, scoring, answer cues and split_answer, GSM8K loading, splits, reasoning-gym, the factory."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from thinkaloud.data import gsm8k
from thinkaloud.data.gsm8k import Gsm8kTask
from thinkaloud.data.rg import ReasoningGymTask, rg_seed
from thinkaloud.data.splits import SPLITS, question_key, split_of
from thinkaloud.data.task import Item
from thinkaloud.data.tasks import DEFAULT_TASK, KNOWN_TASKS, get_task
from thinkaloud.data.tom import TomConfig
from thinkaloud.data.tom_task import TomTask

# The real GSM8K train.jsonl: named by the environment, else the workspace copy beside the checkout (CI has it).
GSM8K_FILE = os.environ.get(gsm8k.GSM8K_ENV) or str(
    Path(__file__).resolve().parents[3] / "shared/data/gsm8k/train.jsonl"
)
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + TEMPLATE
)


def tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    """A real HF tokenizer built in code (one-word vocabulary): only its chat template matters here."""
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = template
    return tok


ITEM = Item(id="x/0", question="What is 2 + 2?", answer="4", meta={})


# ------------------------------------------------------------- prompts


def test_prompt_with_chat_template_and_system_prompt():
    task = get_task("rg:chain_sum", system_prompt="Be brief.")
    assert task.prompt(ITEM, tokenizer(TEMPLATE)) == ("<|system|>Be brief.\n<|user|>What is 2 + 2?\n<|assistant|>")


def test_prompt_without_system_prompt():
    task = get_task("rg:chain_sum", system_prompt="")
    assert task.prompt(ITEM, tokenizer(TEMPLATE)) == "<|user|>What is 2 + 2?\n<|assistant|>"


def test_prompt_folds_system_prompt_into_user_turn_when_template_rejects_it():
    task = get_task("rg:chain_sum", system_prompt="Be brief.")
    assert task.prompt(ITEM, tokenizer(NO_SYSTEM_TEMPLATE)) == ("<|user|>Be brief.\n\nWhat is 2 + 2?\n<|assistant|>")


def test_prompt_without_chat_template_is_plain_text():
    task = get_task("rg:chain_sum", system_prompt="Be brief.")
    assert task.prompt(ITEM, tokenizer(None)) == "Be brief.\n\nQuestion: What is 2 + 2?\nAnswer:"
    assert get_task("tom", system_prompt="").prompt(ITEM, tokenizer(None)) == "Question: What is 2 + 2?\nAnswer:"


def test_default_system_prompts_ask_for_what_the_strict_scorers_read():
    for spec, marker, example in [
        ("gsm8k", "'#### <number>'", "42"),
        ("rg:chain_sum", "'Answer: <answer>'", "42"),
        ("tom", "'Answer: <container>'", "basket"),
    ]:
        task = get_task(spec, path=__file__ if spec == "gsm8k" else None)
        assert marker in task.system_prompt and not task.lenient
        line = marker.strip("'").split("<")[0] + example  # the last line the prompt asks for
        assert task.extract_answer(f"Step by step: 40 + 2 = 42, in the basket.\n{line}") == example


# ------------------------------------------------------------- gsm8k


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"} for i in range(600)]


def in_split(rows: list[dict], split: str) -> list[dict]:
    return [r for r in rows if split_of(r["question"]) == split]


@pytest.mark.skipif(not Path(GSM8K_FILE).is_file(), reason=f"{gsm8k.GSM8K_ENV} names no GSM8K file")
def test_gsm8k_real_file():
    task = get_task(f"gsm8k:{GSM8K_FILE}:split")  # one file, split by question hash
    items = task.items(20, seed=0)
    assert items == task.items(20, seed=0)
    assert [it.id for it in items] != [it.id for it in task.items(20, seed=1)]
    assert len({it.id for it in items}) == 20
    lines = Path(GSM8K_FILE).read_text().splitlines()
    for it in items:
        row = json.loads(lines[it.meta["index"]])
        assert it.question == row["question"] and split_of(it.question) == "train"
        assert it.answer == row["answer"].split("####")[-1].strip().replace(",", "")
        assert task.score(it, it.meta["solution"]) == 1.0  # the reference solution scores itself
        assert task.score(it, f"#### {int(it.answer) + 1}") == 0.0
    test = task.items(100, seed=0, split="test")
    assert not {it.key for it in task.items(1000, seed=0)} & {it.key for it in test}
    whole = get_task(f"gsm8k:{GSM8K_FILE}")  # named without :split: every row, for any split
    assert whole.data_source("test") == {
        "file": GSM8K_FILE,
        "split_by_hash": False,
        "rows_in_file": len(lines),
        "rows_used": len(lines),
    }
    assert task.data_source("test")["rows_used"] < len(lines) // 5 and task.data_source("test")["split_by_hash"]


def test_gsm8k_single_file_is_split_by_question_hash_on_request(tmp_path):
    task = get_task(f"gsm8k:{write_jsonl(tmp_path / 'train.jsonl', ROWS)}:split")
    assert task.split_by_hash and Gsm8kTask(path=tmp_path / "train.jsonl", split_by_hash=True).split_by_hash
    sizes = {split: len(in_split(ROWS, split)) for split in SPLITS}
    assert sum(sizes.values()) == 600 and 400 < sizes["train"] < 560 and min(sizes.values()) > 30
    everything = {split: task.items(sizes[split], seed=0, split=split) for split in SPLITS}
    for split, items in everything.items():
        assert all(split_of(it.question) == split for it in items)
        assert all(it.id == f"gsm8k/{split}/{it.meta['index']}" for it in items)
    assert len({it.key for items in everything.values() for it in items}) == 600  # a partition of the file
    with pytest.raises(
        ValueError, match=f"asked for {sizes['test'] + 1} GSM8K items but the test part of .* has {sizes['test']}"
    ):
        task.items(sizes["test"] + 1, split="test")


def test_gsm8k_items_are_a_seeded_sample(tmp_path):
    task = Gsm8kTask(path=write_jsonl(tmp_path / "train.jsonl", ROWS))
    items = task.items(5, seed=3)
    assert items == task.items(5, seed=3) and items != task.items(5, seed=4)
    assert task.items(3, seed=3) == items[:3]
    assert items[0].answer == str(2 * items[0].meta["index"])  # "1,000" normalised to "1000"
    assert items[0].key == question_key(items[0].question) and re.fullmatch("[0-9a-f]{16}", items[0].key)
    assert task.score(items[0], f"So the answer is {items[0].answer}.") == 1.0
    assert task.score(items[0], f"The total is {items[0].answer}.") == 0.0  # no answer marker
    assert get_task(f"gsm8k:{task.path}", lenient=True).score(items[0], f"The total is {items[0].answer}.") == 1.0
    assert task.score(items[0], "I don't know") == 0.0


def test_gsm8k_train_and_test_from_one_file_are_disjoint_for_every_seed(tmp_path):
    task = get_task(f"gsm8k:{write_jsonl(tmp_path / 'gsm8k.jsonl', ROWS[:60])}:split")
    n_test = len(in_split(ROWS[:60], "test"))
    assert n_test >= 2
    for seed in range(5):
        train = task.items(30, seed=seed)
        test = task.items(n_test, seed=seed, split="test")
        assert not {it.key for it in train} & {it.key for it in test}
        assert not {it.meta["index"] for it in train} & {it.meta["index"] for it in test}


def test_a_gsm8k_file_is_used_whole_for_any_split(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", ROWS[3:6])
    task = get_task(f"gsm8k:{path}")
    for split in SPLITS:  # the hash would put none of these three in the test split
        items = task.items(3, seed=1, split=split)
        assert sorted(it.meta["index"] for it in items) == [0, 1, 2]
        assert task.data_source(split) == {
            "file": str(path),
            "split_by_hash": False,
            "rows_in_file": 3,
            "rows_used": 3,
        }
    assert not in_split(ROWS[3:6], "test")
    with pytest.raises(ValueError, match=f"asked for 4 GSM8K items but {re.escape(str(path))} has 3$"):
        task.items(4, split="test")
    with pytest.raises(ValueError, match="the test part of .* has 0"):
        get_task(f"gsm8k:{path}:split").items(1, split="test")
    with pytest.raises(ValueError, match="used as given"):
        get_task(f"gsm8k:{tmp_path}:split").items(1)
    assert get_task("rg:chain_sum").data_source("test") is None  # generated items: no file


def test_gsm8k_directory_reads_the_split_file_as_given(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "test.jsonl", ROWS[10:12])
    task = get_task("gsm8k", path=str(tmp_path))
    assert len(task.items(3, split="train")) == 3  # every row, whatever its hash
    assert {it.answer for it in task.items(2, split="test")} == {"20", "22"}
    with pytest.raises(FileNotFoundError, match="validation.jsonl"):
        task.items(1, split="validation")


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"question": "q"}), "'question' and 'answer'"),
        (json.dumps({"question": "q", "answer": 42}), "'question' and 'answer'"),
        (json.dumps({"question": "q", "answer": "42"}), "####"),
        (json.dumps({"question": "q", "answer": "#### forty"}), "not a number: 'forty'"),
    ],
)
def test_gsm8k_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS[:2] + [bad_line])
    with pytest.raises(ValueError, match=rf"train\.jsonl:3: .*{message}"):
        Gsm8kTask(path=path).items(1)


def test_gsm8k_file_that_is_not_text(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match=r"train\.jsonl: not UTF-8 text"):
        Gsm8kTask(path=path).items(1)


def test_gsm8k_env_var(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS[:40])
    monkeypatch.setenv(gsm8k.GSM8K_ENV, str(path))  # the same as gsm8k:<path>: the whole file
    assert len(get_task("gsm8k").items(40, split="test")) == 40
    monkeypatch.setenv(gsm8k.GSM8K_ENV, f"{path}:split")
    n = len(in_split(ROWS[:40], "train"))
    assert len(get_task("gsm8k").items(n)) == n and get_task("gsm8k").data_source("train")["rows_used"] == n


def test_gsm8k_without_a_source_says_how_to_give_one(monkeypatch, tmp_path):
    monkeypatch.delenv(gsm8k.GSM8K_ENV, raising=False)
    monkeypatch.setattr(gsm8k, "_hub_gsm8k", lambda split: None)  # never touch the network in tests
    with pytest.raises(FileNotFoundError, match="gsm8k:/path/to/train.jsonl") as err:
        get_task("gsm8k").items(1)
    message = str(err.value)
    assert gsm8k.GSM8K_ENV in message and "shared" not in message and "\n" not in message
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_task(f"gsm8k:{tmp_path / 'missing.jsonl'}").items(1)


# ------------------------------------------------------------- reasoning-gym


def test_default_task_is_easy_chain_sum():
    task = get_task(DEFAULT_TASK)
    assert isinstance(task, ReasoningGymTask) and task.name == "rg:chain_sum"
    items = task.items(50, seed=0)
    for it in items:
        terms = it.meta["entry"]["metadata"]["expression"].split()[::2]
        assert 2 <= len(terms) <= 3 and all(1 <= len(t) <= 2 for t in terms)
        assert str(eval(it.meta["entry"]["metadata"]["expression"])) == it.answer
    assert items[0].id == f"rg:chain_sum/train/seed0/{items[0].meta['rg_index']}"


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
    assert task.score(item, f"Adding up gives\n{item.answer}") == 0.0  # no answer marker
    assert get_task("rg:chain_sum", lenient=True).score(item, f"Adding up gives\n{item.answer}") == 1.0
    assert task.score(item, "") == 0.0


def test_rg_other_dataset_round_trips():
    task = get_task("rg:spell_backward")
    for item in task.items(5, seed=1):
        assert task.score(item, f"Reversing letters.\nAnswer: {item.answer}") == 1.0


def test_rg_splits_are_disjoint_by_content_and_deterministic():
    task = get_task("rg:chain_sum")  # easy sums: reasoning-gym repeats questions often
    train = task.items(300, seed=0)
    assert train == task.items(300, seed=0) and task.items(100, seed=0) == train[:100]
    assert len({it.key for it in train}) == 300 and all(split_of(it.question) == "train" for it in train)
    test = task.items(100, seed=0, split="test") + task.items(100, seed=1, split="test")
    assert all(split_of(it.question) == "test" for it in test)
    for seed in range(3):
        assert not {it.key for it in task.items(300, seed=seed)} & {it.key for it in test}
    validation = task.items(50, seed=0, split="validation")
    assert not {it.key for it in validation} & ({it.key for it in train} | {it.key for it in test})
    assert len({rg_seed(s, sp) for s in range(3) for sp in SPLITS}) == 9
    with pytest.raises(ValueError, match="seeds must be in"):
        task.items(1, seed=10**6)
    with pytest.raises(ValueError, match="unknown split"):
        task.items(1, split="dev")


def test_rg_too_few_distinct_questions_is_a_clear_error():
    task = get_task("rg:chain_sum", rg_kwargs={"min_terms": 2, "max_terms": 2, "max_digits": 1})
    with pytest.raises(ValueError, match="distinct rg:chain_sum questions of split 'test'"):
        task.items(60, split="test")  # 9 * 9 * 2 sums at most, a tenth of them in test


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
    for it in items:
        others = [c for c in it.meta["containers"] if c != it.answer]
        assert it.question.endswith("?") and it.answer in it.meta["containers"]
        assert task.score(it, f"They saw it move.\nAnswer: the {it.answer.title()}.") == 1.0
        assert task.score(it, f"Answer: in the {others[0]}") == 0.0
        assert task.score(it, f"Answer: {it.answer} or {others[0]}") == 0.0
        assert task.score(it, f"They saw it move to the {it.answer}.") == 0.0  # no answer marker
    assert task.extract_answer("So...\nAnswer: **In the Basket.**") == "basket"
    assert get_task("tom", lenient=True).extract_answer("So...\nIn the Basket.") == "basket"


def test_tom_splits_are_disjoint_by_content():
    task = get_task("tom")
    train, test = task.items(200, seed=0), task.items(40, seed=0, split="test")
    assert all(split_of(it.question) == "train" for it in train) and len({it.key for it in train}) == 200
    assert all(split_of(it.question) == "test" for it in test) and len({it.key for it in test}) == 40
    assert not {it.key for it in train} & {it.key for it in test}
    assert task.items(20, seed=0, split="test") == test[:20]


# ------------------------------------------------------------- answer cue and split_answer


def tasks_with_items(tmp_path):
    gsm8k = get_task(f"gsm8k:{write_jsonl(tmp_path / 'train.jsonl', ROWS)}")
    return [(task, task.items(5, seed=2)) for task in (gsm8k, get_task("rg:chain_sum"), get_task("tom"))]


REASONINGS = [
    "",
    "Let me think. 12 + 5 = 17 and then",
    "<think>First, 12 + 5 = 17, so",
    "#### Step 1: add\n7 + 5 = 12\n#### Step 2:",
    "Answer: maybe 3\nHmm, 3 is wrong because",
]


def test_answer_cue_then_reference_is_read_back(tmp_path):
    cues = {"gsm8k": "The answer is", "rg:chain_sum": "Answer:", "tom": "Answer:"}
    for task, items in tasks_with_items(tmp_path):
        assert task.answer_cue == cues[task.name]
        for item in items:
            for reasoning in REASONINGS:
                completion = f"{reasoning} {task.answer_cue} {item.answer}"
                assert task.extract_answer(completion) == item.answer, (task.name, completion)
                assert task.score(item, completion) == 1.0
                assert task.split_answer(completion) == (reasoning.rstrip(), item.answer)


def test_split_answer_per_task(tmp_path):
    (gsm8k, [g, *_]), (rg, [r, *_]), (tom, [t, *_]) = tasks_with_items(tmp_path)
    assert gsm8k.split_answer(g.meta["solution"]) == (g.meta["solution"].rsplit("\n", 1)[0], g.answer)
    assert gsm8k.split_answer(f"Adding.\n\n**Final Answer:** $\\boxed{{{g.answer}}}$") == ("Adding.", g.answer)
    assert gsm8k.split_answer("Adding, so 17 and then") is None
    assert rg.split_answer(f"Sum it.\n<answer>{r.answer}</answer>") == ("Sum it.", r.answer)
    assert rg.split_answer(f"So the answer is {r.answer}") == ("So", r.answer)
    assert rg.split_answer(f"Sum it.\n{r.answer}") is None
    assert tom.split_answer(f"Sally left.\nAnswer: the {t.answer.title()}.") == ("Sally left.", t.answer)
    assert tom.split_answer("Sally left.\nAnswer: ?") is None  # a marker without a container
    lenient = get_task("tom", lenient=True)
    assert lenient.split_answer(f"Sally left.\n{t.answer}") == ("Sally left.", t.answer)


def test_get_task_specs_and_errors(tmp_path):
    assert isinstance(get_task("tom"), TomTask)
    path = str(write_jsonl(tmp_path / "train.jsonl", ROWS[:2]))
    assert get_task(f"gsm8k:{path}").path == Path(path)
    assert get_task("gsm8k", system_prompt="S").system_prompt == "S"
    assert [get_task(s, lenient=True).lenient for s in ("gsm8k", "rg:chain_sum", "tom")] == [True] * 3
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


def test_item_key_is_the_question_hash():
    assert ITEM.key == question_key("What is  2 + 2?\n") == question_key(ITEM.question)
    assert Item(id="y", question="What is 2 + 3?", answer="5").key != ITEM.key
    assert Item(id="z", question="q", answer="a", key="given").key == "given"


def test_scores_are_in_unit_interval():
    rng = random.Random(0)
    junk = ["", "Answer:", "\\boxed{", "#### ", "Answer: " + "9" * 50, "<answer></answer>"]
    for task in (get_task("rg:chain_sum"), get_task("tom"), get_task("tom", lenient=True)):
        for item in task.items(5):
            for completion in junk + [rng.choice(junk) + item.answer]:
                assert 0.0 <= task.score(item, completion) <= 1.0


def test_tom_answers_are_the_same_when_they_name_the_same_container():
    task = get_task("tom")
    item = task.items(1, split="test")[0]
    c, other = item.answer, next(x for x in item.meta["containers"] if x != item.answer)
    same = lambda a, b: task.same_answer(item, a, b)
    assert same(f"mia thinks the ball is in the {c}", c) and same(f"The {c.upper()}.", f"in the {c}")
    assert not same(c, other) and not same(f"the {c} or the {other}", c) and not same("1", c)
    assert same("emma", "Emma.") and not same(None, c) and not same(c, None)
    assert not task.same_answer(None, f"in the {c}", c)  # without the item: the text itself
    assert get_task("gsm8k:/nonexistent").same_answer(None, "12", "12.") and not get_task("rg:chain_sum").same_answer(
        None, "1", "2"
    )
