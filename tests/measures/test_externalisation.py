"""The externalisation measures inside ``thinkaloud eval`` (fields, nulls when off, values against a direct
computation) and in the report (tables, agreement curves, lens heatmaps, fluency proxies)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tests.report.test_plots_report import write_eval_dir, write_rl_dir
from thinkaloud.cli import main
from thinkaloud.data.prompts import encode_prompts
from thinkaloud.data.tasks import get_task
from thinkaloud.eval.run import evaluate
from thinkaloud.measures.config import DEFAULT_MEASURES, MEASURES, EvalConfig
from thinkaloud.model.loading import load_model
from thinkaloud.report.build import build_report
from thinkaloud.report.plots import plot_rl_dynamics
from thinkaloud.report.terminal import summary_rows

pytestmark = pytest.mark.usefixtures("one_thread")

EVAL = dict(
    task="rg:chain_sum",
    n=4,
    max_new_tokens=8,
    batch_size=3,
    lenient_answers=True,
    speed_baseline=False,
    show=0,
    device="cpu",
)


def _records(d):
    return [json.loads(line) for line in (d / "records.jsonl").read_text().splitlines()]


def test_externalisation_measures_write_their_fields_and_fluency_equals_a_direct_computation(tiny_dir, tmp_path):
    summary = evaluate(EvalConfig(model=tiny_dir, out=str(tmp_path / "on"), measures=list(DEFAULT_MEASURES), **EVAL))
    records = _records(tmp_path / "on")
    rel, lens, flu = summary["reliance"], summary["lens"], summary["fluency"]
    assert rel["measure"] == "early_answering" and rel["n"] + rel["n_skipped"] == 4 and rel["seconds"] >= 0
    assert lens["measure"] == "future_lens" and lens["layers"] == [1, 2, 3, 4, 5, 6] and lens["distances"] == [1, 2, 3]
    assert len(lens["accuracy"]) == len(lens["layers"]) == 6 and all(
        0 <= v <= 1 for row in lens["accuracy"] for v in row
    )
    assert flu["measure"] == "fluency_proxies" and flu["n"] == 4
    assert all(set(r) >= {"reliance", "lens", "fluency"} for r in records)
    assert [r["lens"]["split"] for r in records] == ["fit", "test", "validation", "test"]
    assert sum(r["reliance"]["included"] for r in records) == rel["n"]
    assert any(name.startswith("reliance") for name, _ in summary_rows(summary))

    # The base model's NLL per token of each response, from a plain HF forward of prompt + response.
    loaded = load_model(tiny_dir, device="cpu")
    task = get_task("rg:chain_sum", lenient=True)
    items = task.items(4, seed=0, split="test")
    hf = loaded.model.base
    total, count = 0.0, 0
    for item, record in zip(items, records):
        prompt, _ = encode_prompts(loaded.tokenizer, [task.prompt(item, loaded.tokenizer)], "cpu")  # (1, P)
        gen = loaded.model.generate(
            prompt, max_new_tokens=8, do_sample=False, offset=-math.inf, pad_token_id=loaded.tokenizer.pad_token_id
        )  # greedy, no exits: the same tokens
        response = gen.new_tokens[0, : int(gen.lengths[0])]
        assert loaded.tokenizer.decode(response, skip_special_tokens=True) == record["completion"]
        with torch.no_grad():
            logits = hf(input_ids=gen.sequences[:, : prompt.shape[1] + len(response)]).logits[0]  # (T, V)
        P = prompt.shape[1]
        nll = -F.log_softmax(logits[P - 1 : -1].double(), -1).gather(-1, response[:, None]).sum().item()
        assert record["fluency"]["base_nll"] == pytest.approx(nll / len(response), rel=1e-4)
        total, count = total + nll, count + len(response)
    assert flu["base_nll"] == pytest.approx(total / count, rel=1e-4)


def test_measures_off_write_nulls_and_the_default_is_the_externalisation_three(tiny_dir, tmp_path):
    assert DEFAULT_MEASURES == ("reliance", "lens", "fluency") and set(DEFAULT_MEASURES) < set(MEASURES)
    assert EvalConfig(model="m", out="o").measures == list(DEFAULT_MEASURES)
    summary = evaluate(EvalConfig(model=tiny_dir, out=str(tmp_path / "off"), measures=[], **EVAL))
    assert all(summary[name] is None for name in MEASURES)
    assert all(r[name] is None for r in _records(tmp_path / "off") for name in MEASURES)


def test_lens_with_too_few_responses_is_skipped_with_its_reason(tiny_dir, tmp_path):
    summary = evaluate(EvalConfig(model=tiny_dir, out=str(tmp_path / "two"), measures=["lens"], **{**EVAL, "n": 2}))
    assert "at least 3 responses" in summary["lens"]["skipped"]
    assert all(r["lens"] is None for r in _records(tmp_path / "two"))


def test_cli_measures_flag(tiny_dir, tmp_path, capsys):
    main(
        [
            "eval",
            "--model",
            tiny_dir,
            "--out",
            str(tmp_path / "cli"),
            "--task",
            "rg:chain_sum",
            "--n",
            "1",
            "--max-new-tokens",
            "2",
            "--no-speed-baseline",
            "--measures",
            "fluency,reliance",
            "--show",
            "0",
        ]
    )
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["fluency"] is not None and summary["reliance"] is not None and summary["lens"] is None
    capsys.readouterr()
    code = main(["eval", "--model", tiny_dir, "--out", str(tmp_path / "bad"), "--measures", "fluency,lense"])
    assert code == 2 and "unknown measure(s) ['lense']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="listed twice"):
        EvalConfig(model="m", out="o", measures=["lens", "lens"])


# ---------------------------------------------------------------------------------------------------
# The report


def _with_measures(d, aoc_shift: float, nll: float):
    s = json.loads((d / "summary.json").read_text())
    agreement = [min(1.0, 0.3 + aoc_shift + 0.14 * i) for i in range(6)]
    s["reliance"] = {
        "measure": "early_answering",
        "fractions": [0, 0.2, 0.4, 0.6, 0.8, 1],
        "agreement": agreement,
        "aoc": 1 - sum(agreement) / 6,
        "accuracy_f0": 0.2,
        "accuracy_f1": 0.5,
        "accuracy_gain": 0.3,
        "accuracy_full": 0.55,
        "n": 7,
        "n_skipped": 1,
    }
    s["lens"] = {
        "measure": "future_lens",
        "layers": [5, 10, 15, 20, 25, 30],
        "num_layers": 30,
        "distances": [1, 2, 3],
        "accuracy": [[0.1 * i, 0.05 * i, 0.02 * i] for i in range(1, 7)],
        "logit_lens": [0.01 * i for i in range(1, 7)],
        "constant": [0.05, 0.04, 0.04],
        "n_test_tokens": 90,
    }
    s["fluency"] = {
        "measure": "fluency_proxies",
        "base_nll": nll,
        "base_ppl": math.exp(nll),
        "rep4": 0.1,
        "distinct2": 0.8,
        "n": 8,
    }
    (d / "summary.json").write_text(json.dumps(s))
    return d


def test_report_draws_agreement_curves_lens_heatmaps_and_fluency_proxies(tmp_path):
    dirs = [
        _with_measures(write_eval_dir(tmp_path / "base", "base", 0.0), 0.2, 1.2),
        _with_measures(write_eval_dir(tmp_path / "sft", "sft", 0.4, seed=1), 0.0, 1.9),
        write_eval_dir(tmp_path / "plain", "plain", 0.2, seed=2),
    ]  # no measures: — cells, no curve
    md, page = build_report(dirs, tmp_path / "report")
    text = md.read_text()
    assert "## Externalisation" in text and "area over curve" in text
    header = next(line for line in text.splitlines() if line.startswith("| label"))
    assert header.rstrip(" |").endswith("coherence | base NLL (proxy) | rep-4 (proxy) | distinct-2 (proxy)")
    assert "| 1.200 | 10.0% | 80.0% |" in text and "| — | — | — |" in text  # plain has no fluency
    assert "Proxies, not coherence" in text
    figures = {p.stem for p in (tmp_path / "report" / "figures").glob("*.png")}
    assert {"agreement_curves", "future_lens_00_base", "future_lens_01_sft", "fluency_proxies"} <= figures
    html = page.read_text()
    assert html.count("data:image/png;base64,") == len(figures)


def test_report_without_measures_has_no_externalisation_section(tmp_path):
    md, _ = build_report([write_eval_dir(tmp_path / "a", "a", 0.1)], tmp_path / "report")
    assert "Externalisation" not in md.read_text()


def test_rl_figure_has_a_fluency_panel_and_the_report_a_heldout_figure(tmp_path):
    d = write_rl_dir(tmp_path / "rl", runs=2, steps=6, coherence_every=None)
    rows = [json.loads(line) for line in (d / "log.jsonl").read_text().splitlines()]
    rows = [{**r, "base_nll": 1.5 + 0.01 * r["step"]} for r in rows]
    (d / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fig = plot_rl_dynamics(rows, base={"accuracy": 0.6, "depth_frac": 1.0, "base_nll": 1.4})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["Accuracy", "Average compute", "Fluency proxy"] and "KL̂ to the base" in titles
    assert fig.axes[2].get_ylabel() == "fluency proxy (base-model NLL, nats/token)"
    assert any(list(line.get_ydata()) == [1.4, 1.4] for line in fig.axes[2].lines)  # the base level, dashed
    heldout = [
        {"run": r, "step": s, "n": 8, "accuracy": 0.5, "depth_frac": 0.9 - 0.1 * s, "base_nll": 1.0}
        for r in range(2)
        for s in (0, 3, 6)
    ]
    (d / "heldout.jsonl").write_text("".join(json.dumps(r) + "\n" for r in heldout))
    md, _ = build_report([d], tmp_path / "report")
    assert {"rl_dynamics_00_rl", "rl_heldout_00_rl"} <= {
        p.stem for p in (tmp_path / "report" / "figures").glob("*.png")
    }
    assert "base_nll" in md.read_text() and "Held-out prompts (8 fixed prompts" in md.read_text()
