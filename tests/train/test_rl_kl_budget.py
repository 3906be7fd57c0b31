"""RL with a KL budget (``kl_target``): β per step in the log, the controller's rule, resume, the CLI; degenerate
completions per step and a collapsed run's summary."""

from __future__ import annotations

import json

import pytest

from tests.train.test_rl import DepthOnlyEnv, config, make_tiny, rows
from thinkaloud.cli import main as cli_main
from thinkaloud.train import degenerate, rl
from thinkaloud.train.kl_control import next_beta
from thinkaloud.train.rl import train_rl

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("target", [0.1, 5.0])  # below / above a measured KL̂ of 0.5
def test_a_run_with_a_target_logs_beta_per_step_and_adapts_it(tmp_path, monkeypatch, target):
    kl_estimate = rl.kl_estimate
    monkeypatch.setattr(rl, "kl_estimate", lambda *a: kl_estimate(*a) * 0 + 0.5)  # every completion: KL̂ = 0.5
    train_rl(config(tmp_path, steps=4, beta=0.1, kl_target=target), env=DepthOnlyEnv(), make_model=make_tiny())
    log = rows(tmp_path / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["kl"] == pytest.approx(0.5) for r in log)
    assert log[0]["beta"] == 0.1  # --beta is the starting β
    assert all(r["kl_target"] == target and r["completions"] == 8 for r in log)
    factor = 1.2 if target < 0.5 else 0.8  # the error is clipped at ±0.2, one step's n per horizon
    assert [r["beta"] for r in log] == pytest.approx([0.1 * factor**i for i in range(4)])
    summary = json.loads((tmp_path / "rl_summary.json").read_text())["runs"][0]
    assert summary["beta_final"] == pytest.approx(0.1 * factor**4) and summary["collapse"] is None
    assert (tmp_path / "figures" / "rl_dynamics.png").stat().st_size > 0


def check_controller(log, target, n, horizon):
    """Each step's β is the one before it, updated with that step's logged KL̂ (the rewards use the older β)."""
    for now, after in zip(log, log[1:]):
        assert after["beta"] == pytest.approx(next_beta(now["beta"], now["kl"], target, n=n, horizon=horizon))


def test_without_a_target_beta_stays_fixed_and_degenerate_shares_are_logged(tmp_path):
    train_rl(config(tmp_path, steps=2, beta=0.05), env=DepthOnlyEnv(), make_model=make_tiny())
    log = rows(tmp_path / "log.jsonl")
    assert [r["beta"] for r in log] == [0.05, 0.05] and all(r["kl_target"] is None for r in log)
    for r in log:
        assert all(0 <= r[k] <= 1 for k in ("degenerate", *degenerate.KINDS))
        assert r["no_answer"] == 0  # the environment extracts no answers
        assert r["degenerate"] >= max(r["empty"], r["repeat"], r["loop"])


def test_resume_restores_the_adapted_beta(tmp_path):
    kw = dict(steps=4, beta=0.1, kl_target=1e-4, kl_horizon=4.0)
    train_rl(config(tmp_path / "full", **kw), env=DepthOnlyEnv(), make_model=make_tiny())

    def kill(run, step, row):
        if step == 3:  # the last checkpoint is step 2's
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rl(config(tmp_path / "killed", **kw), env=DepthOnlyEnv(), make_model=make_tiny(), on_step=kill)
    train_rl(config(tmp_path / "killed", **kw, resume=True), env=DepthOnlyEnv(), make_model=make_tiny())
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]
    full, resumed = strip(rows(tmp_path / "full" / "log.jsonl")), strip(rows(tmp_path / "killed" / "log.jsonl"))
    assert resumed == full and len({r["beta"] for r in full}) == 4
    check_controller(full, 1e-4, n=8, horizon=4.0)  # n/H = 2: factors in [0.6, 1.4]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--kl-target", "0.5", "--beta", "0"], ["kl_target", "starting beta > 0"]),
        (["--kl-target", "0"], ["kl_target", "target > 0"]),
        (["--kl-horizon", "4"], ["kl_horizon needs kl_target"]),
    ],
)
def test_cli_kl_target_errors_are_one_line(capsys, tmp_path, flags, words):
    code = cli_main(["rl", "--model", "smollm2-135m", "--out", str(tmp_path / "rl"), *flags])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("thinkaloud rl: error: "), lines
    assert all(w in lines[0] for w in words), lines


def test_help_says_beta_is_the_starting_beta_with_a_target(capsys):
    with pytest.raises(SystemExit):
        cli_main(["rl", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "with --kl-target, the starting β" in text and "--kl-horizon" in text


def test_a_collapsed_run_says_so_in_its_summary_and_on_the_terminal(tmp_path, monkeypatch, capsys):
    """Every completion counted degenerate from step 2 on: a collapse over steps 2–4 (3 in a row)."""
    real = degenerate.counts
    calls = []

    def counts(out, *args):
        calls.append(1)
        n = real(out, *args)[0]
        none = [0.0] * len(degenerate.KINDS)
        return [n, n, *none[1:], n] if len(calls) > 1 else [n, *none, 0.0]

    monkeypatch.setattr(rl.degenerate, "counts", counts)
    train_rl(config(tmp_path, steps=4, runs=2), env=DepthOnlyEnv(), make_model=make_tiny())
    summary = json.loads((tmp_path / "rl_summary.json").read_text())["runs"]
    assert [s["run"] for s in summary] == [0, 1]
    first = summary[0]["collapse"]
    assert (first["from_step"], first["to_step"]) == (2, 4) and summary[0]["last"]["degenerate"] == 1.0
    err = " ".join(capsys.readouterr().err.split())
    assert "Run 0: the policy collapsed" in err and "Run 1: the policy collapsed" in err
