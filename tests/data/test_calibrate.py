"""Calibration: data written, KL equal to a direct pass, resumption gives identical data, errors."""

from __future__ import annotations

import json

import pytest
import torch

from tests.tiny import tiny_model_dir
from thinkaloud.data import calibrate as cal
from thinkaloud.data.calibrate import CalibrateConfig, calibrate, load_calibration
from thinkaloud.model.loading import load_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def config(tiny_dir, out, **kw):
    return CalibrateConfig(out=str(out), model=tiny_dir, task="rg:chain_sum", n=5, max_new_tokens=6,
                           batch_size=2, shard_size=2, device="cpu", **kw)


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
        positions[0, row.prompt_length - 1:-1] = True
        direct = model.layer_kl(ids, positions=positions)[0, row.prompt_length - 1:-1]
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
