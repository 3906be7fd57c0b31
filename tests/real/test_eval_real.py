"""The eval job and the report on the real SmolLM2-135M-Instruct: the base model and fresh heads at offset +4."""

import json

import pytest

from thinkaloud.config import ExitConfig
from thinkaloud.eval.run import evaluate
from thinkaloud.measures.config import EvalConfig
from thinkaloud.model.early_exit import EarlyExitModel
from thinkaloud.report.job import ReportConfig, report

pytestmark = pytest.mark.slow


def test_eval_base_and_exits_then_report(tmp_path):
    common = dict(task="rg:chain_sum", n=4, max_new_tokens=32, batch_size=4, show=1)
    base = evaluate(EvalConfig(model="smollm2-135m", out=str(tmp_path / "base"), **common))
    assert base["label"] == "base" and base["offset"] is None and base["early_exit_rate"] == 0.0
    assert base["num_layers"] == 30 and base["exit_layers"] == [5, 10, 15, 20, 25]
    assert sum(base["target_hist"].values()) == pytest.approx(1.0)

    # Fresh heads (bias −6) at offset +4: q = σ(−2) ≈ 0.12 per exit layer, so about half the tokens exit.
    run = tmp_path / "fresh"
    EarlyExitModel.from_base("smollm2-135m", ExitConfig()).save_pretrained(run / "model")
    exits = evaluate(EvalConfig(model=str(run), out=str(tmp_path / "exits"), offset=4.0, **common))
    assert exits["label"] == "fresh" and exits["offset"] == 4.0
    assert base["speed_baseline"] == {"skipped": "the evaluated model is the base model"}
    assert exits["speed_baseline"]["decode_ms_per_token"] > 0 and exits["speedup_vs_base"] > 0
    assert exits["prefill_s"] > 0 and exits["decode_ms_per_token"] > 0
    assert 0.2 < exits["early_exit_rate"] < 0.8 and 0.0 < exits["flop_savings"] < exits["als"]
    assert sum(exits["exit_hist"].values()) == pytest.approx(1.0)

    for d in ("base", "exits"):
        for name in ("summary.json", "records.jsonl", "config.json", "tokens.html"):
            assert (tmp_path / d / name).is_file()
        records = [json.loads(line) for line in (tmp_path / d / "records.jsonl").read_text().splitlines()]
        assert len(records) == 4 and all(len(r["tokens"]) == len(r["exit_layers"]) for r in records)
        # The per-token strings add up to readable text: SmolLM2's byte-level markers are decoded.
        assert all("Ġ" not in "".join(r["tokens"]) for r in records)

    md, page = report(
        ReportConfig(dirs=[str(tmp_path / "base"), str(tmp_path / "exits")], out=str(tmp_path / "report"))
    )
    assert md.is_file() and page.is_file()
    figures = sorted(f.name for f in (tmp_path / "report" / "figures").glob("*.png"))
    assert len([f for f in figures if f.startswith("exit_hist_")]) == 2  # one per eval directory
    assert "fluency_proxies.png" in figures  # fluency is measured by default
