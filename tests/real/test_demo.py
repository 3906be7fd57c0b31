"""The --quick demo end to end on the embedded model: every stage runs, the findings are stated (terminal,
findings.json, report) and the report holds every table and figure."""

import json

import pytest
from rich.console import Console

from thinkaloud.experiments.demo import demo
from thinkaloud.experiments.demo_config import KL_FACTORS, RL_KL_TARGETS, RL_SEEDS, DemoConfig

pytestmark = pytest.mark.slow

VERDICTS = {"held", "not significant", "did not hold"}


def test_quick_demo_end_to_end(tmp_path):
    console = Console(record=True, width=140)
    out = tmp_path / "demo"
    report_dir = demo(DemoConfig(out=str(out), quick=True), console=console)
    terminal = console.export_text()
    labels = ["base"] + [f"F={f:g}" for f in KL_FACTORS] + ["RL"]
    summaries = {label: json.loads((out / "eval" / label / "summary.json").read_text()) for label in labels}
    assert [s["label"] for s in summaries.values()] == labels
    assert all(s["task"] == "tom" and s["split"] == "test" and s["fluency"] is not None for s in summaries.values())
    assert summaries["base"]["early_exit_rate"] == 0.0 and summaries["F=0.25"]["early_exit_rate"] > 0.0
    for label in ("base", "F=1", "RL"):  # externalisation measures on the three models
        assert summaries[label]["reliance"] is not None and summaries[label]["lens"] is not None
    assert summaries["RL"]["stage"] == "rl" and summaries["F=1"]["stage"] == "sft"

    # Stage 2: per KL budget, its seeds, held-out rows at step 0 (the SFT model) and later steps; β per step
    for t in RL_KL_TARGETS:
        rl = out / f"rl-T{t:g}"
        heldout = [json.loads(line) for line in (rl / "heldout.jsonl").read_text().splitlines()]
        assert sorted({r["run"] for r in heldout}) == list(range(RL_SEEDS)) and {r["step"] for r in heldout} >= {0}
        log = [json.loads(line) for line in (rl / "log.jsonl").read_text().splitlines()]
        assert all(r["kl_target"] == t and r["beta"] > 0 and 0 <= r["degenerate"] <= 1 for r in log)
        assert json.loads((rl / "rl_summary.json").read_text())["runs"]

    # The findings: five claims (1 in two parts; 3 and 5 per KL budget when there are several), each measured
    # with an interval and a verdict
    data = json.loads((out / "findings" / "findings.json").read_text())
    findings = data["findings"]
    per_t = len(RL_KL_TARGETS)
    numbers = ["(1a", "(1b", "(2)"] + ["(3)"] * per_t + ["(4)"] + ["(5)"] * per_t
    assert [f["finding"][:3] for f in findings] == numbers
    assert all(f["verdict"] in VERDICTS and "[" in f["measured"] for f in findings)
    assert data["tables"][0]["title"].startswith("KL budget T") and len(data["tables"][0]["rows"]) == per_t
    assert "Findings" in terminal and all(f["finding"] in terminal for f in findings)
    assert "Report:" in terminal and "Wall time" in terminal

    html = (report_dir / "report.html").read_text()
    md = (report_dir / "report.md").read_text()
    for section in ("## Evaluations", "## Externalisation", "## KL-factor sweep: stage1", "## RL: rl-T", "## Findings"):
        assert section in md, section
    figures = {p.stem for p in (report_dir / "figures").glob("*.png")}
    assert {"agreement_curves", "fluency_proxies"} <= figures
    assert sum(s.startswith("rl_heldout_") and "rl-T" in s for s in figures) == per_t
    assert sum(s.startswith("future_lens_") for s in figures) == 3
    assert sum(s.startswith("findings_01_") for s in figures) == 1 + len(KL_FACTORS) + (per_t > 1)

    # The organism came first: its stages, its findings O1–O5 first in the terminal and the report
    organism = json.loads((out / "organism" / "findings" / "findings.json").read_text())
    assert organism["first"] and [f["finding"][:4] for f in organism["findings"]][:4] == [
        "(O1)",
        "(O2)",
        "(O3)",
        "(O4)",
    ]
    assert terminal.index("Findings: the model organism") < terminal.index("Findings: smollm2")
    assert md.index(f"## {organism['title']}") < md.index("## Evaluations")
    assert sum(s.startswith("findings_00_") for s in figures) == len(organism["figures"]) == 4
    assert html.count("data:image/png;base64,") == len(figures)
    timings = json.loads((out / "timings.json").read_text())
    assert timings["total_s"] > 0 and {"calibrate", "organism"} <= set(timings["stages_s"])

    # A re-run reuses every finished stage and states the same findings.
    demo(DemoConfig(out=str(out), quick=True), console=Console(record=True))
    assert json.loads((out / "findings" / "findings.json").read_text())["findings"] == findings
