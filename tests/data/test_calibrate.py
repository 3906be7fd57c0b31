"""Calibration: data written, KL equal to a direct pass, resumption gives identical data, the items it
records (and overlap checks against them), errors."""

from __future__ import annotations

import json

import pytest
import torch

from thinkaloud.data import calibrate as cal
from thinkaloud.data.calibrate import CalibrateConfig, calibrate, calibration_items, load_calibration, overlapping_items
from thinkaloud.data.splits import split_of
from thinkaloud.data.task import Item
from thinkaloud.data.tasks import get_task
from thinkaloud.model.loading import load_model


def config(tiny_dir, out, **kw):
    return CalibrateConfig(
        out=str(out),
        model=tiny_dir,
        task="rg:chain_sum",
        n=5,
        max_new_tokens=6,
        batch_size=2,
        shard_size=2,
        device="cpu",
        **kw,
    )


def test_calibration_writes_shards_with_exact_kl(tiny_dir, tmp_path):
    out = calibrate(config(tiny_dir, tmp_path / "cal"))
    manifest, rows = load_calibration(out)
    assert manifest["complete"] and len(manifest["shards"]) == 3 and len(rows) == 5
    assert manifest["config"]["task"] == "rg:chain_sum" and manifest["model_hash"]
    model = load_model(tiny_dir, device="cpu").model
    for row in rows:
        n = row.input_ids.numel() - row.prompt_length
        assert 1 <= n <= 6 and row.kl.shape == (n, len(model.layers))
        ids = row.input_ids[None]
        positions = torch.zeros_like(ids, dtype=torch.bool)
        positions[0, row.prompt_length - 1 : -1] = True
        direct = model.layer_kl(ids, positions=positions)[0, row.prompt_length - 1 : -1]
        torch.testing.assert_close(row.kl, direct, atol=1e-5, rtol=1e-4)


def test_interrupted_run_resumes_to_identical_data(tiny_dir, tmp_path, monkeypatch):
    full = calibrate(config(tiny_dir, tmp_path / "full", do_sample=True))
    real_write = cal._write_shard
    calls = {"n": 0}

    def dying_write(path, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        real_write(path, rows)

    monkeypatch.setattr(cal, "_write_shard", dying_write)
    with pytest.raises(KeyboardInterrupt):
        calibrate(config(tiny_dir, tmp_path / "resumed", do_sample=True))
    partial = json.loads((tmp_path / "resumed" / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == 1
    assert not list((tmp_path / "resumed").glob("*.tmp"))  # nothing half-written
    monkeypatch.setattr(cal, "_write_shard", real_write)
    calibrate(config(tiny_dir, tmp_path / "resumed", do_sample=True))
    (_, a), (_, b) = load_calibration(full), load_calibration(tmp_path / "resumed")
    assert [r.item_id for r in a] == [r.item_id for r in b]
    for x, y in zip(a, b):
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.kl, y.kl)


def test_errors(tiny_dir, tmp_path):
    calibrate(config(tiny_dir, tmp_path / "cal"))
    with pytest.raises(ValueError, match="other settings"):
        calibrate(config(tiny_dir, tmp_path / "cal", seed=1))
    with pytest.raises(ValueError, match="rg:"):
        calibrate(CalibrateConfig(out=str(tmp_path / "x"), model=tiny_dir, task="nonsense"))
    with pytest.raises(FileNotFoundError, match="calibrate"):
        load_calibration(tmp_path / "missing")
    with pytest.raises(ValueError, match="n must be"):
        CalibrateConfig(out="x", n=0)


def test_manifest_records_its_items_and_they_never_overlap_test_items(tiny_dir, tmp_path):
    rows = [
        {"question": f"Ann has {i} apples and buys {i + 3}. How many?", "answer": f"#### {2 * i + 3}"}
        for i in range(60)
    ]
    data = tmp_path / "gsm8k.jsonl"  # ONE file: train and test come from it by question hash
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = f"gsm8k:{data}:split"
    out = calibrate(
        CalibrateConfig(
            out=str(tmp_path / "cal"),
            model=tiny_dir,
            task=spec,
            n=6,
            max_new_tokens=2,
            batch_size=6,
            shard_size=4,
            device="cpu",
        )
    )
    task = get_task(spec)
    calibrated = task.items(6)
    assert all(split_of(it.question) == "train" for it in calibrated)
    assert calibration_items(out) == [{"id": it.id, "key": it.key} for it in calibrated]
    assert [r.item_id for r in load_calibration(out)[1]] == [it.id for it in calibrated]
    assert overlapping_items(out, calibrated[::-1]) == [it.id for it in calibrated[::-1]]
    n_test = sum(split_of(r["question"]) == "test" for r in rows)
    assert n_test >= 3
    for seed in range(5):
        assert overlapping_items(out, task.items(n_test, seed=seed, split="test")) == []
    same_question = Item(id="elsewhere/7", question=calibrated[2].question + "\n", answer="0")  # content, not id
    assert overlapping_items(out, [same_question, {"id": "d", "key": calibrated[0].key}]) == ["elsewhere/7", "d"]


def test_calibration_items_of_an_older_manifest_or_no_manifest(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"format": 1, "shards": [], "complete": True}))
    assert calibration_items(tmp_path / "old") == []
    assert overlapping_items(tmp_path / "old", [Item(id="a", question="q", answer="1")]) == []
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        calibration_items(tmp_path / "missing")
