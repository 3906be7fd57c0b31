"""Degenerate completions during RL, and when a run's policy has collapsed.

A policy that is paid for shallow tokens can learn to stop saying anything: an empty response, a
single token repeated, a loop of a few tokens ("the the of the the of …"), or text that never reaches
the task's answer. Those completions still earn the depth reward, so mean compute falls while the text
is lost. Each RL step (and each held-out evaluation) therefore counts, per completion, whether it is

- ``empty``: no visible text — the decoded text is blank, or (without decoded text) no token besides
  the stop token;
- ``repeat``: one token, repeated: at least two tokens besides the stop token, all the same id;
- ``loop``: the content (stop tokens stripped) ends in a block of 1 to ``LOOP_MAX_PERIOD`` tokens repeated
  at least ``LOOP_MIN_REPEATS`` times in a row, and those repetitions cover at least ``LOOP_MIN_TOKENS``
  tokens and at least half of the content (:func:`trailing_loop`). The end is what counts: a completion
  cut at the token cap inside a loop is caught (the block may start anywhere in the cycle), one that
  loops and then moves on is not. ``loop`` does not replace ``repeat``: a run of one token of 6 tokens or
  more is both (``degenerate`` counts a completion once), two to five equal tokens only ``repeat``;
- ``no_answer``: it ended (with the stop token) and the task extracts no answer from it (with strict
  extraction: no answer marker); only for environments that extract answers (``Scored.answered``).
  A completion cut at the token cap is not counted: it may have been on its way to the answer (at the
  demo's 40 tokens, nearly every completion of the starting model is cut before it answers);

and logs the share of each and ``degenerate``, the share that is any of them. ``counts`` returns
``[B, *(one count per KINDS), any]``; consumers index it through ``KINDS``, never by position.

A run has **collapsed** when ``degenerate`` exceeds ``COLLAPSE_SHARE`` at ``COLLAPSE_STEPS`` consecutive
steps or more (:func:`collapse`). The RL loop still saves such a run's model, for inspection, but says so
on the terminal and in the run's ``summary.json`` (``thinkaloud.train.rl_report``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch

KINDS = ("empty", "repeat", "loop", "no_answer")
LOOP_MAX_PERIOD = 4  # tokens in the repeated block
LOOP_MIN_REPEATS = 3
LOOP_MIN_TOKENS = 6
COLLAPSE_SHARE = 0.5
COLLAPSE_STEPS = 3


def trailing_loop(ids: Sequence[int], max_period: int = LOOP_MAX_PERIOD, min_repeats: int = LOOP_MIN_REPEATS) -> int:
    """Tokens covered by the longest block of 1 to ``max_period`` tokens that ``ids`` ends in, repeated at
    least ``min_repeats`` times in a row (whole repetitions only); 0 when there is none.

    The block is the last n tokens, so a loop cut mid-cycle counts: [x, a, b, c, a, b, c, a, b, c, a, b] ends
    in (c, a, b) × 3 after [x, a, b]: 9 tokens. [x, a, b, c, a, b, c, a, b] ends in only 2 whole (c, a, b): 0.
    """
    best = 0
    for n in range(1, max_period + 1):
        tail = n  # the periodic tail: the last n tokens, extended while a token equals the one n before it
        while tail < len(ids) and ids[-tail - 1] == ids[-tail - 1 + n]:
            tail += 1
        repeats = tail // n if tail <= len(ids) else 0
        if repeats >= min_repeats:
            best = max(best, repeats * n)
    return best


def kinds(ids: Sequence[int], stop_ids: Collection[int], text: str | None, answered: bool | None) -> dict[str, bool]:
    """The degenerate kinds of one completion: its new token ids (stop token included, no padding), its
    decoded text (None: not decoded) and whether the task found an answer in it (None: not known)."""
    content = list(ids)
    while content and content[-1] in stop_ids:
        content.pop()
    stopped = len(content) < len(ids)
    empty = (not text.strip()) if text is not None else not content
    looped = trailing_loop(content)
    return {
        "empty": empty,
        "repeat": not empty and len(content) >= 2 and len(set(content)) == 1,
        "loop": not empty and looped >= LOOP_MIN_TOKENS and 2 * looped >= len(content),
        "no_answer": answered is False and stopped,
    }


def counts(out, stop_ids: Collection[int], texts: Sequence[str] | None, answered: torch.Tensor | None) -> list[float]:
    """Of a generation ``out`` (B rows): [B, *(count of each of KINDS), any] completion counts."""
    rows = [row[:n] for row, n in zip(out.new_tokens.tolist(), out.lengths.tolist())]
    flags = [
        kinds(ids, stop_ids, None if texts is None else texts[b], None if answered is None else bool(answered[b]))
        for b, ids in enumerate(rows)
    ]
    return [
        float(len(rows)),
        *(float(sum(f[k] for f in flags)) for k in KINDS),
        float(sum(any(f.values()) for f in flags)),
    ]


def shares(summed: Sequence[float]) -> dict[str, float]:
    """[B, *KINDS, any] counts (summed over processes) → {"degenerate", kind: share}."""
    n = max(summed[0], 1.0)
    return {"degenerate": summed[-1] / n, **{k: summed[1 + i] / n for i, k in enumerate(KINDS)}}


def collapse(
    rows: Sequence[dict[str, Any]], share: float = COLLAPSE_SHARE, steps: int = COLLAPSE_STEPS
) -> dict[str, Any] | None:
    """The longest streak of ``steps`` or more consecutive logged steps with ``degenerate`` > ``share`` in one
    run's rows, as {"from_step", "to_step", "steps", "share", "message"}; None when there is none."""
    ordered = sorted((int(r["step"]), r.get("degenerate")) for r in rows)
    best: list[int] = []
    streak: list[int] = []
    for step, value in ordered:
        streak = streak + [step] if value is not None and value > share else []
        if len(streak) >= steps and len(streak) > len(best):
            best = streak
    if not best:
        return None
    return {
        "from_step": best[0],
        "to_step": best[-1],
        "steps": len(best),
        "share": share,
        "message": f"the policy collapsed: more than {100 * share:.0f}% of its completions were degenerate (empty, "
        f"one repeated token, a loop or no answer) at steps {best[0]}–{best[-1]}",
    }
