"""The demo's findings on synthetic outputs whose answer is known: verdicts, intervals, the written file."""

from __future__ import annotations

import json
import random

import pytest

from thinkaloud.experiments import findings as df
from thinkaloud.report.build import build_report

L, E = 30, [5, 10, 15, 20, 25]


def records(
    label: str,
    exit_share: float,
    nll: float,
    n: int = 24,
    seed: int = 0,
    early: int = 5,
    score: float = 0.5,
    distinct2: float = 0.9,
    coherence: float | None = None,
) -> df.EvalRecords:
    """n responses of 20 tokens, each token exiting at ``early`` with probability ``exit_share``."""
    rng = random.Random(seed)
    layers = [[early if rng.random() < exit_share else L for _ in range(20)] for _ in range(n)]
    return df.EvalRecords(
        label,
        layers,
        [nll + rng.gauss(0, 0.1) for _ in range(n)],
        [float(rng.random() < score) for _ in range(n)],
        [None if coherence is None else coherence + rng.gauss(0, 0.3) for _ in range(n)],
        L,
        E + [L],
        [min(1.0, distinct2 + rng.gauss(0, 0.02)) for _ in range(n)],
    )


def test_verdict_rules():
    assert df.direction_verdict(0.3, (0.1, 0.5), +1) == df.HELD
    assert df.direction_verdict(0.3, (-0.1, 0.5), +1) == df.NOT_SIGNIFICANT
    assert df.direction_verdict(-0.3, (-0.5, -0.1), +1) == df.DID_NOT_HOLD
    assert df.direction_verdict(-0.3, (-0.5, -0.1), -1) == df.HELD
    assert df.no_harm_verdict([(0.0, (-0.2, 0.2))]) == df.HELD
    assert df.no_harm_verdict([(-0.1, (-0.3, 0.1))]) == df.NOT_SIGNIFICANT
    assert df.no_harm_verdict([(0.0, (-0.2, 0.2)), (-0.3, (-0.5, -0.1))]) == df.DID_NOT_HOLD


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    values = [random.Random(i).gauss(1.0, 1.0) for i in range(400)]
    mean = lambda idx: sum(values[i] for i in idx) / len(idx)
    lo, hi = df.bootstrap_ci(mean, 400)
    assert lo < mean(range(400)) < hi and 0.1 < hi - lo < 0.3  # ≈ 2 · 1.96 / √400
    lo_small, hi_small = df.bootstrap_ci(mean, 25)
    assert hi_small - lo_small > hi - lo


def test_finding_1_orders_factors_and_says_when_it_fails():
    good = {0.25: records("a", 0.6, 2.0), 1.0: records("b", 0.3, 1.5, seed=1), 4.0: records("c", 0.05, 1.0, seed=2)}
    exits, fluency = df.finding_1(good)
    assert exits.verdict == df.HELD and fluency.verdict == df.HELD
    assert exits.measured.startswith("early-exit rate 57.7% → 31.9% → 4.8%") and "F=0.25 − F=4" in exits.measured
    reversed_nll = {**good, 0.25: records("a", 0.6, 0.9)}  # more exits, yet more natural text
    assert df.finding_1(reversed_nll)[1].verdict == df.DID_NOT_HOLD
    flat = {f: records(str(f), 0.3, 1.0, seed=7) for f in good}  # identical models: no ordering
    assert df.finding_1(flat)[0].verdict == df.DID_NOT_HOLD


def test_finding_2_compares_with_the_base_models_distance():
    target = {5: 0.3, 10: 0.0, 15: 0.0, 20: 0.0, 25: 0.0, 30: 0.7}
    base = records("base", 0.0, 1.0)
    follows = {1.0: records("f", 0.3, 1.0)}
    assert df.finding_2(follows, base, {1.0: target}).verdict == df.HELD
    overshoots = {1.0: records("f", 0.95, 1.0)}  # TV ≈ 0.65 > base's 0.3
    assert df.finding_2(overshoots, base, {1.0: target}).verdict == df.DID_NOT_HOLD


