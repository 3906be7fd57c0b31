"""Necessity against padding: is it the reasoning's content that carries the answer, or only the room to
compute that its tokens give? (Lanham et al. 2023, "Measuring Faithfulness in Chain-of-Thought
Reasoning", §2.4 filler tokens; Pfau, Merrill & Bowman 2024, "Let's Think Dot by Dot".)

For every response with an extractable answer, the same model is forced to answer (the task's answer
cue appended, a short greedy answer; ``thinkaloud.measures.loadbearing.forced``) after three contexts:

- ``own``: the prompt and the response's own reasoning (early answering at f = 1);
- ``none``: the prompt alone (early answering at f = 0);
- ``filler``: the prompt and a filler of exactly as many tokens as the reasoning: the tokens of
  ``FILLER`` (" ...") repeated and cut to length.

Numbers, per condition: ``agreement`` (share of responses whose forced answer is the response's own
answer, ``task.same_answer``) and ``accuracy`` (the task's score of the forced answer); ``accuracy_full``
is the responses' own score. If the reasoning is load-bearing: own > none ≈ filler. own ≈ none: the
answer does not need the written reasoning (it is fixed by the prompt, or computed without it);
filler > none: extra positions help whatever they hold — compute, not content (Pfau et al.).
``gap`` = agreement(own) − agreement(filler).

What it does not prove. n is small (tens of responses): differences of a few responses are noise. The
forced format differs from the model's own ending (an answer cue on a fresh line), so own can fall short
of 1 for format reasons alone; a model that never saw filler may answer worse after it because the
context is strange, not because it lost information (filler < none). Agreement rates measured at
different points are not directly comparable across models whose accuracy differs; Bentham et al.
2024 ("Chain-of-Thought Unfaithfulness as Disguised Accuracy") show such faithfulness scores track
accuracy and should be normalised before comparing models. A high own − none gap shows that the answer
depends on the visible text, not that the text is how the answer was computed.

Cost: one full-depth pass over prompt + reasoning and one over prompt + filler per response
(``thinkaloud.model.generate.prefill``); the three short answers continue from those keys and values
(``Prefix.select``, via ``reliance.model_answerer``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from thinkaloud.data.task import Task
from thinkaloud.measures.loadbearing.forced import Cues, check_task, mean, read_forced, score, split_reasoning
from thinkaloud.measures.reliance import AnswerFn, Probe
from thinkaloud.measures.responses import Response

FILLER = " ..."
CONDITIONS = ("own", "none", "filler")


def filler_ids(tokenizer: Any, n: int, filler: str = FILLER) -> list[int]:
    """``n`` tokens of ``filler`` repeated (the last repeat cut)."""
    unit = tokenizer(filler, add_special_tokens=False)["input_ids"]
    if not unit:
        raise ValueError(f"filler {filler!r} has no tokens")
    return (unit * (n // len(unit) + 1))[:n]


def filler_necessity(
    task: Task, responses: Sequence[Response], tokenizer: Any, answer_fn: AnswerFn, *, filler: str = FILLER
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Forced answers after own reasoning, none and filler → (summary, one dict per response)."""
    cue = check_task(task)
    cues = Cues(tokenizer, cue)
    split = split_reasoning(task, responses, tokenizer)
    probes: list[Probe] = []
    for s in split:
        if s is None:
            continue
        P, n = len(s.prompt_ids), s.n
        own_tail = cues.after_reasoning if n else cues.after_prompt(s.prompt_ids)
        cuts = ((P, cues.after_prompt(s.prompt_ids)), (P + n, own_tail))
        probes.append(Probe(tuple(s.prompt_ids) + tuple(s.reasoning_ids), cuts))
        if n:
            probes.append(Probe(tuple(s.prompt_ids) + tuple(filler_ids(tokenizer, n, filler)), ((P + n, own_tail),)))
    written = answer_fn(probes) if probes else []
    if len(written) != len(probes):
        raise ValueError(f"answer_fn returned {len(written)} answers for {len(probes)} probes")

    records: list[dict[str, Any]] = []
    at = 0
    for s in split:
        if s is None:
            records.append(
                {"included": False, "reasoning_tokens": None, "full_answer": None, **dict.fromkeys(CONDITIONS)}
            )
            continue
        none_text, own_text = written[at]
        filler_text = written[at + 1][0] if s.n else none_text  # no reasoning: the filler is empty too
        at += 2 if s.n else 1
        rec: dict[str, Any] = {"included": True, "reasoning_tokens": s.n, "full_answer": s.answer}
        for name, text in zip(CONDITIONS, (own_text, none_text, filler_text)):
            read, answer = read_forced(task, cue, text)
            rec[name] = {
                "answer": answer,
                "agree": task.same_answer(s.item, answer, s.answer),
                "score": score(task, s.item, read),
            }
        records.append(rec)

    used = [r for r in records if r["included"]]
    agreement = {c: mean([r[c]["agree"] for r in used]) for c in CONDITIONS}
    summary = {
        "measure": "filler_necessity",
        "filler": filler,
        "agreement": agreement,
        "accuracy": {c: mean([r[c]["score"] for r in used]) for c in CONDITIONS},
        "accuracy_full": mean([score(task, s.item, s.completion) for s in split if s is not None]),
        "gap": None if agreement["own"] is None else agreement["own"] - (agreement["filler"] or 0.0),
        "n": len(used),
        "n_skipped": len(records) - len(used),
        "answer_cue": cue,
    }
    return summary, records
