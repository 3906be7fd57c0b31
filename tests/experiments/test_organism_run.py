"""``thinkaloud organism --quick`` end to end on a tiny organism built in code: the files, the findings block with
O1–O5 and their verdicts, the figures and the report; a folder of other settings is refused in one line."""

from __future__ import annotations

import json

import pytest

from tests.experiments.organism_tiny import MAX_PARAMS, build_tiny_organism
from thinkaloud.cli import main as cli_main
from thinkaloud.experiments.findings import DID_NOT_HOLD, HELD, NOT_SIGNIFICANT

pytestmark = pytest.mark.usefixtures("one_thread")

FIGURES = ("route_steps", "accuracy_by_k", "exit_by_kind", "load_bearing")


def test_quick_run_writes_findings_o1_to_o5_with_verdicts_figures_and_report(tmp_path, capsys):
    folder, params = build_tiny_organism(tmp_path / "organism")
    assert params < MAX_PARAMS, params
    out = tmp_path / "run"
    argv = ["organism", "--quick", "--model", str(folder), "--out", str(out), "--seeds", "0", "--threads", "1"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out

    ks = json.loads((out / "ks.json").read_text())["ks"]
    assert ks and all(1 <= k <= 4 for k in ks)
    for arm in ("control", "mean-penalty", "max-penalty"):
        rows = [json.loads(line) for line in (out / "rl" / arm / "completions.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2] and all(len(r["texts"]) == 4 for r in rows)  # 2 prompts × 2
        assert (out / "rl" / arm / "model").is_dir()
        assert (out / "measures" / arm / "seed0" / "summary.json").exists()
    for label in ("organism", "sft"):
        assert (out / "measures" / label / "records.jsonl").exists()

    findings = json.loads((out / "findings" / "findings.json").read_text())
    heads = [f["finding"].split(")")[0] + ")" for f in findings["findings"]]
    assert heads == ["(O1)", "(O2)", "(O3)", "(O4)", "(O5a)", "(O5b)"]
    assert all(f["verdict"] in (HELD, NOT_SIGNIFICANT, DID_NOT_HOLD) and f["measured"] for f in findings["findings"])
    for head in heads:
        assert head in printed
    assert printed.count("verdict:") == len(heads)
    assert "chosen on pilot seeds" in " ".join(findings["notes"])
    for name in FIGURES:
        assert (out / "findings" / "figures" / f"{name}.png").stat().st_size > 1000
    assert "(O3)" in (out / "findings" / "findings.md").read_text()
    html = (out / "report" / "report.html").read_text()
    assert "(O1)" in html and html.count("data:image/png;base64") >= len(FIGURES)

    again = [*argv[:-2], "--lam", "2"]  # other settings into the same folder: refused before any work
    assert cli_main(again) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings (lam)" in err[0], err
