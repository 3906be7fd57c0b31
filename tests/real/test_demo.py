"""The --quick demo end to end on the embedded model: every stage runs, the report is written."""

import json

import pytest

from thinkaloud.demo import DemoConfig, demo

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end(tmp_path):
    report_dir = demo(DemoConfig(out=str(tmp_path / "demo"), quick=True))
    assert (report_dir / "report.html").stat().st_size > 10_000
    assert (report_dir / "report.md").exists()
    labels = []
    for stage in ("base", "sft", "rl"):
        summary = json.loads((tmp_path / "demo" / "eval" / stage / "summary.json").read_text())
        labels.append(summary["label"])
        assert 0.0 <= summary["als"] < 1.0
    assert labels == ["base", "sft", "rl"]
    base = json.loads((tmp_path / "demo" / "eval" / "base" / "summary.json").read_text())
    sft = json.loads((tmp_path / "demo" / "eval" / "sft" / "summary.json").read_text())
    assert base["early_exit_rate"] == 0.0 and sft["early_exit_rate"] > 0.0
    html = (report_dir / "report.html").read_text()
    assert "<img" in html or "<svg" in html
    # A re-run reuses every finished stage.
    demo(DemoConfig(out=str(tmp_path / "demo"), quick=True))
