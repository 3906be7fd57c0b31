"""reasoning-gym datasets (`rg:<name>`), scored by the dataset's own `score_answer`; see `thinkaloud.data.tasks`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from thinkaloud.data.answers import find_final_answer
from thinkaloud.data.splits import candidate_limit, check_split, collect_split
from thinkaloud.data.task import Item, Task

RG_SYSTEM_PROMPT = "Solve the problem step by step. End your response with a final line of the form 'Answer: <answer>'."

# Settings that make `get_task("rg:<name>")` easier than reasoning-gym's defaults; rg_kwargs override them.
RG_DEFAULT_KWARGS: dict[str, dict[str, Any]] = {
    "chain_sum": {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
}


RG_SEED_STRIDE = 100_000  # candidates per (seed, split); seeds are spaced this far apart
RG_MAX_SEED = 10_000
RG_SPLIT_OFFSET = {"train": 0, "validation": 1_000_000_000, "test": 2_000_000_000}


def rg_seed(seed: int, split: str) -> int:
    """The reasoning-gym seed for our (seed, split).

    reasoning-gym draws item i of a dataset with seed s from `Random(s + i)`, so seeds s and s+1
    share all but one item. Spacing seeds by `RG_SEED_STRIDE` and splits by 1e9 keeps the candidate
    streams of every (seed, split) apart for up to RG_SEED_STRIDE candidates, and stays below 2**32
    for numpy seeding. Split membership itself comes from the question hash (`items`).
    """
    check_split(split)
    if not 0 <= seed < RG_MAX_SEED:
        raise ValueError(f"reasoning-gym task seeds must be in [0, {RG_MAX_SEED}), got {seed}")
    return RG_SPLIT_OFFSET[split] + seed * RG_SEED_STRIDE


class ReasoningGymTask(Task):
    """One reasoning-gym dataset; `rg_kwargs` are fields of its config (e.g. ChainSumConfig)."""

    def __init__(
        self,
        dataset: str,
        rg_kwargs: Mapping[str, Any] | None = None,
        system_prompt: str | None = RG_SYSTEM_PROMPT,
        lenient: bool = False,
    ):
        from reasoning_gym.factory import DATASETS

        if dataset not in DATASETS:
            import difflib

            close = difflib.get_close_matches(dataset, DATASETS, n=5)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"unknown reasoning-gym dataset {dataset!r}.{hint} "
                f"Available ({len(DATASETS)}): {', '.join(sorted(DATASETS))}"
            )
        fields = {f.name for f in DATASETS[dataset][1].__dataclass_fields__.values()} - {"seed", "size"}
        kwargs = {**RG_DEFAULT_KWARGS.get(dataset, {}), **(rg_kwargs or {})}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ValueError(
                f"unknown settings {unknown} for reasoning-gym dataset {dataset!r} "
                f"(seed and size are set by items()); valid: {sorted(fields)}"
            )
        self.name = f"rg:{dataset}"
        self.dataset = dataset
        self.rg_kwargs = kwargs
        self.system_prompt = system_prompt
        self.lenient = lenient
        self._scorer = self._create(size=1, seed=0)  # validates the settings now

    def _create(self, size: int, seed: int):
        import reasoning_gym

        try:
            return reasoning_gym.create_dataset(self.dataset, size=size, seed=seed, **self.rg_kwargs)
        except (AssertionError, ValueError, TypeError) as e:
            raise ValueError(
                f"invalid settings {self.rg_kwargs} for reasoning-gym dataset {self.dataset!r}: {e}"
            ) from e

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """Candidates i = 0, 1, ... of the (seed, split) stream whose question is in `split` (module docstring)."""
        if not 0 < n <= RG_SEED_STRIDE:
            raise ValueError(f"n must be in [1, {RG_SEED_STRIDE}] for reasoning-gym tasks, got {n}")
        base = rg_seed(seed, split)
        data = self._create(size=RG_SEED_STRIDE, seed=base)  # entries are generated on access

        def candidate(i: int) -> tuple[dict, str]:
            entry = data[i]
            return entry, entry["question"]

        items = []
        for i, entry, key in collect_split(n, split, candidate, min(RG_SEED_STRIDE, candidate_limit(n)), self.name):
            answer = entry.get("answer")
            items.append(
                Item(
                    id=f"{self.name}/{split}/seed{seed}/{i}",
                    question=entry["question"],
                    answer="" if answer is None else str(answer),
                    key=key,
                    meta={
                        "dataset": self.dataset,
                        "entry": entry,
                        "rg_seed": base,
                        "rg_index": i,
                        "rg_kwargs": dict(self.rg_kwargs),
                    },
                )
            )
        return items

    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        return find_final_answer(completion, lenient=self.lenient)

    def score(self, item: Item, completion: str) -> float:
        if item.meta.get("dataset") != self.dataset:
            raise ValueError(f"item {item.id} does not come from {self.name}")
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        variants = [answer] + ([answer[:-1]] if answer.endswith(".") and len(answer) > 1 else [])
        return max(self._score_one(a, item.meta["entry"]) for a in variants)

    def _score_one(self, answer: str, entry: dict) -> float:
        try:
            reward = float(self._scorer.score_answer(answer=answer, entry=entry))
        except Exception:  # a dataset scorer choking on free-form model output: a wrong answer
            return 0.0
        return min(max(reward, 0.0), 1.0)
