"""The load-bearing measures inside ``thinkaloud eval`` (fields, seconds, nulls when off), the legibility
judge in an eval, and their report section and terminal rows."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.report.test_plots_report import write_eval_dir
from thinkaloud.eval.run import evaluate
from thinkaloud.measures.config import EvalConfig
from thinkaloud.report.build import build_report
from thinkaloud.report.terminal import summary_rows

pytestmark = pytest.mark.usefixtures("one_thread")

FOUR = ["filler", "mistakes", "paraphrase", "decodability"]
EVAL = dict(
    task="rg:chain_sum",
    n=6,
    max_new_tokens=8,
    batch_size=4,
    lenient_answers=True,
    speed_baseline=False,
    target=False,
    show=0,
    device="cpu",
)


def _records(d):
    return [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]


def test_the_four_measures_write_their_fields(tiny_dir, tmp_path):
    summary = evaluate(EvalConfig(model=tiny_dir, out=str(tmp_path / "on"), measures=FOUR, **EVAL))
    records = _records(tmp_path / "on")
    assert summary["reliance"] is None and summary["lens"] is None  # not asked for
    filler, mistakes, para, dec = (summary[k] for k in FOUR)
    assert filler["measure"] == "filler_necessity" and set(filler["agreement"]) == {"own", "none", "filler"}
    assert filler["n"] + filler["n_skipped"] == 6 and all(s[k]["seconds"] >= 0 for s in [summary] for k in FOUR)
    assert mistakes["measure"] == "adding_mistakes" and mistakes["n"] + mistakes["n_skipped"] == 6
    assert para["measure"] == "paraphrase" and para["n"] == filler["n"]
    assert dec.get("measure") == "answer_decodability" or "skipped" in dec
    for r in records:
        assert set(r) >= set(FOUR)
        assert r["filler"]["included"] in (True, False) and r["paraphrase"]["included"] == r["filler"]["included"]
    rows = dict(summary_rows(summary))
    assert "filler: agreement own / none / filler" in rows and "mistakes: answer changed / follows the edit" in rows

    md, _ = build_report([tmp_path / "on"], tmp_path / "report")
    assert "## Is the reasoning load-bearing?" in md.read_text()


class _LegibilityJudge(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert "coverage" in body["messages"][0]["content"]
        reply = json.dumps({"choices": [{"message": {"content": '{"legibility": 3, "coverage": 1}'}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_legibility_rubric_in_an_eval(tiny_dir, tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LegibilityJudge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        judge = f"openai:http://127.0.0.1:{server.server_address[1]}/v1#stub"
        config = EvalConfig(
            model=tiny_dir, out=str(tmp_path / "leg"), measures=[], judge=judge, rubric="legibility", **EVAL
        )
        summary = evaluate(config)
    finally:
        server.shutdown()
        server.server_close()
    assert summary["coherence"] is None
    leg = summary["legibility"]
    assert leg["legibility"] == 3 and leg["coverage"] == 1 and leg["n_judged"] == 6 and leg["rubric"] == "legibility"
    assert all(r["judge"] == {"legibility": 3, "coverage": 1} for r in _records(tmp_path / "leg"))
    assert dict(summary_rows(summary))["legibility / coverage (judge, 0–4)"].startswith("3.00 / 1.00")
    md, _ = build_report([tmp_path / "leg"], tmp_path / "report")  # no coherence scores to draw: no error
    assert "| 3.00 / 1.00 |" in md.read_text()


def _with_loadbearing(d, own: float, late: float):
    s = json.loads((d / "summary.json").read_text())
    layers, fractions = list(range(1, 7)), [i / 10 for i in range(11)]
    table = [[min(1.0, 0.3 + late * f * layer / 6) for f in fractions] for layer in layers]
    s["filler"] = {
        "agreement": {"own": own, "none": 0.25, "filler": 0.25},
        "accuracy": {"own": 0.5, "none": 0.1, "filler": 0.1},
        "n": 8,
    }
    s["mistakes"] = {"changed_rate": 0.5, "follow_rate": 0.75, "n": 8, "n_implied": 4}
    s["paraphrase"] = {"agreement_original": own, "agreement_paraphrased": own - 0.125, "n": 8, "n_changed": 8}
    s["decodability"] = {
        "layers": layers,
        "fractions": fractions,
        "accuracy": table,
        "chance": [[0.3] * 11 for _ in layers],
        "best": [max(r[j] for r in table) for j in range(11)],
        "best_chance": [0.4] * 11,
        "chance_mean": 0.3,
        "majority": 0.35,
        "label": "answer",
        "n": 8,
    }
    (d / "summary.json").write_text(json.dumps(s))
    return d


def test_report_section_and_side_by_side_heatmaps(tmp_path):
    dirs = [
        _with_loadbearing(write_eval_dir(tmp_path / "base", "base", 0.0), own=0.5, late=0.2),
        _with_loadbearing(write_eval_dir(tmp_path / "sft", "sft", 0.4, seed=1), own=0.875, late=0.7),
        write_eval_dir(tmp_path / "plain", "plain", 0.2, seed=2),  # none of them: no row
    ]
    md, page = build_report(dirs, tmp_path / "report")
    text = md.read_text()
    section = text.split("## Is the reasoning load-bearing?", 1)[1]
    assert "| base | 50.0% / 25.0% / 25.0% (n=8) |" in section and "| sft | 87.5% / 25.0% / 25.0% (n=8) |" in section
    assert "| plain |" not in section
    assert "75.0% (n=4)" in section and "50.0% → 37.5% (n=8)" in section and "30.0% (40.0%)" in section
    figures = {p.stem for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert "decodability" in figures
    assert "data:image/png;base64," in page.read_text()
