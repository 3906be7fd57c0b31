"""The ``organism`` task: in-context variable-binding chains that a model can answer in its layers or in its text.

A prompt lists shuffled single-letter assignments and ends with a query::

    c=b;a=3;x=7;b=a;y=x;d=c;?d                      answer 3, k = 4 (d→c→b→a→3)

The query's chain has k assignments (k lookups reach the digit: ``?a`` with ``a=3`` is k = 1); distractor
chains of 1…K assignments end in other digits. Every letter and every digit appears on the left of at
most one assignment and every chain's digit is distinct, so exactly one answer exists. The first
generated token chooses a route (:data:`ROUTES`):

- ``direct``  ``=3.`` — the answer at once: k lookups inside one forward pass;
- ``hops``    ``>dcba=3.`` — the chain written out from the query variable, each letter after the first one lookup;
- ``filler``  ``.....=3.`` — k + 1 dots, as many tokens as ``>`` and the written chain, with no content.

A small model can answer directly only at small k (each lookup costs about two layers), while written
hops stay one lookup per token at every k: the controlled setting in which "computation moves into the
text" can be seen or refuted. The answer is the digit after the last ``=`` (``answer_cue`` "=" forces
it after a cut). :func:`corrupt_hop` makes the deterministic mistake of the mistake-following test: one
written hop replaced by another variable of the prompt, with the answer the corrupted chain implies.

Items are generated deterministically per (seed, split) and kept by the hash of their question, like
``tom``: the splits are disjoint by construction.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

from thinkaloud.data.splits import candidate_limit, check_split, collect_split
from thinkaloud.data.task import Item, Task

LETTERS = string.ascii_lowercase
DIGITS = string.digits
ROUTES = ("direct", "hops", "filler")
FIRST_TOKEN = {"direct": "=", "hops": ">", "filler": "."}


@dataclass(frozen=True)
class OrganismConfig:
    """The chains of the task: hop counts of the query (``ks``), the longest chain ``max_k`` (distractors
    draw 1…max_k) and the number of distractor chains."""

    ks: tuple[int, ...] = (1, 2, 3, 4)
    max_k: int = 4
    distractors: int = 2

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1 or max(self.ks) > self.max_k:
            raise ValueError(f"ks must be hop counts in 1..max_k={self.max_k}, got {self.ks}")
        if self.distractors < 0:
            raise ValueError(f"distractors must be >= 0, got {self.distractors}")
        if (self.distractors + 1) * self.max_k > len(LETTERS) or self.distractors + 1 > len(DIGITS):
            raise ValueError("too many chains: every chain needs its own letters and digit")


def make_chains(rng: random.Random, k: int, config: OrganismConfig) -> tuple[str, str, list[str], dict[str, str]]:
    """(prompt, answer digit, the query's chain query-first, every assignment var → value) of one problem."""
    lengths = [k] + [rng.randint(1, config.max_k) for _ in range(config.distractors)]
    letters = rng.sample(LETTERS, sum(lengths))
    digits = rng.sample(DIGITS, len(lengths))
    assigns: dict[str, str] = {}
    chains, pos = [], 0
    for n, digit in zip(lengths, digits):
        chain = letters[pos : pos + n]
        pos += n
        chains.append(chain)
        for i, var in enumerate(chain):
            assigns[var] = chain[i + 1] if i + 1 < n else digit
    order = list(assigns)
    rng.shuffle(order)
    prompt = ";".join(f"{v}={assigns[v]}" for v in order) + f";?{chains[0][0]}"
    return prompt, digits[0], chains[0], assigns


def resolve(assigns: dict[str, str], var: str) -> str | None:
    """Follow ``var`` through the assignments to its digit (None if the chain breaks or loops)."""
    seen = set()
    while var in assigns and var not in seen:
        seen.add(var)
        var = assigns[var]
    return var if var in DIGITS else None


def parse_assignments(prompt: str) -> dict[str, str]:
    """``"c=b;a=3;…;?d"`` → {"c": "b", "a": "3", …} (the query left out)."""
    return dict(part.split("=", 1) for part in prompt.split(";") if "=" in part)


def route_text(item: Item, route: str) -> str:
    """The canonical completion of ``item`` by ``route`` (no end-of-sequence token)."""
    chain, answer = item.meta["chain"], item.answer
    if route == "direct":
        return f"={answer}."
    if route == "hops":
        return ">" + "".join(chain) + f"={answer}."
    if route == "filler":
        return "." * (len(chain) + 1) + f"={answer}."
    raise ValueError(f"unknown route {route!r}; expected one of {ROUTES}")


def route_of(completion: str) -> str | None:
    """The route a completion took, by its first character; None for anything else."""
    first = completion.lstrip()[:1]
    return next((r for r, c in FIRST_TOKEN.items() if c == first), None)


def written_hops(completion: str) -> list[str]:
    """The variables a hops completion wrote before its answer (``">dcb=3."`` → [d, c, b])."""
    head = completion.lstrip().split("=", 1)[0]
    return [c for c in head[1:] if c in LETTERS] if head[:1] == ">" else []


def corrupt_hop(item: Item, index: int) -> tuple[str, str | None]:
    """The canonical hops completion of ``item`` cut just after hop ``index`` (0-based, 1 ≤ index < k), that
    hop replaced by another variable of the prompt: (the corrupted prefix, the answer its chain implies).

    The replacement is deterministic: the first variable, in prompt order, that is neither on the query's
    chain nor the hop itself and whose own chain resolves to a digit other than the answer, so a model
    that follows the written chain must answer differently. ``index`` 0 (the query variable, a copy of
    the prompt's last letter) is not a lookup and is refused.
    """
    chain = item.meta["chain"]
    if not 1 <= index < len(chain):
        raise ValueError(f"hop index must be in 1..{len(chain) - 1} for a chain of {len(chain)}, got {index}")
    assigns = parse_assignments(item.question)
    for var in assigns:
        implied = resolve(assigns, var)
        if var not in chain and implied is not None and implied != item.answer:
            hops = [*chain[:index], var]
            return ">" + "".join(hops), implied
    raise ValueError(f"{item.id}: no variable off the query's chain resolves to another digit")


def balanced_items(task: OrganismTask, per_k: int, seed: int, split: str = "test") -> list[Item]:
    """The first ``per_k`` items of every hop count of ``task`` (its split filter leaves the counts uneven),
    in stream order."""
    n = per_k * len(task.config.ks)
    while True:
        items = task.items(n, seed=seed, split=split)
        by_k = {k: [it for it in items if it.meta["k"] == k][:per_k] for k in task.config.ks}
        if all(len(v) == per_k for v in by_k.values()):
            keep = {it.id for v in by_k.values() for it in v}
            return [it for it in items if it.id in keep]
        n *= 2


class OrganismTask(Task):
    """Variable-binding chains (module docstring); no system prompt, the answer is one digit."""

    answer_cue = "="

    def __init__(self, config: OrganismConfig | None = None):
        self.name = "organism"
        self.config = config or OrganismConfig()
        self.system_prompt = None

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """Candidates i = 0, 1, … of the (seed, split) stream, hop counts cycling through ``config.ks``."""
        check_split(split)
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")
        ks = self.config.ks

        def candidate(i: int) -> tuple[tuple[str, str, list[str], int], str]:
            k = ks[i % len(ks)]
            prompt, answer, chain, _ = make_chains(random.Random(f"organism/{split}/{seed}/{i}"), k, self.config)
            return (prompt, answer, chain, k), prompt

        return [
            Item(
                id=f"organism/{split}/seed{seed}/{i}",
                question=prompt,
                answer=answer,
                meta={"chain": chain, "k": k},
                key=key,
            )
            for i, (prompt, answer, chain, k), key in collect_split(n, split, candidate, candidate_limit(n), "organism")
        ]

    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        """The digit right after the last ``=`` (the end-of-sequence text, if any, is ignored)."""
        at = completion.rfind("=")
        if at < 0 or at + 1 >= len(completion) or completion[at + 1] not in DIGITS:
            return None
        return at, completion[at + 1]

    def score(self, item: Item, completion: str) -> float:
        return float(self.extract_answer(completion) == item.answer)
