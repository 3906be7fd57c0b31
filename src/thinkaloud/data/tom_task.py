"""The theory-of-mind task (`tom`) over `thinkaloud.data.tom` stories; see `thinkaloud.data.tasks`."""

from __future__ import annotations

import random

from thinkaloud.data import tom
from thinkaloud.data.answers import find_final_answer
from thinkaloud.data.splits import candidate_limit, check_split, collect_split
from thinkaloud.data.task import Item, Task

TOM_SYSTEM_PROMPT = (
    "Read the story and answer the question about where an object is. Think step by step "
    "about who saw what. End your response with 'Answer: <container>'."
)


class TomTask(Task):
    """Generated theory-of-mind stories (`thinkaloud.data.tom`); the answer is a container name."""

    def __init__(
        self, config: tom.TomConfig | None = None, system_prompt: str | None = TOM_SYSTEM_PROMPT, lenient: bool = False
    ):
        self.name = "tom"
        self.config = config or tom.TomConfig()
        self.system_prompt = system_prompt
        self.lenient = lenient

    def items(self, n: int, seed: int = 0, split: str = "train") -> list[Item]:
        """Candidate stories i = 0, 1, ... of the (seed, split) stream whose question is in `split`."""
        check_split(split)
        if n <= 0:
            raise ValueError(f"n must be positive, got {n}")

        def candidate(i: int) -> tuple[tom.TomStory, str]:
            # a string seed is hashed with sha512 by `random`: stable across runs and platforms
            story = tom.generate_story(self.config, random.Random(f"tom/{split}/{seed}/{i}"))
            return story, story.text()

        return [
            Item(
                id=f"tom/{split}/seed{seed}/{i}",
                question=story.text(),
                answer=story.answer,
                meta=story.to_meta(),
                key=key,
            )
            for i, story, key in collect_split(n, split, candidate, candidate_limit(n), "tom")
        ]

    def locate_answer(self, completion: str) -> tuple[int, str] | None:
        found = find_final_answer(completion, lenient=self.lenient)
        if found is None:
            return None
        answer = tom.normalize_container(found[1])
        return (found[0], answer) if answer else None

    def score(self, item: Item, completion: str) -> float:
        answer = self.extract_answer(completion)
        if answer is None:
            return 0.0
        return float(tom.container_matches(answer, item.answer, item.meta["containers"]))

    def same_answer(self, item: Item | None, a: str | None, b: str | None) -> bool:
        """The same container: with the item known, each answer stands for the only one of the story's
        containers it mentions ("Mia thinks the ball is in the tin" → tin), else for its normalised
        text, as ``score`` reads an answer."""
        if a is None or b is None or item is None:
            return super().same_answer(item, a, b)
        containers = item.meta["containers"]
        return tom.named_container(a, containers) == tom.named_container(b, containers)
