"""Train / validation / test splits by content: disjoint by construction.

An item belongs to a split through a stable hash of its question text, so the same question lands
in the same split whatever file, seed or generator produced it, and no question is ever in two
splits. The hash is sha256 of the whitespace-normalised question (runs of whitespace become one
space, ends stripped; case is kept). Its first 16 hex digits are the item's content key
(`Item.key`), used to check leakage by content rather than by id; the key's value modulo 100 picks
the split: 0-79 train (80%), 80-89 validation (10%), 90-99 test (10%).

Procedural tasks (reasoning-gym, ToM) draw candidates from a deterministic stream and keep the first
`n` whose question is in the requested split, skipping repeated questions (`collect_split`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

SPLITS = ("train", "validation", "test")
SPLIT_PERCENT = {"train": (0, 80), "validation": (80, 90), "test": (90, 100)}  # [lo, hi) of key % 100


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def question_key(question: str) -> str:
    """16 hex digits of sha256 of the whitespace-normalised question."""
    return hashlib.sha256(" ".join(question.split()).encode("utf-8")).hexdigest()[:16]


def split_of_key(key: str) -> str:
    bucket = int(key, 16) % 100
    return next(s for s, (lo, hi) in SPLIT_PERCENT.items() if lo <= bucket < hi)


def split_of(question: str) -> str:
    """The split a question belongs to."""
    return split_of_key(question_key(question))


def collect_split(
    n: int, split: str, candidate: Callable[[int], tuple[Any, str]], limit: int, what: str
) -> list[tuple[int, Any, str]]:
    """The first `n` (index, candidate, key) of `candidate(0), candidate(1), ...` whose question is in
    `split`, skipping repeated questions; `candidate(i)` returns (anything, question)."""
    kept: list[tuple[int, Any, str]] = []
    seen: set[str] = set()
    for i in range(limit):
        value, question = candidate(i)
        key = question_key(question)
        if key in seen or split_of_key(key) != split:
            continue
        seen.add(key)
        kept.append((i, value, key))
        if len(kept) == n:
            return kept
    raise ValueError(
        f"only {len(kept)} distinct {what} questions of split {split!r} among the first {limit} "
        f"candidates; ask for fewer than {n} items (or make the task harder, for more distinct questions)"
    )


def candidate_limit(n: int) -> int:
    """Candidates to scan for `n` items: a split holds >= 10% of them, so 100n + 1000 is ample."""
    return 100 * n + 1000
