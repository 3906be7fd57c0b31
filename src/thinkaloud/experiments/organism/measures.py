"""The organism's measures: which route a model takes, how deep each kind of token runs, and whether the written
hops carry the answer.

On an early-exit model (``thinkaloud.model.loading.load_model``) and test items of the ``organism`` task, every
generated token with exits (at ``offset``; None: the model's recorded offset, ``-inf`` for a base model that
never exits), exits drawn from one seeded generator, per item:

- ``free``: ``samples`` completions at temperature 1 (the policy RL trains; every route appears) and one greedy
  completion from the bare prompt, each with its route (``route_of``), correctness, exit layer and kind of
  every token (:func:`token_kinds`);
- ``forced``: per route, its first token (``=``, ``>``, ``.``) appended to the prompt, then greedy: the card's
  accuracy per route and k, here with exits;
- ``necessity``: the answer forced (``=`` appended, the digit read greedily) right after the prompt, after k + 1
  filler dots and after the canonical written hops: correct or not, and the exit layer of that digit;
- ``mistake`` (k ≥ 2): the canonical hops with the last hop replaced (``corrupt_hop`` at index k − 1: the
  first variable of the prompt off the chain whose chain ends in another digit), continued greedily; the
  answer follows the corrupted chain (its implied digit), the original, or neither. The control ``clean``
  continues the uncorrupted prefix of the same length.

Records (one JSON object per item) keep every per-item value, for the findings' bootstrap over items;
:func:`summarise` aggregates them. :func:`measure_model` writes both into a folder and reuses a finished one.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from thinkaloud.data.organism import (
    DIGITS,
    FIRST_TOKEN,
    LETTERS,
    ROUTES,
    OrganismTask,
    corrupt_hop,
    route_of,
)
from thinkaloud.data.organism import route_text as canonical
from thinkaloud.data.prompts import left_pad, pad_id, prompt_ids
from thinkaloud.data.task import Item
from thinkaloud.io import atomic_write_json, atomic_write_text

RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
KINDS = ("hop", "filler", "answer", "other")
CONTEXTS = ("prompt", "filler", "hops")  # necessity: what precedes the forced answer
BATCH = 64


# ---------------------------------------------------------------------------------------------------
# Pieces


def token_kinds(pieces: Sequence[str], before: str = "") -> list[str]:
    """The kind of each generated token (``before``: the text the generation continues): ``hop`` (a written
    lookup: a letter of ``>dcba`` after the first, which copies the query), ``filler`` (a ``.`` before any
    ``=``), ``answer`` (a digit right after ``=``) or ``other`` (``>``, the copied query letter, ``=``, the
    closing ``.``, the end token, anything else)."""
    kinds, prev, answered = [], before[-1:], "=" in before
    head = before.rsplit(">", 1)[1] if ">" in before and not answered else None  # letters written after '>'
    for piece in pieces:
        if piece == ">" and not answered:
            head = ""
        if piece in LETTERS and head is not None and not answered:
            kinds.append("hop" if head else "other")
            head += piece
        elif piece == "." and not answered:
            kinds.append("filler")
        elif piece in DIGITS and prev == "=":
            kinds.append("answer")
        else:
            kinds.append("other")
        answered |= piece == "="
        prev = piece[-1:] or prev
    return kinds


def hops_prefix(item: Item) -> str:
    """The canonical written hops of ``item`` before its answer (``">dcba"``)."""
    return canonical(item, "hops").split("=", 1)[0]


def contexts(item: Item) -> dict[str, str]:
    """What the necessity test puts between the prompt and the forced ``=``: nothing, k + 1 dots (the filler
    route, as many tokens as the written hops) or the written hops."""
    return {"prompt": "", "filler": canonical(item, "filler").split("=", 1)[0], "hops": hops_prefix(item)}


def mistake_index(item: Item) -> int | None:
    """The hop the mistake-following test corrupts: the last one that is a lookup (k − 1); None for k < 2."""
    k = int(item.meta["k"])
    return k - 1 if k >= 2 else None


# ---------------------------------------------------------------------------------------------------
# Generation


class Generator:
    """Continuations of ``prompt text + suffix`` by one model, with exits, in batches: (text, pieces, exits)."""

    def __init__(self, model, tokenizer, task: OrganismTask, offset: float | None, seed: int, batch_size: int = BATCH):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.kwargs: dict[str, Any] = {} if offset is None else {"offset": offset}
        self.generator = torch.Generator(device=model.device).manual_seed(seed)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(
        self, items: Sequence[Item], suffixes: Sequence[str], max_new_tokens: int, sample: bool = False
    ) -> list[tuple[str, list[str], list[int]]]:
        tok, out_rows = self.tokenizer, []
        for s in range(0, len(items), self.batch_size):
            rows = [
                prompt_ids(tok, self.task.prompt(it, tok) + suffix)
                for it, suffix in zip(items[s : s + self.batch_size], suffixes[s : s + self.batch_size])
            ]
            ids, mask = left_pad(rows, pad_id(tok), self.model.device)
            out = self.model.generate(
                ids,
                mask,
                max_new_tokens=max_new_tokens,
                do_sample=sample,
                pad_token_id=pad_id(tok),
                generator=self.generator,
                **self.kwargs,
            )
            for row, exits, n in zip(out.new_tokens.tolist(), out.exit_layers.tolist(), out.lengths.tolist()):
                text = tok.decode(row[:n], skip_special_tokens=True).replace(" ", "")
                out_rows.append((text, tok.convert_ids_to_tokens(row[:n]), exits[:n]))
        return out_rows


def _completion(task: OrganismTask, item: Item, before: str, generated: tuple[str, list[str], list[int]]) -> dict:
    text, pieces, exits = generated
    full = before + text
    return {
        "text": full,
        "route": route_of(full),
        "correct": bool(task.score(item, full)),
        "exits": exits,
        "kinds": token_kinds(pieces, before),
    }


def _first(exits: list[int]) -> int | None:
    return exits[0] if exits else None


def measure(
    model, tokenizer, task: OrganismTask, items: Sequence[Item], *, offset: float | None, seed: int, samples: int = 4
) -> list[dict[str, Any]]:
    """One record per item (module docstring): ``{"id", "k", "answer", "free": {"greedy", "samples"}, "forced":
    {route: completion}, "necessity": {context: {"correct", "exit"}}, "mistake": {…} or None}``; a completion is
    ``{"text", "route", "correct", "exits", "kinds"}`` (exits and kinds per generated token)."""
    gen = Generator(model, tokenizer, task, offset, seed)
    items = list(items)
    n_new = 2 * task.config.max_k + 4  # the longest route, its answer, "." and the end token
    none = [""] * len(items)
    greedy = gen(items, none, n_new)
    sampled = [gen(items, none, n_new, sample=True) for _ in range(samples)]
    forced = {r: gen(items, [FIRST_TOKEN[r]] * len(items), n_new) for r in ROUTES}
    necessity = {c: gen(items, [contexts(it)[c] + "=" for it in items], 1) for c in CONTEXTS}
    hard = [(i, it, j) for i, it in enumerate(items) if (j := mistake_index(it)) is not None]
    corrupted = [corrupt_hop(it, j) for _, it, j in hard]
    clean = ["".join(f">{v}" for v in it.meta["chain"][: j + 1]) for _, it, j in hard]
    followed = gen([it for _, it, _ in hard], [p for p, _ in corrupted], n_new)
    controls = gen([it for _, it, _ in hard], clean, n_new)
    mistakes: dict[int, dict[str, Any]] = {}
    for (i, it, j), (prefix, implied), (text, _, _), before, control in zip(hard, corrupted, followed, clean, controls):
        answer = task.extract_answer(prefix + text)
        mistakes[i] = {
            "index": j,
            "prefix": prefix,
            "implied": implied,
            "text": prefix + text,
            "answer": answer,
            "followed": answer is not None and answer == implied,
            "original": answer is not None and answer == it.answer,
            "clean": bool(task.score(it, before + control[0])),
        }
    records = []
    for i, it in enumerate(items):
        records.append(
            {
                "id": it.id,
                "k": int(it.meta["k"]),
                "answer": it.answer,
                "free": {
                    "greedy": _completion(task, it, "", greedy[i]),
                    "samples": [_completion(task, it, "", s[i]) for s in sampled],
                },
                "forced": {r: _completion(task, it, FIRST_TOKEN[r], forced[r][i]) for r in ROUTES},
                "necessity": {
                    c: {"correct": necessity[c][i][0][:1] == it.answer, "exit": _first(necessity[c][i][2])}
                    for c in CONTEXTS
                },
                "mistake": mistakes.get(i),
            }
        )
    return records


# ---------------------------------------------------------------------------------------------------
# Aggregates


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def route_shares(records: Sequence[dict[str, Any]], which: str = "samples") -> dict[str, float]:
    """Share of each route (and ``None``: no route) among the free completions (``samples`` or ``greedy``)."""
    routes = [c["route"] for r in records for c in _free(r, which)]
    return {str(route): routes.count(route) / max(len(routes), 1) for route in (*ROUTES, None)}


def _free(record: dict[str, Any], which: str) -> list[dict[str, Any]]:
    return record["free"]["samples"] if which == "samples" else [record["free"]["greedy"]]


def item_share(record: dict[str, Any], route: str) -> float:
    """Share of ``route`` among one item's sampled completions."""
    samples = record["free"]["samples"]
    return sum(c["route"] == route for c in samples) / max(len(samples), 1)


