"""Answer extraction: strict markers, R1/Qwen-style outputs, number parsing, the lenient fallback."""

from __future__ import annotations

import pytest

from thinkaloud.data.answers import (
    extract_final_answer,
    extract_number,
    find_final_answer,
    find_number,
    normalize_number,
)

R1_HEADINGS = """<think>
Okay, Janet's ducks lay 16 eggs. She eats 3 and bakes with 4, so 16 - 3 - 4 = 9 are left.
</think>

#### Step 1: Eggs left
16 - 3 - 4 = 9

#### Step 2: Double the money
She sells them at $2 each: 9 * 2 = 18.

**Final Answer**
\\boxed{18}"""

QWEN_HEADINGS = """### Solution
#### 1. Cost of the apples
3 apples cost 3 * 2 = 6 dollars.
#### 2. Total
6 + 8 = 14 dollars.

The answer is 14."""


@pytest.mark.parametrize(
    "completion, expected",
    [
        # the dataset's own answer line
        ("She sells 48 + 24 = 72 clips.\n#### 72", "72"),
        ("#### $1,200.00", "1200"),
        ("#### 72\nThat took 3 steps.", "72"),
        ("Answer: 5 apples\n#### 6", "6"),
        ("So 3 then 5.\n#### 7.", "7"),
        ("#### 12\n\nQuestion: Tom has 5 apples. How many?\nAnswer: 5", "12"),  # base model starting a new example
        # markdown headings are not answer lines
        (R1_HEADINGS, "18"),
        (QWEN_HEADINGS, "14"),
        ("#### Step 2: Double 7\nThat gives \\boxed{14}", "14"),
        ("#### 1. Compute the total\n#### 2. Subtract\nSo we get 5.", None),
        # boxed
        ("We get \\boxed{42} since 6*7 = 42 and 10 more", "42"),
        ("\\boxed{\\$1,000}", "1000"),
        ("\\boxed{18 \\text{ dollars}}", "18"),
        ("The final answer is $\\boxed{-3}$.", "-3"),
        ("\\boxed{\\frac{3}{4}}", "0.75"),  # a fraction with an exact decimal is that decimal
        ("\\boxed{\\dfrac{12}{4}}", "3"),
        ("\\boxed{\\frac{1}{3}}", "1/3"),  # no exact decimal: p/q, never equal to a GSM8K reference
        ("\\boxed{2 + 3 = 5}", "5"),
        # "answer is" / "Answer:"
        ("The answer is 18 dollars, since 3 * 6 = 18 and 2 more", "18"),
        ("The answer is $1,234.50.", "1234.5"),
        ("The answer is .75", "0.75"),
        ("The answer is 25%.", "25"),
        ("The answer is 1{,}234", "1234"),
        ("The answer is: **−5**", "-5"),
        ("Answer: -5\nCheck: 2 - 7 = -5 and 3", "-5"),
        ("Answer:\n42", "42"),
        ("Answer: 2 + 3 = 5", "5"),
        ("Answer: 3/4 of the cake", "0.75"),
        ("The answer is that she has 18 apples left", "18"),
        ("To see what the answer is, we add 3 + 4 = 7 and then", None),  # a restatement, not an answer
        # a range or an unevaluated expression is not a final number (not 12, not -5)
        ("The answer is 12-5", None),
        ("The answer is 12 - 15 apples", None),
        ("The answer is 12–15", None),
        # <answer> tags and <think> wrappers
        ("<answer>42</answer>", "42"),
        ("<answer> $7 </answer> and Answer: 8", "7"),
        ("<think>Maybe the answer is 5. Wait, no.</think>\n\nThe answer is 6.", "6"),
        ("<think>So far 3 + 4 = 7. The answer is 7", "7"),  # unfinished thinking with a cue appended
        # a later marker without a number does not hide an earlier answer
        ("#### 72\nI double-checked: the answer is correct.", "72"),
        # no marker: no answer (the old scorer took the last number)
        ("... 5 + 12 = 17 and then", None),
        ("First 12, then 15, finally 19.5", None),
        ("It costs 3.50 dollars", None),
        ("I am not sure.", None),
        ("", None),
    ],
)
def test_extract_number_strict(completion, expected):
    assert extract_number(completion) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("... 5 + 12 = 17 and then", "17"),
        ("First 12, then 15, finally 19.5", "19.5"),
        ("It costs 3.50 dollars", "3.5"),
        ("#### 72\nThat took 3 steps.", "72"),  # a marker still wins
        ("I am not sure.", None),
    ],
)
def test_extract_number_lenient_falls_back_to_the_last_number(completion, expected):
    assert extract_number(completion, lenient=True) == expected


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("$1,000", "1000"),
        ("72.", "72"),
        ("72.00", "72"),
        ("-3.50", "-3.5"),
        ("+4", "4"),
        ("0.0", "0"),
        ("100", "100"),
        (".75", "0.75"),
        ("x", "x"),
    ],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("Let me add.\nAnswer: 17", "17"),
        ("Answer: maybe 3\nActually recheck.\nFinal answer: **17**", "17"),
        ("The answer is $\\boxed{17}$.", "17"),  # boxed comes after "answer is"
        ("so the answer is 17.", "17."),
        ("Answer:\n1 2\n3 4\n\nThat is the grid.", "1 2\n3 4"),
        ("<answer>yes</answer> and later Answer: no", "yes"),
        ("<think>hmm, Answer: no?</think>\nAnswer: yes", "yes"),
        ("Answer: 17</think>", "17"),
        ("Question: restated.\nAnswer: 4\n\nQuestion: What is 3 + 3?\nAnswer: 6", "4"),
        ("The answer is 5\nLet me restate.\nAnswer:", "5"),  # an empty last marker does not hide an earlier one
        ("thinking...\n17", None),  # no marker: no answer (the old scorer took the last line)
        ("   \n", None),
    ],
)
def test_extract_final_answer_strict(completion, expected):
    assert extract_final_answer(completion) == expected


def test_extract_final_answer_lenient_falls_back_to_the_last_line():
    assert extract_final_answer("thinking...\n**17**\n\n", lenient=True) == "17"
    assert extract_final_answer("Answer: 3\nmore words", lenient=True) == "3\nmore words"  # a marker still wins
    assert extract_final_answer("   \n", lenient=True) is None


@pytest.mark.parametrize(
    "completion, reasoning",
    [
        ("She sells 72 clips.\n#### 72", "She sells 72 clips.\n"),
        ("So 3 + 4 = 7. The answer is $\\boxed{7}$.", "So 3 + 4 = 7."),  # "The answer is" opens the statement
        ("So 7.\n\n**Final Answer:** \\boxed{7}", "So 7.\n\n"),
        ("So 7.\nAnswer:\n\\boxed{7}", "So 7.\n"),
        ("<think>3 + 4</think>\n<answer>7</answer>", "<think>3 + 4</think>\n"),
    ],
)
def test_find_number_gives_where_the_answer_statement_starts(completion, reasoning):
    start, answer = find_number(completion)
    assert (completion[:start], answer) == (reasoning, "7" if "72" not in completion else "72")


def test_find_final_answer_start_and_lenient_start():
    text = "Step one.\nAnswer: maybe 3\nStep two.\n### Final answer: 4"
    start, answer = find_final_answer(text)
    assert answer == "4" and text[:start] == "Step one.\nAnswer: maybe 3\nStep two.\n"
    start, answer = find_final_answer("Step one.\nfour", lenient=True)
    assert (start, answer) == (10, "four")
