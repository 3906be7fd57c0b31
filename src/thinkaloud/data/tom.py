"""Theory-of-mind stories with an explicit belief tracker (in the spirit of ToMi / ExploreToM).

A story happens in one room with a few closed containers. Agents enter and leave the room and
move objects between containers. A question asks where an object is:

- order 0 (reality):  "Where is the marble really?"
- order 1:            "Where does Sally think the marble is?"
- order 2:            "Where does Anne think that Sally thinks the marble is?"

The answer is always a container name and comes from `BeliefTracker`, which replays the
events one by one under these rules:

- Witnessing. An `Enter`/`Leave` changes who is in the room. A `Move` is witnessed by every
  agent in the room at that moment, and all of them see each other watching. A `Move` with
  `secret=True` is witnessed by its mover alone, and the mover knows nobody else saw it.
  Containers are closed: agents learn where an object is only by witnessing a move of it
  (the first `Move` of an object is its initial placement: "Sally put the marble in the basket").
- First order. `belief(A, obj)` is the destination of the last move of `obj` that A witnessed
  (None if A witnessed none).
- Second order. `belief_about(A, B, obj)` is where A believes B believes `obj` is. It is set to
  the destination of a move exactly when A witnesses that move and A knows B witnessed it too.
  In this world A knows B witnessed a move iff both were in the room and it was not secret (the
  only way to learn about an event is to see it; there is no communication). So it equals the
  destination of the last move of `obj` that A and B witnessed together, and it is None if they
  never did. `belief_about(A, A, obj)` is `belief(A, obj)`.

Simplifications compared to ExploreToM: one room, no communication between agents, no agents
peeking or looking inside containers, objects never leave their room.

`generate_story` draws a random story from a `TomConfig` with a `random.Random`, so a story is
fully determined by its seed. Difficulty grows with agents, moves, unwitnessed moves and the
share of second-order and false-belief questions.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass

NAMES = (
    "Sally",
    "Anne",
    "Mia",
    "Noah",
    "Emma",
    "Liam",
    "Olivia",
    "Lucas",
    "Ava",
    "Ethan",
    "Zoe",
    "Omar",
    "Priya",
    "Hugo",
    "Nora",
    "Kenji",
)
OBJECTS = ("marble", "ball", "key", "apple", "coin", "watch", "ring", "scarf", "pencil", "cookie", "toy car", "spoon")
# One word each, none a word of another, so a container is found in free text by a word match.
CONTAINERS = (
    "basket",
    "box",
    "drawer",
    "cupboard",
    "suitcase",
    "bucket",
    "crate",
    "backpack",
    "jar",
    "bag",
    "chest",
    "tin",
)
ROOMS = ("kitchen", "garden", "hallway", "attic", "office", "bedroom", "garage", "classroom")


@dataclass(frozen=True)
class Enter:
    agent: str


@dataclass(frozen=True)
class Leave:
    agent: str


@dataclass(frozen=True)
class Move:
    """`agent` puts `obj` into `container` (its first move is the initial placement)."""

    agent: str
    obj: str
    container: str
    secret: bool = False


Event = Enter | Leave | Move


class BeliefTracker:
    """Reality, first- and second-order beliefs about object locations, updated event by event.

    See the module docstring for the exact semantics.
    """

    def __init__(self, agents: list[str] | tuple[str, ...]):
        if len(set(agents)) != len(agents):
            raise ValueError(f"agent names must be unique, got {list(agents)}")
        self.agents = tuple(agents)
        self.present: list[str] = []  # a list, not a set: iteration order must not depend on hashing
        self.location: dict[str, str] = {}
        self._first: dict[tuple[str, str], str] = {}  # (A, obj) -> container
        self._second: dict[tuple[str, str, str], str] = {}  # (A, B, obj) -> container

    def witnesses(self, event: Event) -> list[str]:
        """Agents who see `event` happen (in `agents` order)."""
        if isinstance(event, Move) and event.secret:
            return [event.agent]
        return [a for a in self.agents if a in self.present]

    def apply(self, event: Event) -> None:
        if not isinstance(event, (Enter, Leave, Move)):
            raise TypeError(f"not a story event: {event!r}")
        if event.agent not in self.agents:
            raise ValueError(f"unknown agent {event.agent!r} in {event}; agents are {list(self.agents)}")
        if isinstance(event, Enter):
            if event.agent in self.present:
                raise ValueError(f"{event.agent} enters but is already in the room")
            self.present.append(event.agent)
        elif isinstance(event, Leave):
            if event.agent not in self.present:
                raise ValueError(f"{event.agent} leaves but is not in the room")
            self.present.remove(event.agent)
        else:
            if event.agent not in self.present:
                raise ValueError(f"{event.agent} moves the {event.obj} but is not in the room")
            seen_by = self.witnesses(event)
            self.location[event.obj] = event.container
            for a in seen_by:
                self._first[a, event.obj] = event.container
                for b in seen_by:  # a saw b watching (a secret move has a single witness)
                    self._second[a, b, event.obj] = event.container

    def reality(self, obj: str) -> str | None:
        return self.location.get(obj)

    def belief(self, agent: str, obj: str) -> str | None:
        return self._first.get((agent, obj))

    def belief_about(self, agent: str, other: str, obj: str) -> str | None:
        """Where `agent` believes `other` believes `obj` is."""
        if agent == other:
            return self.belief(agent, obj)
        return self._second.get((agent, other, obj))


@dataclass(frozen=True)
class Question:
    """Where is `obj`, as believed along the chain `about` (() reality, (A,), or (A, B))."""

    obj: str
    about: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.about) > 2:
            raise ValueError(f"questions go up to second order, got about={self.about}")

    @property
    def order(self) -> int:
        return len(self.about)

    def text(self) -> str:
        if self.order == 0:
            return f"Where is the {self.obj} really?"
        if self.order == 1:
            return f"Where does {self.about[0]} think the {self.obj} is?"
        return f"Where does {self.about[0]} think that {self.about[1]} thinks the {self.obj} is?"

    def answer(self, tracker: BeliefTracker) -> str | None:
        if self.order == 0:
            return tracker.reality(self.obj)
        if self.order == 1:
            return tracker.belief(self.about[0], self.obj)
        return tracker.belief_about(self.about[0], self.about[1], self.obj)


def track(agents: list[str] | tuple[str, ...], events: list[Event] | tuple[Event, ...]) -> BeliefTracker:
    """Replay `events` from an empty room."""
    tracker = BeliefTracker(agents)
    for event in events:
        tracker.apply(event)
    return tracker


@dataclass(frozen=True)
class TomStory:
    room: str
    containers: tuple[str, ...]
    agents: tuple[str, ...]
    objects: tuple[str, ...]
    events: tuple[Event, ...]
    question: Question

    @property
    def answer(self) -> str:
        answer = self.question.answer(track(self.agents, self.events))
        if answer is None:
            raise ValueError(f"{self.question.text()!r} has no answer: the agents never saw the {self.question.obj}")
        return answer

    def text(self) -> str:
        """The story as English sentences, one per line, then the question."""
        return render_events(self.room, self.containers, self.events) + "\n\n" + self.question.text()

    def to_meta(self) -> dict:
        """Plain-data description (JSON-serialisable) for `Item.meta`."""
        return {
            "room": self.room,
            "containers": list(self.containers),
            "agents": list(self.agents),
            "objects": list(self.objects),
            "events": [{"kind": type(e).__name__.lower(), **asdict(e)} for e in self.events],
            "question": {"object": self.question.obj, "about": list(self.question.about), "order": self.question.order},
        }


# ---------------------------------------------------------------- rendering


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _and_list(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def render_events(room: str, containers: tuple[str, ...] | list[str], events: tuple[Event, ...] | list[Event]) -> str:
    """One sentence per line; consecutive entries (or exits) are merged into one sentence."""
    lines = [f"In the {room} there are {_and_list([_article(c) for c in containers])}."]
    placed: set[str] = set()
    i = 0
    while i < len(events):
        event = events[i]
        if isinstance(event, (Enter, Leave)):
            group = [event.agent]
            while i + 1 < len(events) and type(events[i + 1]) is type(event):
                i += 1
                group.append(events[i].agent)
            verb = "entered" if isinstance(event, Enter) else "left"
            lines.append(f"{_and_list(group)} {verb} the {room}.")
        else:
            first = event.obj not in placed
            placed.add(event.obj)
            act = f"put the {event.obj} in" if first else f"moved the {event.obj} to"
            if event.secret:
                lines.append(f"{event.agent} secretly {act} the {event.container}, and nobody else noticed.")
            else:
                lines.append(f"{event.agent} {act} the {event.container}.")
        i += 1
    return "\n".join(lines)


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class TomConfig:
    """Knobs of the story generator.

    n_agents: people in the story (>= 2).
    n_moves: moves after the initial placement of each object (>= 1).
    n_unwitnessed: how many of those moves some agent does not witness (0..n_moves), either
        because the agent is out of the room or because the move is made secretly.
        The other moves are seen by everyone.
    n_containers: containers in the room (2..12).
    n_objects: objects moved around (1..12); the extra ones are distractors.
    order_weights: relative frequency of (reality, first-order, second-order) questions.
    p_false_belief: chance that the question is picked among those whose answer differs from
        reality (or, at second order, from the other agent's actual belief), when there are any.
    p_secret: chance that an unwitnessed move is made secretly rather than while someone is out.
    """

    n_agents: int = 3
    n_moves: int = 2
    n_unwitnessed: int = 1
    n_containers: int = 3
    n_objects: int = 1
    order_weights: tuple[float, float, float] = (0.2, 0.4, 0.4)
    p_false_belief: float = 0.5
    p_secret: float = 0.3

    def __post_init__(self):
        if not 2 <= self.n_agents <= len(NAMES):
            raise ValueError(f"n_agents must be in [2, {len(NAMES)}], got {self.n_agents}")
        if self.n_moves < 1:
            raise ValueError(f"n_moves must be >= 1, got {self.n_moves}")
        if not 0 <= self.n_unwitnessed <= self.n_moves:
            raise ValueError(f"n_unwitnessed must be in [0, n_moves={self.n_moves}], got {self.n_unwitnessed}")
        if not 2 <= self.n_containers <= len(CONTAINERS):
            raise ValueError(f"n_containers must be in [2, {len(CONTAINERS)}], got {self.n_containers}")
        if not 1 <= self.n_objects <= len(OBJECTS):
            raise ValueError(f"n_objects must be in [1, {len(OBJECTS)}], got {self.n_objects}")
        if len(self.order_weights) != 3 or min(self.order_weights) < 0 or sum(self.order_weights) <= 0:
            raise ValueError(f"order_weights must be 3 non-negative numbers, not all 0, got {self.order_weights}")
        for name in ("p_false_belief", "p_secret"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")


def generate_story(config: TomConfig, rng: random.Random) -> TomStory:
    """Everyone enters, each object is placed, then `n_moves` moves with presence changes between."""
    agents = rng.sample(NAMES, config.n_agents)
    containers = rng.sample(CONTAINERS, config.n_containers)
    objects = rng.sample(OBJECTS, config.n_objects)
    room = rng.choice(ROOMS)
    tracker = BeliefTracker(agents)
    events: list[Event] = []

    def emit(event: Event) -> None:
        tracker.apply(event)
        events.append(event)

    for agent in agents:
        emit(Enter(agent))
    for obj in objects:
        emit(Move(rng.choice(agents), obj, rng.choice(containers)))

    unwitnessed = set(rng.sample(range(config.n_moves), config.n_unwitnessed))
    for k in range(config.n_moves):
        secret = k in unwitnessed and rng.random() < config.p_secret
        if k not in unwitnessed:
            stay = list(agents)
        else:  # a secret move may happen in front of everyone; otherwise someone must be out
            n_in = rng.randint(1, config.n_agents if secret else config.n_agents - 1)
            stay = rng.sample(agents, n_in)
        changes: list[Event] = [Leave(a) for a in agents if a in tracker.present and a not in stay]
        changes += [Enter(a) for a in agents if a not in tracker.present and a in stay]
        rng.shuffle(changes)
        for event in changes:
            emit(event)
        obj = rng.choice(objects)
        target = rng.choice([c for c in containers if c != tracker.reality(obj)])
        emit(Move(rng.choice(stay), obj, target, secret=secret))

    question = _pick_question(tracker, agents, objects, config, rng)
    return TomStory(room, tuple(containers), tuple(agents), tuple(objects), tuple(events), question)


def _pick_question(
    tracker: BeliefTracker, agents: list[str], objects: list[str], config: TomConfig, rng: random.Random
) -> Question:
    order = rng.choices([0, 1, 2], weights=config.order_weights)[0]
    if order == 0:
        candidates = [Question(obj) for obj in objects]
    elif order == 1:
        candidates = [Question(obj, (a,)) for obj in objects for a in agents]
    else:
        candidates = [Question(obj, (a, b)) for obj in objects for a in agents for b in agents if a != b]
    candidates = [q for q in candidates if q.answer(tracker) is not None]

    def is_false_belief(q: Question) -> bool:
        answer = q.answer(tracker)
        return answer != tracker.reality(q.obj) or (q.order == 2 and answer != tracker.belief(q.about[1], q.obj))

    false_beliefs = [q for q in candidates if is_false_belief(q)]
    if false_beliefs and rng.random() < config.p_false_belief:
        candidates = false_beliefs
    return rng.choice(candidates)


# ---------------------------------------------------------------- scoring

_LEADING_FILLER = {"it", "its", "s", "is", "in", "inside", "into", "on", "at", "the", "a", "an"}


def normalize_container(text: str) -> str:
    """Lowercase, drop punctuation and leading filler words: "It's in the Basket." -> "basket"."""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    while words and words[0] in _LEADING_FILLER:
        words.pop(0)
    return " ".join(words)


def named_container(text: str, containers: list[str] | tuple[str, ...]) -> str:
    """The only container of `containers` that `text` mentions, else `text` normalised."""
    got = normalize_container(text)
    mentioned = {c.lower() for c in containers if re.search(rf"\b{re.escape(c.lower())}\b", got)}
    return mentioned.pop() if len(mentioned) == 1 else got


def container_matches(text: str, answer: str, containers: list[str] | tuple[str, ...]) -> bool:
    """True if `text` names `answer`: exactly (after normalising), or as the only container it mentions."""
    return (
        normalize_container(text) == normalize_container(answer) or named_container(text, containers) == answer.lower()
    )
