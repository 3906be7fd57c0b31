"""The KL-factor sweep on a tiny model: each factor's eval uses that factor's target; bad factors and
evaluation items from the calibration are refused before anything is trained."""

from __future__ import annotations

import json

import pytest

from tests.tiny import tiny_calibration, tiny_model_dir
from thinkaloud.eval.lineage import LeakageError
from thinkaloud.experiments.sweep import SweepConfig, sweep
from thinkaloud.report.terminal import sweep_table

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    return tiny_calibration(root / "calib", tiny_model_dir(root / "model"), split="train")


def test_kl_factors_must_be_positive_and_rubric_known():
    for factors in ([0.0], [1.0, -0.5]):
        with pytest.raises(ValueError, match="KL factors must be > 0"):
            SweepConfig(calib="c", out="o", kl_factors=factors)
    with pytest.raises(ValueError, match="rubric must be one of"):
        SweepConfig(calib="c", out="o", rubric="gpt")


def test_each_factor_is_evaluated_against_its_own_target(calib, tmp_path):
    config = SweepConfig(
        calib=str(calib),
        out=str(tmp_path / "sweep"),
        kl_factors=[0.5],
        steps=1,
        batch_size=2,
        n=2,
        eval_max_new_tokens=3,
        speed_baseline=False,
        device="cpu",
    )
    rows = sweep(config)
    assert [r["label"] for r in rows] == ["kl=0.5", "base"]
    saved = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert saved["rows"] == rows and saved["task"] == "rg:chain_sum"
    sft = json.loads((tmp_path / "sweep" / "kl-0.5" / "eval" / "summary.json").read_text())
    assert sft["stage"] == "sft" and sft["split"] == "test"
    assert sft["kl_factor"] == 0.5 and sft["target"] == {"kl_factor": 0.5, "source": "kl_factor given"}
    assert rows[0]["tv_distance"] == sft["tv_distance"] is not None
    base = json.loads((tmp_path / "sweep" / "base" / "eval" / "summary.json").read_text())
    assert base["stage"] == "base" and base["target"] is None and rows[1]["tv_distance"] is None
    # The fluency proxies sit beside coherence, in the rows and the printed table.
    for row, summary in zip(rows, (sft, base)):
        assert row["base_nll"] == summary["fluency"]["base_nll"] > 0 and row["rep4"] == summary["fluency"]["rep4"]
    assert "base NLL (proxy)" in [c.header for c in sweep_table(rows).columns]


def test_sweep_refuses_eval_items_from_the_calibration(calib, tmp_path):
    config = SweepConfig(
        calib=str(calib), out=str(tmp_path / "sweep"), kl_factors=[1.0], steps=1, n=3, eval_split="train", device="cpu"
    )
    with pytest.raises(LeakageError, match=r"3 of the 3 eval items are in the calibration"):
        sweep(config)
    assert not (tmp_path / "sweep").exists()  # nothing trained
