"""The organism task: well-formed chains, one answer, routes, the scorer, and the mistake of mistake following."""

from __future__ import annotations

import pytest

from thinkaloud.data.organism import (
    ROUTES,
    OrganismConfig,
    OrganismTask,
    corrupt_hop,
    parse_assignments,
    resolve,
    route_of,
    route_text,
    written_hops,
)
from thinkaloud.data.splits import SPLITS
from thinkaloud.data.task import Item
from thinkaloud.data.tasks import get_task


def test_chains_are_well_formed_with_a_single_answer():
    task = OrganismTask(OrganismConfig(ks=(1, 2, 3, 4), max_k=4, distractors=3))
    for item in task.items(60, seed=3, split="train"):
        assigns = parse_assignments(item.question)
        lefts = [part.split("=")[0] for part in item.question.split(";")[:-1]]
        assert len(lefts) == len(set(lefts)) == len(assigns)  # every variable assigned once
        assert item.question.endswith(f";?{item.meta['chain'][0]}")
        chain, k = item.meta["chain"], item.meta["k"]
        assert len(chain) == k and resolve(assigns, chain[0]) == item.answer
        for a, b in zip(chain, chain[1:]):
            assert assigns[a] == b  # the chain is the query's path through the assignments
        digits = [v for v in assigns.values() if v.isdigit()]
        assert len(digits) == len(set(digits)) == 4  # one digit per chain: distractors end elsewhere
        assert item.answer in digits and len(assigns) > k  # distractors exist


def test_items_are_reproducible_disjoint_across_splits_and_cycle_through_hop_counts():
    task = get_task("organism:2,3")
    a = task.items(10, seed=0, split="test")
    assert a == task.items(10, seed=0, split="test")
    assert {i.meta["k"] for i in a} == {2, 3}
    keys = {s: {i.key for i in task.items(30, seed=0, split=s)} for s in SPLITS}
    assert not (keys["train"] & keys["test"]) and not (keys["train"] & keys["validation"])
    with pytest.raises(ValueError, match="comma-separated integers"):
        get_task("organism:two")
    with pytest.raises(ValueError, match="hop counts in 1..max_k"):
        get_task("organism:5")


ITEM = Item("organism/x", "c=b;a=3;x=7;b=a;y=x;d=c;?d", "3", meta={"chain": ["d", "c", "b", "a"], "k": 4})


def test_routes_and_scorer_on_hand_cases():
    task = OrganismTask()
    assert route_text(ITEM, "direct") == "=3."
    assert route_text(ITEM, "hops") == ">dcba=3."
    assert route_text(ITEM, "filler") == ".....=3."
    assert len(route_text(ITEM, "filler")) == len(route_text(ITEM, "hops"))
    for route in ROUTES:
        text = route_text(ITEM, route)
        assert route_of(text) == route and task.score(ITEM, text) == 1.0
    assert route_of("3.") is None and route_of("") is None
    assert task.score(ITEM, ">dcy=7.") == 0.0  # a wrong chain, a wrong digit
    assert task.score(ITEM, ">dcba=") == 0.0 and task.extract_answer(">dc") is None  # no answer yet
    assert task.extract_answer("=7.=3.") == "3"  # the last '=' decides
    assert written_hops(">dcba=3.") == ["d", "c", "b", "a"] and written_hops("=3.") == [] == written_hops("..=3.")


def test_mistake_injection_changes_exactly_one_hop_and_implies_another_answer():
    prefix, implied = corrupt_hop(ITEM, 2)
    canonical = written_hops(route_text(ITEM, "hops"))
    hops = written_hops(prefix + "=")
    assert hops[:2] == canonical[:2] and len(hops) == 3  # cut after the corrupted hop
    assert hops[2] != canonical[2] and hops[2] not in ITEM.meta["chain"]
    assert implied == resolve(parse_assignments(ITEM.question), hops[2]) and implied != ITEM.answer
    assert corrupt_hop(ITEM, 2) == (prefix, implied)  # deterministic
    with pytest.raises(ValueError, match="hop index"):
        corrupt_hop(ITEM, 0)