def heldout_rows(
    drop: float,
    n: int = 8,
    runs: int = 3,
    acc_last: float = 0.25,
    nll_rise: float = 0.0,
    d2_fall: float = 0.0,
) -> list[dict]:
    rows = []
    for run in range(runs):
        rng = random.Random(run)
        start = [0.95 + rng.gauss(0, 0.01) for _ in range(n)]
        for step, depths, acc, nll, d2 in (
            (0, start, 0.25, 1.8, 0.9),
            (6, [d - drop + rng.gauss(0, 0.01) for d in start], acc_last, 1.8 + nll_rise, 0.9 - d2_fall),
        ):
            accs = [float(i < round(acc * n)) for i in range(n)]
            nlls = [nll + rng.gauss(0, 0.05) for _ in range(n)]
            d2s = [d2 + rng.gauss(0, 0.01) for _ in range(n)]
            rows.append(
                {
                    "run": run,
                    "step": step,
                    "n": n,
                    "depth_frac": sum(depths) / n,
                    "accuracy": sum(accs) / n,
                    "base_nll": sum(nlls) / n,
                    "distinct2": sum(d2s) / n,
                    "prompt_depth_frac": depths,
                    "prompt_accuracy": accs,
                    "prompt_base_nll": nlls,
                    "prompt_distinct2": d2s,
                }
            )
    return rows


def test_finding_3_and_4_on_heldout_rows():
    assert df.finding_3(heldout_rows(0.1)).verdict == df.HELD
    assert df.finding_3(heldout_rows(0.0)).verdict in (df.NOT_SIGNIFICANT, df.DID_NOT_HOLD)
    assert df.finding_3(heldout_rows(-0.1)).verdict == df.DID_NOT_HOLD
    assert (
        "3 seeds" in df.finding_3(heldout_rows(0.1)).measured
        and "SE over seeds" in df.finding_3(heldout_rows(0.1)).measured
    )
    one = df.finding_3(heldout_rows(0.1, runs=1)).measured
    assert "(1 seed)" in one and "SE" not in one  # no standard error from a single seed
    base = {"accuracy": 0.25, "prompt_accuracy": [1.0, 1.0] + [0.0] * 6}
    rl, b = records("RL", 0.5, 1.0, score=0.5), records("base", 0.0, 1.0, score=0.5)
    assert df.finding_4(heldout_rows(0.1), base, rl, b).verdict == df.HELD
    collapsed = {**base, "prompt_accuracy": [1.0] * 8, "accuracy": 1.0}  # the base answers all, RL a quarter
    assert df.finding_4(heldout_rows(0.1), collapsed, rl, b).verdict == df.DID_NOT_HOLD


def test_finding_5_coherence_through_rl_against_the_sft_model():
    sft = records("F=1", 0.3, 1.8, score=0.1)
    same = records("RL", 0.5, 1.8, seed=3, score=0.1)
    held = df.finding_5(heldout_rows(0.1), same, sft)
    assert held.verdict == df.HELD and held.finding.startswith("(5) coherence holds through RL")
    assert "fluency proxies" in held.finding and "3 seeds" in held.measured and "RL − F=1" in held.measured
    # the text falls apart: the base model's NLL rises by more than a nat on the held-out prompts and the eval
    broken = df.finding_5(heldout_rows(0.1, nll_rise=1.4, d2_fall=0.4), records("RL", 0.9, 3.2, seed=3), sft)
    assert broken.verdict == df.DID_NOT_HOLD
    # distinct-2 alone falling (a loop) is enough; a response with no bigram counts as 0
    looping = records("RL", 0.5, 1.8, seed=3, distinct2=0.4)
    assert df.finding_5(heldout_rows(0.1), looping, sft).verdict == df.DID_NOT_HOLD
    rows = heldout_rows(0.1)
    for r in rows:
        if r["step"] == 6:
            r["prompt_distinct2"] = [None] * 6 + r["prompt_distinct2"][6:]  # empty answers
    assert df.finding_5(rows, same, sft).verdict == df.DID_NOT_HOLD
    # the rules of (4): a significant rise, even a small one, did not hold; a rise beyond the margin whose
    # interval includes 0 is not significant
    assert df.finding_5(heldout_rows(0.1, nll_rise=0.1), same, sft).verdict == df.DID_NOT_HOLD
    rows = heldout_rows(0.1)
    start = {r["run"]: r["prompt_base_nll"] for r in rows if r["step"] == 0}
    for r in rows:  # +0.3 nats on average, beyond the margin, but +1.8 on half the prompts and −1.2 on the others
        if r["step"] == 6:
            r["prompt_base_nll"] = [v + (1.8 if i % 2 else -1.2) for i, v in enumerate(start[r["run"]])]
    noisy = df.finding_5(rows, same, sft)
    assert noisy.verdict == df.NOT_SIGNIFICANT and "+0.300 [" in noisy.measured, noisy.measured