def item_accuracy(record: dict[str, Any]) -> float:
    """Accuracy of one item's sampled completions."""
    samples = record["free"]["samples"]
    return sum(c["correct"] for c in samples) / max(len(samples), 1)


def exit_by_kind(completions: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Mean exit layer of the tokens of each kind (``hop``, ``filler``, ``answer``, ``other``) and of the answer
    digit per route (``answer_<route>``), token-weighted over ``completions``."""
    layers: dict[str, list[int]] = {key: [] for key in (*KINDS, *(f"answer_{r}" for r in ROUTES))}
    for c in completions:
        for kind, layer in zip(c["kinds"], c["exits"]):
            layers[kind].append(layer)
            if kind == "answer" and c["route"] is not None:
                layers[f"answer_{c['route']}"].append(layer)
    return {key: _mean(v) for key, v in layers.items()}


def accuracy_by_route_k(completions: Sequence[tuple[int, dict[str, Any]]]) -> dict[str, dict[int, float]]:
    """{route: {k: accuracy}} of (k, completion) pairs, for the routes and k that occur."""
    cells: dict[str, dict[int, list[bool]]] = {}
    for k, c in completions:
        if c["route"] is not None:
            cells.setdefault(c["route"], {}).setdefault(k, []).append(c["correct"])
    return {r: {k: sum(v) / len(v) for k, v in sorted(by_k.items())} for r, by_k in cells.items()}


def summarise(records: Sequence[dict[str, Any]], num_layers: int) -> dict[str, Any]:
    """The aggregates of :func:`measure`'s records (``num_layers``: L, for the depth ℓ/L)."""
    samples = [c for r in records for c in r["free"]["samples"]]
    tokens = [x for c in samples for x in c["exits"]]
    hard = [r["mistake"] for r in records if r["mistake"] is not None]
    return {
        "n": len(records),
        "num_layers": num_layers,
        "route_shares": route_shares(records),
        "route_shares_greedy": route_shares(records, "greedy"),
        "accuracy": _mean([c["correct"] for c in samples]),
        "accuracy_greedy": _mean([r["free"]["greedy"]["correct"] for r in records]),
        "accuracy_by_route_k": accuracy_by_route_k([(r["k"], c) for r in records for c in r["free"]["samples"]]),
        "forced_accuracy": accuracy_by_route_k([(r["k"], c) for r in records for c in r["forced"].values()]),
        "depth_frac": sum(tokens) / num_layers / len(tokens) if tokens else None,
        "exit_by_kind": exit_by_kind(samples),
        "exit_by_kind_forced": exit_by_kind([c for r in records for c in r["forced"].values()]),
        "necessity": {c: _mean([r["necessity"][c]["correct"] for r in records]) for c in CONTEXTS},
        "mistakes": {
            "n": len(hard),
            "followed": _mean([m["followed"] for m in hard]),
            "original": _mean([m["original"] for m in hard]),
            "clean": _mean([m["clean"] for m in hard]),
        },
    }


def mean_summaries(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The mean of several summaries (an arm's seeds), leaf by leaf; a leaf that is None or missing in some is
    averaged over the others, and one that is not a number is taken from the first."""

    def merge(values: list[Any]) -> Any:
        present = [v for v in values if v is not None]
        if not present:
            return None
        if all(isinstance(v, dict) for v in present):
            keys = list(dict.fromkeys(k for v in present for k in v))
            return {k: merge([v.get(k) for v in present]) for k in keys}
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
            return sum(present) / len(present)
        return present[0]

    return merge(list(summaries))


# ---------------------------------------------------------------------------------------------------
# A measured model, in a folder


def measure_model(
    spec: str,
    out: Path,
    task: OrganismTask,
    items: Sequence[Item],
    *,
    seed: int,
    samples: int = 4,
    offset: float | None = None,
) -> dict[str, Any]:
    """Measure the model ``spec`` names into ``out`` (``records.jsonl``, ``summary.json``); a folder that holds
    a summary already is read, not measured again. Returns the summary."""
    from thinkaloud.model.loading import load_model

    out = Path(out)
    if (out / SUMMARY_FILE).exists():
        return json.loads((out / SUMMARY_FILE).read_text())
    loaded = load_model(spec)
    offset = -math.inf if loaded.is_base else offset  # fresh heads never fire: the base model at full depth
    records = measure(loaded.model, loaded.tokenizer, task, items, offset=offset, seed=seed, samples=samples)
    atomic_write_text(out / RECORDS_FILE, "".join(json.dumps(r) + "\n" for r in records))
    summary = {
        "model": spec,
        "offset": None if offset is None else str(offset),
        **summarise(records, loaded.model.num_layers),
    }
    atomic_write_json(out / SUMMARY_FILE, summary)
    return summary


def read_records(folder: Path) -> list[dict[str, Any]]:
    """The records a measured folder holds."""
    return [json.loads(line) for line in (Path(folder) / RECORDS_FILE).read_text().splitlines() if line.strip()]
