"""The risk job on a tiny model built in code: losses, the command end to end, and the recorded offset."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.tiny import tiny_model_dir
from thinkaloud.cli import main
from thinkaloud.config import ExitConfig
from thinkaloud.data.tasks import get_task
from thinkaloud.eval.offset import eval_offset
from thinkaloud.eval.run import evaluate
from thinkaloud.measures.config import EvalConfig
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.model.loading import load_model
from thinkaloud.model.recorded import META_FILE, RISK_KEY, record_offset, recorded_offset
from thinkaloud.risk.config import RiskConfig, parse_offsets
from thinkaloud.risk.losses import CHECKPOINT_EVERY, answer_stats, rollouts, token_stats, token_stats_per_offset
from thinkaloud.risk.ltt import fixed_sequence

pytestmark = pytest.mark.usefixtures("one_thread")
TASK = "rg:chain_sum"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "base")


def _saved(tiny_dir, folder, bias: float | None = None):
    """A saved early-exit model on the tiny base (exit layers 2 and 4); ``bias`` sets every head's bias."""
    model = EarlyExitModel.from_base(tiny_dir, ExitConfig(exit_layers=[2, 4]))
    if bias is not None:
        with torch.no_grad():
            model.heads.bias.fill_(bias)
    model.save_pretrained(folder)
    return folder