def test_finding_5_uses_the_judge_when_there_is_one():
    sft = records("F=1", 0.3, 1.8, coherence=7.0)
    judged = df.finding_5(heldout_rows(0.1, nll_rise=1.4), records("RL", 0.5, 3.0, seed=3, coherence=7.0), sft)
    assert judged.verdict == df.HELD and "judge's coherence" in judged.finding and "judge coherence" in judged.measured
    worse = records("RL", 0.5, 1.8, seed=3, coherence=4.0)
    assert df.finding_5(heldout_rows(0.1), worse, sft).verdict == df.DID_NOT_HOLD


def test_written_findings_become_the_reports_last_section(tmp_path):
    from thinkaloud.report.measure_plots import plot_fluency_distributions
    from thinkaloud.report.plots import save_figure

    findings = [df.Finding("(3) RL lowers mean compute", "−5.0 pts [−8.0, −2.0]", df.HELD)]
    save_figure(
        plot_fluency_distributions({"base": [1.0, 1.2], "F=1": [1.5, 1.7, 1.6]}),
        tmp_path / "findings" / "figures" / "fluency",
    )
    path = df.write_findings(
        tmp_path / "findings",
        "Findings: test",
        findings,
        ["a note"],
        [],
        [{"file": "figures/fluency", "caption": "fluency per response"}],
    )
    assert json.loads(path.read_text())["findings"][0]["verdict"] == "held"
    md, page = build_report([tmp_path / "findings"], tmp_path / "report")
    text = md.read_text()
    assert "## Findings: test" in text and "| (3) RL lowers mean compute | −5.0 pts [−8.0, −2.0] | held |" in text
    assert "a note" in text and "fluency per response" in page.read_text()
    assert (tmp_path / "report" / "figures" / "findings_00_00_fluency.png").is_file()
    assert "(2)" in df.findings_block(
        [df.Finding("(2) x", "y", df.NOT_SIGNIFICANT)]
    ) and "NOT SIGNIFICANT" in df.findings_block([df.Finding("(2) x", "y", df.NOT_SIGNIFICANT)])


def test_paired_comparison_needs_the_same_items():
    with pytest.raises(ValueError, match="not the same items"):
        df._paired(records("a", 0.1, 1.0, n=4), records("b", 0.1, 1.0, n=5), "exit_rate")


def test_demo_refuses_a_folder_of_other_settings(tmp_path):
    from thinkaloud.errors import UserError
    from thinkaloud.experiments.demo import check_folder
    from thinkaloud.experiments.demo_config import DemoConfig

    check_folder(tmp_path, DemoConfig(out=str(tmp_path), seed=1))
    check_folder(tmp_path, DemoConfig(out=str(tmp_path), seed=1))  # the same settings: reused
    with pytest.raises(UserError, match="other settings"):
        check_folder(tmp_path, DemoConfig(out=str(tmp_path), seed=2))


def test_finding_4_without_any_correct_base_answer_is_not_a_pass():
    base = {"accuracy": 0.0, "prompt_accuracy": [0.0] * 8}
    rl, b = records("RL", 0.5, 1.0, score=0.0), records("base", 0.0, 1.0, score=0.0)
    finding = df.finding_4(heldout_rows(0.1, acc_last=0.0), base, rl, b)
    assert finding.verdict == df.NOT_SIGNIFICANT and "no signal" in finding.measured
