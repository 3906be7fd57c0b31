"""The organism's measures and findings: token kinds and contexts by hand, the measures' shapes and ranges on a
tiny organism, the findings' verdicts on hand-made records, the hop counts RL is run on."""

from __future__ import annotations

import math

import pytest

from tests.experiments.organism_tiny import MAX_PARAMS, build_tiny_organism
from thinkaloud.data.organism import ROUTES, OrganismTask, balanced_items, route_text
from thinkaloud.data.task import Item
from thinkaloud.experiments.organism.config import OrganismExperimentConfig
from thinkaloud.experiments.organism.findings import organism_findings
from thinkaloud.experiments.organism.measures import (
    contexts,
    mean_summaries,
    measure,
    mistake_index,
    summarise,
    token_kinds,
)
from thinkaloud.experiments.organism.run import choose_ks
from thinkaloud.model.loading import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

ITEM = Item(id="x", question="c=b;a=3;x=7;b=a;y=x;d=c;?d", answer="3", meta={"chain": ["d", "c", "b", "a"], "k": 4})


def test_token_kinds_by_hand():
    assert token_kinds(list(">dcb=3.")) == ["other", "other", "hop", "hop", "other", "answer", "other"]
    assert token_kinds(list("....=3.")) == ["filler"] * 4 + ["other", "answer", "other"]
    assert token_kinds(list("=3..")) == ["other", "answer", "other", "other"]  # dots after the answer: not filler
    assert token_kinds(["d", "c", "</s>"], before=">") == ["other", "hop", "other"]  # d copies the query
    assert token_kinds(["b", "=", "3"], before=">dc") == ["hop", "other", "answer"]
    assert token_kinds(["3"], before="....=") == ["answer"]


def test_contexts_and_the_corrupted_hop_by_hand():
    assert contexts(ITEM) == {"prompt": "", "filler": ".....", "hops": ">dcba"}
    assert route_text(ITEM, "hops").startswith(contexts(ITEM)["hops"] + "=")
    assert mistake_index(ITEM) == 3
    assert mistake_index(Item(id="y", question="a=3;?a", answer="3", meta={"chain": ["a"], "k": 1})) is None


def test_balanced_items_have_every_hop_count_equally():
    items = balanced_items(OrganismTask(), 3, seed=0)
    assert sorted(it.meta["k"] for it in items) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


@pytest.fixture(scope="module")
def tiny_organism(tmp_path_factory):
    folder, params = build_tiny_organism(tmp_path_factory.mktemp("organism") / "model")
    assert params < MAX_PARAMS, params
    return folder


@pytest.mark.parametrize("offset", [-math.inf, 2.0])  # no exits; exits made likely on fresh heads
def test_measures_on_a_tiny_organism_have_their_shapes_and_ranges(tiny_organism, offset):
    loaded = load_model(str(tiny_organism))
    task = OrganismTask()
    items = balanced_items(task, 2, seed=0)
    records = measure(loaded.model, loaded.tokenizer, task, items, offset=offset, seed=0, samples=2)
    L = loaded.model.num_layers
    assert [r["id"] for r in records] == [it.id for it in items]
    for r in records:
        completions = [r["free"]["greedy"], *r["free"]["samples"], *r["forced"].values()]
        assert len(r["free"]["samples"]) == 2 and set(r["forced"]) == set(ROUTES)
        for c in completions:
            assert len(c["exits"]) == len(c["kinds"]) >= 1 and all(1 <= e <= L for e in c["exits"])
            assert c["route"] in (*ROUTES, None)
        assert all(r["forced"][route]["route"] == route for route in ROUTES)
        assert (r["mistake"] is None) == (r["k"] < 2)
        if offset == -math.inf:
            assert all(e == L for c in completions for e in c["exits"])
    s = summarise(records, L)
    assert sum(s["route_shares"].values()) == pytest.approx(1.0)
    fractions = [*s["route_shares"].values(), s["accuracy"], s["depth_frac"], *s["necessity"].values()]
    fractions += [s["mistakes"][key] for key in ("followed", "original", "clean")]
    assert all(0 <= x <= 1 for x in fractions), s
    assert s["mistakes"]["n"] == 6  # k = 2, 3, 4, two items each
    assert all(0 <= k_acc <= 1 for by_k in s["forced_accuracy"].values() for k_acc in by_k.values())