def test_offsets_and_config_validation(tmp_path):
    assert parse_offsets("-4:8:1") == [float(x) for x in range(-4, 9)]
    assert parse_offsets("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_offsets("0:1:0.3") == [0.0, 0.3, 0.6, 0.9]
    for bad in ("1:0:1", "0:1:0", "0:1", "a:b:c", "0:inf:1", "0:1000:1"):
        with pytest.raises(ValueError, match="offsets"):
            parse_offsets(bad)
    ok = {"model": "m", "out": str(tmp_path), "epsilon": 0.1}
    for bad in (
        {"epsilon": 0.0},
        {"delta": 1.0},
        {"risk": "tokens"},
        {"n": 0},
        {"val_n": 0},
        {"split": "dev"},
        {"split": "test", "val_split": "test"},
        {"offsets": "3:1:1"},
    ):
        with pytest.raises(ValueError):
            RiskConfig(**{**ok, **bad})


def test_risk_is_exactly_zero_at_minus_inf_and_not_when_exits_fire(tiny_dir, tmp_path):
    """Heads that almost always fire at offset 0: the losses are > 0 there and exactly 0 at offset −∞."""
    loaded = load_model(str(_saved(tiny_dir, tmp_path / "model", bias=4.0)), device="cpu")
    task = get_task(TASK)
    items = task.items(3, seed=0, split="validation")
    roll = rollouts(loaded, task, items, max_new_tokens=8, batch_size=2, device="cpu")
    off = token_stats(loaded.model, roll, -math.inf, seed=0)
    assert off.losses == [0.0, 0.0, 0.0]
    assert all(layer == 6 for layers in off.layers for layer in layers)
    on = token_stats(loaded.model, roll, 0.0, seed=0)
    assert all(0.0 <= x <= 1.0 for x in on.losses) and sum(on.losses) > 0
    assert on.summary(loaded.model)["als"] > 0.3
    assert (
        [len(x) for x in on.layers]
        == [len(x) for x in off.layers]
        == roll.batches[0].lengths.tolist() + roll.batches[1].lengths.tolist()
    )
    answers = answer_stats(loaded, task, roll, -math.inf, seed=0, max_new_tokens=8)
    assert answers.losses == [0.0, 0.0, 0.0]


def _whole_pass_stats(model, roll, offsets, seed):
    """Token risk the plain way: per offset, every predicting position run with exits sampled."""
    out = {o: ([], []) for o in offsets}
    generators = {o: torch.Generator().manual_seed(seed) for o in offsets}
    for gen in roll.batches:
        sl = gen.predicting_positions()
        cache = model.prefix_cache(gen.sequences[:, : sl.start], gen.attention_mask[:, : sl.start])
        args = (cache, gen.sequences[:, sl], gen.attention_mask[:, : sl.stop])
        ref = model.forward_after(*args).logits.argmax(-1)
        for o in offsets:
            sampled = model.forward_after(*args, exit_layers="sample", offset=o, generator=generators[o])
            differ = (sampled.logits.argmax(-1) != ref) & gen.completion_mask
            out[o][0].extend((differ.sum(-1).double() / gen.completion_mask.sum(-1)).tolist())
            out[o][1].extend(sampled.exit_layers[i, :n].tolist() for i, n in enumerate(gen.lengths.tolist()))
    return out


def test_token_risk_from_the_first_exit_equals_the_whole_pass(tiny_dir, tmp_path, monkeypatch):
    """Each offset's pass starts at the chunk of its first exit; losses and exits are those of the whole pass."""
    loaded = load_model(str(_saved(tiny_dir, tmp_path / "model", bias=-3.0)), device="cpu")
    model, task = loaded.model, get_task(TASK)
    N = 3 * CHECKPOINT_EVERY
    roll = rollouts(
        loaded, task, task.items(6, seed=0, split="validation"), max_new_tokens=N, batch_size=2, device="cpu"
    )
    offsets = [-math.inf, -4.0, -3.0, -2.5, -2.0, -1.5, -1.0, 0.0, 2.0, 6.0]
    whole = _whole_pass_stats(model, roll, offsets, seed=0)
    widths, heights = [], []  # columns and rows of every sampled pass
    forward_after = model.forward_after

    def recording(cache, input_ids, *args, **kwargs):
        if args[1:2] == ("sample",) or kwargs.get("exit_layers") == "sample":
            heights.append(input_ids.shape[0])
            widths.append(input_ids.shape[1])
        return forward_after(cache, input_ids, *args, **kwargs)

    monkeypatch.setattr(model, "forward_after", recording)
    fast = token_stats_per_offset(model, roll, offsets, seed=0)
    for o, st in zip(offsets, fast):
        assert st.losses == pytest.approx(whole[o][0], abs=1e-12)
        assert st.layers == whole[o][1]
    assert fast[0].losses == [0.0] * 6 and sum(fast[-1].losses) > 0
    assert len(widths) < len(offsets) * len(roll.batches)  # some passes skipped: no exit at all
    assert N in widths and any(w <= N - CHECKPOINT_EVERY for w in widths), widths  # some start a chunk or more in
    assert 2 in heights and 1 in heights  # and some run only the row that exits


def test_risk_command_end_to_end_then_eval_uses_the_saved_offset(tiny_dir, tmp_path):
    run = tmp_path / "run"
    _saved(tiny_dir, run / "model")  # fresh heads: exit with probability σ(−6 + offset) at each exit layer
    out = tmp_path / "risk"
    code = main(
        [
            "risk",
            "--model",
            str(run),
            "--out",
            str(out),
            "--task",
            TASK,
            "--n",
            "6",
            "--val-n",
            "3",
            "--epsilon",
            "0.5",
            "--delta",
            "0.2",
            "--offsets=-4:8:4",
            "--max-new-tokens",
            "6",
            "--save",
        ]
    )
    assert code == 0
    result = json.loads((out / "risk.json").read_text())
    assert (out / "risk.png").stat().st_size > 0 and (out / "risk.svg").is_file()
    assert result["risk"] == "token" and result["epsilon"] == 0.5 and result["delta"] == 0.2 and result["n"] == 6
    rows = result["offsets"]
    assert [r["offset"] for r in rows] == [-4.0, 0.0, 4.0, 8.0]
    assert rows[0]["risk"] < 0.05 and rows[0]["als"] < 0.05  # σ(−10) per exit layer: exits are rare
    assert rows[-1]["als"] > rows[0]["als"]
    accepted = fixed_sequence([r["p_value"] for r in rows], 0.2)
    assert accepted >= 1 and [r["accepted"] for r in rows] == [j < accepted for j in range(4)]
    chosen = rows[accepted - 1]["offset"]
    assert result["chosen_offset"] == chosen and result["accepted"] == [r["offset"] for r in rows[:accepted]]
    assert result["validation"]["split"] == "test" and result["validation"]["n"] == 3
    assert result["validation"]["offset"] == chosen and 0.0 <= result["validation"]["risk"] <= 1.0
    record = json.loads((run / "model" / META_FILE).read_text())[RISK_KEY]
    assert record["offset"] == chosen and record["epsilon"] == 0.5 and record["risk"] == "token"
    assert record["task"] == TASK and record["max_new_tokens"] == 6

    # eval without --offset uses it and says so; with --offset, the given one.
    summary = evaluate(
        EvalConfig(
            model=str(run),
            out=str(tmp_path / "eval"),
            task=TASK,
            n=2,
            max_new_tokens=6,
            target=False,
            speed_baseline=False,
            show=0,
        )
    )
    assert summary["offset"] == chosen and summary["offset_source"].startswith("recorded with the model")
    given = evaluate(
        EvalConfig(
            model=str(run),
            out=str(tmp_path / "eval2"),
            task=TASK,
            n=2,
            max_new_tokens=6,
            offset=-1.0,
            target=False,
            speed_baseline=False,
            show=0,
        )
    )
    assert given["offset"] == -1.0 and given["offset_source"] == "given"


def test_no_accepted_offset_means_exits_off(tiny_dir, tmp_path):
    """A strict ε with three items: even a risk of 0 has p = 0.99³ > δ, so nothing is accepted; the answer is
    exits off (exit status 0), recorded as such."""
    run = _saved(tiny_dir, tmp_path / "model", bias=8.0)
    code = main(
        [
            "risk",
            "--model",
            str(run),
            "--out",
            str(tmp_path / "risk"),
            "--task",
            TASK,
            "--n",
            "3",
            "--epsilon",
            "0.01",
            "--offsets=0:2:2",
            "--max-new-tokens",
            "4",
            "--risk",
            "answer",
            "--save",
        ]
    )
    assert code == 0
    result = json.loads((tmp_path / "risk" / "risk.json").read_text())
    assert result["chosen_offset"] is None and result["exits_off"] and result["accepted"] == []
    assert result["first_failure"] == 0.0 and [r["tested"] for r in result["offsets"]] == [True, False]
    assert result["validation"]["offset"] is None and result["validation"]["risk"] == 0.0
    # Recorded as exits off: eval then runs without exits.
    assert recorded_offset(run)["offset"] is None
    summary = evaluate(
        EvalConfig(
            model=str(run),
            out=str(tmp_path / "eval"),
            task=TASK,
            n=1,
            max_new_tokens=4,
            target=False,
            speed_baseline=False,
            show=0,
        )
    )
    assert summary["offset"] is None and summary["early_exit_rate"] == 0.0


def test_save_on_a_base_model_is_a_user_error(tiny_dir, tmp_path, capsys):
    code = main(["risk", "--model", tiny_dir, "--out", str(tmp_path / "r"), "--epsilon", "0.1", "--save"])
    assert code == 2 and "base model" in capsys.readouterr().err


def test_calibration_and_validation_items_of_one_file_must_be_disjoint(tiny_dir, tmp_path, capsys):
    data = tmp_path / "gsm8k.jsonl"  # one file is used whole: --split and --val-split would draw the same items
    data.write_text(
        "".join(json.dumps({"question": f"{i} + {i}?", "answer": f"#### {2 * i}"}) + "\n" for i in range(4))
    )
    argv = ["risk", "--model", tiny_dir, "--out", str(tmp_path / "r"), "--epsilon", "0.1", "--n", "2"]
    code = main([*argv, "--task", f"gsm8k:{data}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "share 2 questions" in err[0] and ":split" in err[0], err
    assert not (tmp_path / "r").exists()


def test_recorded_offset_follows_the_weights(tiny_dir, tmp_path):
    folder = _saved(tiny_dir, tmp_path / "a", bias=6.0)  # at offset 0 nearly every token exits
    record_offset(folder, None, {"risk": "token", "epsilon": 0.1, "delta": 0.1, "task": TASK})
    model = EarlyExitModel.from_pretrained(folder)
    assert model.risk_control["offset"] is None and model.risk_control["epsilon"] == 0.1
    ids = torch.tensor([[5, 6, 7, 8]])
    # generate without offset: the recorded one (exits off); with an offset: the given one.
    assert (model.generate(ids, max_new_tokens=4, do_sample=False, seed=0).exit_layers == 6).all()
    assert (model.generate(ids, max_new_tokens=4, do_sample=False, offset=0.0, seed=0).exit_layers < 6).all()
    # Saved again with the same weights (here or elsewhere): the record stays; other weights drop it.
    model.save_pretrained(tmp_path / "b")
    assert recorded_offset(tmp_path / "b") == recorded_offset(folder)
    model.save_pretrained(folder)
    assert recorded_offset(folder)["epsilon"] == 0.1
    with torch.no_grad():
        model.heads.bias.add_(1.0)
    model.save_pretrained(folder)
    assert RISK_KEY not in json.loads((folder / META_FILE).read_text())
    # A folder whose weights changed under its record: ignored, with a warning.
    record_offset(tmp_path / "b", 2.0, {"epsilon": 0.2})
    model.save_pretrained(tmp_path / "c")
    (tmp_path / "c" / META_FILE).write_text((tmp_path / "b" / META_FILE).read_text())
    with pytest.warns(UserWarning, match="other weights"):
        assert recorded_offset(tmp_path / "c") is None


def test_eval_offset_says_where_it_comes_from_and_what_the_guarantee_does_not_cover(tiny_dir, tmp_path):
    folder = _saved(tiny_dir, tmp_path / "m")
    loaded = load_model(str(folder), device="cpu")
    assert eval_offset(None, loaded, TASK, 16) == (0.0, "default 0 (no offset recorded with the model)", [])
    record_offset(folder, 2.0, {"risk": "answer", "epsilon": 0.2, "delta": 0.1, "task": TASK, "max_new_tokens": 16})
    loaded = load_model(str(folder), device="cpu")
    offset, source, notes = eval_offset(None, loaded, TASK, 16)
    assert offset == 2.0 and source.startswith("recorded with the model") and "answer risk <= 0.2" in source
    assert notes == []
    offset, _, notes = eval_offset(None, loaded, "tom", 32)
    assert offset == 2.0 and len(notes) == 2 and "not tom" in notes[0] and "not 32" in notes[1]
    assert eval_offset(1.0, loaded, "tom", 32) == (1.0, "given", [])
    base = load_model(tiny_dir, device="cpu")
    offset, source, notes = eval_offset(3.0, base, TASK, 16)
    assert offset == -math.inf and source == "base model: no exits" and "ignored" in notes[0]
