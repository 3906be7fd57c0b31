"""The organism's recipe at a tiny size: tokenizer, batches, the loss, the cache and the ``organism`` alias."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from thinkaloud import hub
from thinkaloud.data.organism import OrganismConfig, parse_assignments, resolve, route_of
from thinkaloud.data.splits import split_of
from thinkaloud.data.task import render_prompt
from thinkaloud.experiments.organism import pretrain as P
from thinkaloud.experiments.organism.model import OrganismModelConfig, build_tokenizer, organism_folder
from thinkaloud.model.loading import check_model_spec

TINY = OrganismModelConfig(
    layers=2, hidden=32, heads=2, intermediate=64, steps=40, batch=12, lr=3e-3, warmup=5, eval_n=2,
    task=OrganismConfig(ks=(1, 2), max_k=2, distractors=1),
)  # fmt: skip


def row(prompt: str, completion: str) -> P.Row:
    return [(f"<s>{prompt}", False), (completion, True), ("</s>", True)]


def test_tokenizer_is_one_token_per_character_and_round_trips():
    tok = build_tokenizer()
    text = "c=b;a=3;?c>cba=3."
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == list(text)
    assert tok.decode(ids) == text
    assert render_prompt("a=3;?a", tok) == "<s>a=3;?a"
    assert tok("<s>a=3;?a", add_special_tokens=False).input_ids[0] == tok.bos_token_id


def test_assignment_tokens_only_in_the_prompt_and_their_embeddings_start_factorised():
    tok = build_tokenizer(assignment_tokens=True)
    ids = tok("<s>c=b;a=3;?c>cba=3.", add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(ids) == [
        "<s>",
        "c=b",
        ";",
        "a=3",
        ";",
        "?",
        "c",
        ">",
        "c",
        "b",
        "a",
        "=",
        "3",
        ".",
    ]
    assert tok.convert_ids_to_tokens(tok("?a=3.", add_special_tokens=False).input_ids) == list("?a=3.")
    model = P.build_model(TINY, len(tok), {"pad": 0, "bos": 1, "eos": 2})
    P.init_assignment_embeddings(model, tok, seed=0)
    emb, v = model.get_input_embeddings().weight, tok.get_vocab()
    torch.testing.assert_close(emb[v["c=b"]] - emb[v["a=b"]], emb[v["c"]] - emb[v["a"]])  # left side: the letter
    assert not torch.allclose(emb[v["c=b"]] - emb[v["c=d"]], emb[v["b"]] - emb[v["d"]])  # right side: rotated


def test_encode_batch_labels_only_the_completion_and_matches_the_tokenizer():
    tok = build_tokenizer()
    ids, mask, labels = P.encode_batch([row("a=3;?a", "=3."), row("b=1;a=b;?a", ">ab=1.")], tok)
    assert ids.shape == mask.shape == labels.shape == (2, 1 + 10 + 6 + 1)  # <s> b=1;a=b;?a | >ab=1. </s>
    assert ids[1].tolist() == tok("<s>b=1;a=b;?a>ab=1.</s>", add_special_tokens=False).input_ids
    assert (labels[0, :7] == -100).all() and labels[0, 7:11].tolist() == ids[0, 7:11].tolist()  # =3.</s>
    assert (labels[0, 11:] == -100).all() and mask[0].sum() == 11  # padding: unlabelled, masked
    assert (labels[1, :11] == -100).all() and (labels[1, 11:] == ids[1, 11:]).all()


def test_batches_draw_train_prompts_with_hops_first_then_equal_routes_and_more_queries():
    config = OrganismModelConfig(steps=10, batch=12, curriculum=0.3, queries=3)
    early = P.draw_batch(random.Random(0), config, step=2)
    late = P.draw_batch(random.Random(0), config, step=3)
    for rows in (early, late):
        for r in rows:
            assert r[0][0].startswith("<s>") and split_of(r[0][0][3:]) == "train" and r[-1] == ("</s>", True)
            assert [on for _, on in r] == [False, True, False, True, False, True, True]  # 3 queries
            assigns = parse_assignments(r[0][0][3:])
            for (query, _), (completion, _) in zip([(r[0][0][-2:], 0), r[2], r[4]], [r[1], r[3], r[5]]):
                assert query[0] == "?" and resolve(assigns, query[1]) == completion[-2]  # answered right
    assert {route_of(r[i][0]) for r in early for i in (1, 3, 5)} == {"hops"}
    assert [route_of(r[1][0]) for r in late] == ["direct", "hops", "filler"] * 4
    assert [route_of(r[3][0]) for r in late] == ["hops", "filler", "direct"] * 4


def test_exit_weights():
    assert P.exit_weights(4, False).tolist() == [0, 0, 0, 1]
    w = P.exit_weights(4, True)
    assert torch.allclose(w, torch.tensor([1, 2, 3, 4]) / 10) and w.sum().item() == pytest.approx(1)


def test_layer_losses_read_every_layer_and_the_last_is_the_models_own(one_thread):
    tok = build_tokenizer()
    model = P.build_model(TINY, len(tok), {"pad": 0, "bos": 1, "eos": 2}).eval()
    batch = P.encode_batch([row("a=3;?a", "=3."), row("b=1;a=b;?a", ">ab=1.")], tok)
    losses = P.layer_losses(model, *batch)
    assert losses.shape == (2,)
    own = model(input_ids=batch[0], attention_mask=batch[1], labels=batch[2]).loss
    torch.testing.assert_close(losses[-1], own)


def test_recipe_digest_names_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("THINKALOUD_CACHE", str(tmp_path))
    assert organism_folder(TINY) != organism_folder(OrganismModelConfig())
    assert OrganismModelConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    assert organism_folder(TINY).parent == tmp_path / "models"


def test_pretraining_learns_and_is_cached_once(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("THINKALOUD_CACHE", str(tmp_path))
    seen: list[float] = []
    real = P.pretrain

    def recording(config, progress=True, on_step=None):
        return real(config, progress=False, on_step=lambda s, losses: seen.append(losses[-1].item()))

    monkeypatch.setattr(P, "pretrain", recording)
    folder = P.ensure_organism(TINY, progress=False)
    weights = load_file(str(folder / "model.safetensors"))
    assert sum(t.numel() for t in weights.values()) < 100_000  # tiny
    assert len(seen) == TINY.steps and sum(seen[-5:]) / 5 < sum(seen[:5]) / 5 - 0.5
    record = json.loads((folder / "organism.json").read_text())
    assert record["digest"] == TINY.digest() and set(record["accuracy"]) == {"direct", "hops", "filler"}
    assert set(record["accuracy"]["hops"]) == {"1", "2"}
    assert "| hops |" in (folder / "README.md").read_text()
    monkeypatch.setattr(P, "pretrain", lambda *a, **k: pytest.fail("a built organism is not rebuilt"))
    assert P.ensure_organism(TINY, progress=False) == folder


def test_a_built_alias_resolves_through_its_builder(tmp_path, monkeypatch):
    folder = tmp_path / "m"
    monkeypatch.setitem(hub.BUILDERS, "tiny-organism", lambda: folder)
    assert hub.resolve_model_path("tiny-organism") == str(folder)
    check_model_spec("tiny-organism")  # an alias: not checked as a path
    assert "organism" in hub.BUILDERS  # registered by the package facade