def test_mean_summaries_average_numbers_and_skip_missing_values():
    a = {"x": 1.0, "d": {"k": 0.2, "n": None}, "label": "a"}
    b = {"x": 3.0, "d": {"k": 0.4, "n": 2.0}, "label": "b"}
    assert mean_summaries([a, b]) == {"x": 2.0, "d": {"k": pytest.approx(0.3), "n": 2.0}, "label": "a"}


def test_rl_hop_counts_are_where_direct_and_hops_are_close():
    card = {"direct": {"1": 0.95, "2": 0.7, "3": 0.3}, "hops": {"1": 1.0, "2": 0.98, "3": 0.97}}
    assert choose_ks(card, 0.10) == [1]
    assert choose_ks(card, 0.30) == [1, 2]
    assert choose_ks({"direct": {"1": 0.5, "2": 0.1}, "hops": {"1": 0.9, "2": 0.9}}, 0.1) == [1]  # smallest gap


def test_config_refuses_seeds_that_are_not_consecutive_and_unknown_penalties():
    with pytest.raises(ValueError, match="consecutive"):
        OrganismExperimentConfig(seeds=[0, 2])
    with pytest.raises(ValueError, match="penalties"):
        OrganismExperimentConfig(penalties=["mean", "deepest"])
    arms = OrganismExperimentConfig(lam=0.5).arms()
    assert arms == {"control": (0.0, "mean"), "mean-penalty": (0.5, "mean"), "max-penalty": (0.5, "max")}


# ---------------------------------------------------------------------------------------------------
# Findings on hand-made records


def record(i: int, k: int, routes: list[str], *, direct_ok=True, follow=True) -> dict:
    """A record whose sampled completions take ``routes`` (all correct), with forced routes and tests."""
    completion = lambda route, ok=True: {
        "text": "", "route": route, "correct": ok, "exits": [1, 3, 6], "kinds": ["hop", "other", "answer"]
    }  # fmt: skip
    forced = {r: completion(r, direct_ok if r == "direct" else True) for r in ROUTES}
    forced["direct"]["kinds"] = ["answer", "other", "other"]
    forced["direct"]["exits"] = [6, 6, 6]
    return {
        "id": str(i),
        "k": k,
        "answer": "3",
        "free": {"greedy": completion(routes[0]), "samples": [completion(r) for r in routes]},
        "forced": forced,
        "necessity": {
            "prompt": {"correct": False, "exit": 6},
            "filler": {"correct": False, "exit": 6},
            "hops": {"correct": True, "exit": 2},
        },
        "mistake": None if k < 2 else {"followed": follow, "original": not follow, "clean": True},
    }


def test_findings_on_records_where_every_claim_holds():
    n = 40
    ks = [1 + i % 2 for i in range(n)]
    organism = [record(i, k, ["direct"], direct_ok=k == 1) for i, k in enumerate(ks)]
    sft = [record(i, k, ["direct", "hops"]) for i, k in enumerate(ks)]
    penalty = {0: [record(i, k, ["hops", "hops"]) for i, k in enumerate(ks)]}
    control = {0: [record(i, k, ["direct", "filler"]) for i, k in enumerate(ks)]}
    found = organism_findings(organism, sft, {"mean-penalty": penalty}, control, 6)
    assert [f.finding[:4] for f in found] == ["(O1)", "(O2)", "(O3)", "(O4)", "(O5a"]
    verdicts = {f.finding[:4]: f.verdict for f in found}
    assert verdicts == {"(O1)": "held", "(O2)": "held", "(O3)": "held", "(O4)": "held", "(O5a": "did not hold"}


def test_o3_fails_when_the_penalty_costs_accuracy():
    ks = [2] * 30
    organism = sft = [record(i, k, ["direct"]) for i, k in enumerate(ks)]
    penalty = [record(i, k, ["hops"]) for i, k in enumerate(ks)]
    for r in penalty:
        r["free"]["samples"][0]["correct"] = False
    control = {0: [record(i, k, ["direct"]) for i, k in enumerate(ks)]}
    found = organism_findings(organism, sft, {"mean-penalty": {0: penalty}}, control, 6)
    assert found[2].finding.startswith("(O3)") and found[2].verdict == "did not hold"
