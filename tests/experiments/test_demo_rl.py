"""The demo's RL stage read back: findings per KL budget, the frontier rows, table and figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.experiments.test_findings import heldout_rows, records
from thinkaloud.experiments import demo_rl
from thinkaloud.experiments import findings as df
from thinkaloud.report.plots import plot_kl_frontier

pytestmark = pytest.mark.usefixtures("one_thread")


def write_rl(folder: Path, target: float, drop: float, nll_rise: float, collapsed: bool = False) -> Path:
    folder.mkdir(parents=True)
    held = heldout_rows(drop, runs=1, nll_rise=nll_rise)
    for r in held:
        r.update(early_exit_rate=1 - r["depth_frac"], degenerate=0.0)
    (folder / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in held))
    (folder / "heldout_base.json").write_text(json.dumps({"accuracy": 0.25, "prompt_accuracy": [1.0, 1.0] + [0.0] * 6}))
    log = [
        {"run": 0, "step": s, "beta": 0.25 * 1.4 ** (s - 1), "kl": 1.0 + 0.1 * s, "kl_target": target}
        for s in (1, 2, 3)
    ]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    collapse = {"from_step": 1, "to_step": 3, "steps": 3, "share": 0.5, "message": "the policy collapsed"}
    (folder / "rl_summary.json").write_text(
        json.dumps({"runs": [{"run": 0, "collapse": collapse if collapsed else None}]})
    )
    return folder


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_rl, "RL_EVAL_TARGET", 1.5)
    return {
        0.75: write_rl(tmp_path / "rl-T0.75", 0.75, drop=0.0, nll_rise=0.0),
        1.5: write_rl(tmp_path / "rl-T1.5", 1.5, drop=0.1, nll_rise=0.6),
        3.0: write_rl(tmp_path / "rl-T3", 3.0, drop=0.2, nll_rise=1.5, collapsed=True),
    }


def test_findings_per_budget_say_which_one_fails(dirs):
    recs = {"RL": records("RL", 0.5, 2.4, seed=3), "F=1": records("F=1", 0.3, 1.8), "base": records("base", 0.0, 0.6)}
    found = demo_rl.rl_findings(dirs, recs)
    assert [f.finding[:12] for f in found] == [
        "(3) [T=0.75]",
        "(3) [T=1.5] ",
        "(3) [T=3] RL",
        "(4) [T=1.5] ",
        "(5) [T=0.75]",
        "(5) [T=1.5] ",
        "(5) [T=3] co",
    ]
    compute, coherence = found[:3], found[4:]
    assert compute[0].verdict != df.HELD and compute[1].verdict == compute[2].verdict == df.HELD
    assert coherence[0].verdict == df.HELD and coherence[1].verdict == coherence[2].verdict == df.DID_NOT_HOLD
    assert "eval (24 items) RL − F=1" in coherence[1].measured and "eval" not in coherence[0].measured
    assert "1 seed," in coherence[0].measured


def test_frontier_rows_table_and_figure(dirs):
    rows = demo_rl.frontier_rows(dirs)
    assert [r["kl_target"] for r in rows] == [0.75, 1.5, 3.0]
    assert rows[0]["beta_first"] == 0.25 and rows[0]["beta_last"] == pytest.approx(0.25 * 1.4**2)
    assert rows[2]["base_nll_end"] - rows[2]["base_nll_start"] == pytest.approx(1.5, abs=0.1)
    assert rows[2]["collapsed_runs"] == [0] and rows[0]["collapsed_runs"] == []
    table = demo_rl.frontier_table(rows)
    assert len(table["rows"]) == 3 and len(table["headers"]) == len(table["rows"][0])
    assert table["rows"][2][0] == "3" and table["rows"][2][-1] == "0" and table["rows"][0][-1] == "none"
    fig = plot_kl_frontier(rows, {"accuracy": 0.25})
    left, right = fig.axes
    assert left.get_ylabel().startswith("change of base-model NLL") and right.get_ylabel().startswith("accuracy")
    assert [t.get_text() for t in left.get_legend().get_texts()] == ["T = 0.75", "T = 1.5", "T = 3"]
    assert "base model" in [t.get_text() for t in right.get_legend().get_texts()]
