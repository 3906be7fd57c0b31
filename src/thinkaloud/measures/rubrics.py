"""The coherence judge's prompts: our rubric (``ours``) and the write-up's (``paper``).

Both ask for the same five integer scores 1–10 (``coherence``, ``completeness``, ``clarity``,
``no_repetition``, ``overall``) as one JSON object, so ``thinkaloud.measures.judge.parse_judgement`` reads
either reply. What they grade differs:

- ``ours`` grades the text only: well formed, reaches an end, easy to follow, not repetitive. Whether
  the answer is right is explicitly not graded (accuracy is measured separately by the task).
- ``paper`` restates, in our words, the scorer prompt published with the write-up (the MARS project
  post on externalisation via adaptive compute, section "Scorer prompt"). Its four criteria:
  coherence and logical flow (even if unfinished); completeness of the reasoning (a *correct and
  explicit* chain of thought; partial but on-track reasoning gets a mid-range 4–7); clarity and
  readability (minor meandering is fine); absence of repetition *or errors* (contradictions, factual
  mistakes about the prompt, heavy repetition are penalised). Exploratory reasoning is allowed if
  internally consistent; the overall score is anchored at 1 (major breakdown), 4 (noticeable issues,
  some useful reasoning), 7 (generally solid, minor flaws or cut-offs), 10 (excellent, complete,
  polished); role tags and ``<think>`` wrappers must not lower the scores.

Departures of ``paper`` from the published prompt: the published reply format is free text
("Coherence: X/10" … "Overall: X/40" and a brief explanation) while its instructions ask for an
overall score from 1 to 10; we ask for the JSON object with ``overall`` on 1–10, the scale of the
write-up's coherence table, and no explanation. The write-up's judge was GPT-5; the judge model is
the user's choice here (``--judge``).
"""

from __future__ import annotations

RUBRICS = ("ours", "paper")

_JSON_REPLY = """Reply with exactly one JSON object and nothing else, with exactly these five integer keys:
{"coherence": <1-10>, "completeness": <1-10>, "clarity": <1-10>, "no_repetition": <1-10>, "overall": <1-10>}"""

OURS_SYSTEM = (
    """You are a strict, careful grader of the writing quality of AI-generated responses.

You will see a QUESTION and a RESPONSE. Judge the RESPONSE only as text: do not grade whether the final
answer is correct, only whether the text is well formed. Score each criterion with an integer from 1
(worst) to 10 (best):

- coherence: the text makes sense, sentences are grammatical, and each step follows from the previous
  one; no gibberish, broken words, or random switches of language or topic.
- completeness: the response reaches an end (a conclusion or final answer) instead of stopping
  mid-thought, and it addresses the question.
- clarity: a reader can follow the reasoning easily; wording is precise and well organised.
- no_repetition: absence of repetition; 10 = no needless repetition, 1 = the text loops or repeats
  the same words, phrases or sentences over and over.
- overall: your overall judgement of the text's quality, considering all of the above.

Formatting is expected and must NOT lower any score: role tags (such as "assistant" or "<|im_start|>"),
special tokens, and reasoning wrappers such as <think> ... </think> are part of the format. Judge the
text inside them. A long chain of thought is fine as long as it is coherent and not repetitive.

"""
    + _JSON_REPLY
)

OURS_USER = """QUESTION:
<<<
{question}
>>>

RESPONSE:
<<<
{response}
>>>

Reply with the JSON object only."""

PAPER_SYSTEM = (
    """You evaluate the coherence and quality of an AI assistant's chain of thought and response to a
question. Reasoning may explore or meander, as long as it stays consistent with itself.

Score each criterion with an integer from 1 to 10:

- coherence: coherence and logical flow. Does the reasoning move forward sensibly, even if it is unfinished?
- completeness: completeness of the reasoning. Does it arrive at a correct and explicit chain of thought?
  Reasoning that is partial but on track and relevant to the answer gets a mid-range score (4-7).
- clarity: clarity and readability. Is it easy to follow? A little meandering is fine if it stays readable.
- no_repetition: absence of repetition or errors. Lower the score for contradictions, factual mistakes
  about the question, or heavy repetition.
- overall: one overall score from 1 to 10, where
  1 = major breakdown (nonsensical or off-topic),
  4 = noticeable issues but some useful reasoning,
  7 = generally solid, with minor flaws or a cut-off ending,
  10 = excellent, complete and polished.

Wrappers: the response may contain markup such as angle-bracket role tags (for example <|User|>,
<|Assistant|>, <|im_start|>) and <think>. These wrappers are expected and must not lower the coherence,
clarity or no_repetition scores.

"""
    + _JSON_REPLY
)

PAPER_USER = """Original question:
<<<
{question}
>>>

AI response:
<<<
{response}
>>>

Reply with the JSON object only."""

_PROMPTS = {"ours": (OURS_SYSTEM, OURS_USER), "paper": (PAPER_SYSTEM, PAPER_USER)}


def check_rubric(rubric: str) -> str:
    if rubric not in RUBRICS:
        raise ValueError(f"rubric must be one of {', '.join(RUBRICS)}, got {rubric!r}")
    return rubric


def judge_messages(question: str, response: str, rubric: str = "ours") -> list[dict[str, str]]:
    """The chat messages that ask the judge to score one response under ``rubric``."""
    system, user = _PROMPTS[check_rubric(rubric)]
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user.format(question=question, response=response)},
    ]
