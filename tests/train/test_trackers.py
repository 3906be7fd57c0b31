"""``--report-to``: TensorBoard event files of tiny SFT and RL runs hold the scalars of log.jsonl (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import tiny_calibration, tiny_model_dir
from tests.train.test_rl import DepthOnlyEnv, HeldoutEnv, make_tiny
from tests.train.test_rl import config as rl_config
from thinkaloud.train.rl import train_rl
from thinkaloud.train.sft import SFTConfig, train_sft
from thinkaloud.train.trackers import hparams, scalars

pytestmark = pytest.mark.usefixtures("one_thread")


def events(folder: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the TensorBoard event files directly in ``folder``: {tag: {step: value}}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_rows_logged(log_rows: list[dict], logged: dict[str, dict[int, float]], prefix: str = "") -> None:
    """Each numeric field of each row is a scalar at the row's step (float32 in the event file)."""
    expected = 0
    for row in log_rows:
        for key, value in scalars(row, prefix).items():
            assert logged[key][row["step"]] == pytest.approx(value, rel=1e-6, abs=1e-6), (key, row["step"])
            expected += 1
    assert expected == sum(len(v) for k, v in logged.items() if k.startswith(prefix)) > 0


def test_scalars_keep_the_numbers_of_a_row():
    row = {"run": 0, "step": 3, "loss": 1.5, "n": 4, "ok": True, "coherence": None, "offset": "-inf", "per": [1, 2]}
    assert scalars(row) == {"loss": 1.5, "n": 4.0, "ok": 1.0}
    assert scalars(row, "heldout/") == {"heldout/loss": 1.5, "heldout/n": 4.0, "heldout/ok": 1.0}
    assert hparams({"a": None, "b": [1, 2], "c": 0.5, "d": float("-inf"), "e": "x"}) == {
        "b": "[1, 2]",
        "c": 0.5,
        "d": "-inf",
        "e": "x",
    }


def test_report_to_is_checked_when_the_config_is_made(tmp_path):
    with pytest.raises(ValueError, match="report_to must be one of"):
        SFTConfig(calib="c", out="o", report_to="mlflow")
    with pytest.raises(ValueError, match="report_to must be one of"):
        rl_config(tmp_path, report_to="tensorbord")


def test_sft_tensorboard_scalars_match_the_log(tmp_path):
    pytest.importorskip("tensorboard")
    calib = tiny_calibration(tmp_path / "calib", tiny_model_dir(tmp_path / "model"), n=4)
    out = tmp_path / "sft"
    train_sft(
        SFTConfig(
            calib=str(calib), out=str(out), steps=3, batch_size=2, save_every=3, device="cpu", report_to="tensorboard"
        )
    )
    logged = events(out / "thinkaloud-sft")
    assert {"loss", "distill", "exit_ce", "head_bias_mean"} <= logged.keys()
    assert_rows_logged(rows(out / "log.jsonl"), logged)


def test_rl_tensorboard_scalars_match_the_logs(tmp_path):
    pytest.importorskip("tensorboard")
    train_rl(
        rl_config(tmp_path, steps=3, eval_every=2, eval_n=2, max_new_tokens=6, report_to="tensorboard"),
        env=DepthOnlyEnv(),
        make_model=make_tiny(),
        heldout_env=HeldoutEnv(),
    )
    logged = events(tmp_path / "thinkaloud-rl")
    assert {"reward", "early_exit_rate", "als", "kl", "loss", "heldout/accuracy", "heldout/als"} <= logged.keys()
    assert_rows_logged(rows(tmp_path / "log.jsonl"), {k: v for k, v in logged.items() if "/" not in k})
    held = rows(tmp_path / "heldout.jsonl")
    assert [r["step"] for r in held] == [0, 2, 3]
    assert_rows_logged(held, logged, prefix="heldout/")


def test_several_rl_runs_are_several_tensorboard_runs(tmp_path):
    pytest.importorskip("tensorboard")
    train_rl(
        rl_config(tmp_path, steps=2, runs=2, max_new_tokens=4, report_to="tensorboard"),
        env=DepthOnlyEnv(),
        make_model=make_tiny(),
    )
    merged = rows(tmp_path / "log.jsonl")
    for run in (0, 1):
        logged = events(tmp_path / "thinkaloud-rl" / f"run-{run}")
        assert_rows_logged([r for r in merged if r["run"] == run], logged)


def test_wandb_offline_writes_under_the_run_folder(tmp_path, monkeypatch):
    """Runs only where wandb is installed (it is not a dependency); offline, nothing leaves the machine."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train_rl(
        rl_config(tmp_path, steps=1, max_new_tokens=4, report_to="wandb"), env=DepthOnlyEnv(), make_model=make_tiny()
    )
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_a_tracker_that_is_not_installed_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    from thinkaloud.cli import main as cli_main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code = cli_main(["rl", "--model", "tiny", "--out", str(tmp_path / "o"), "--report-to", "wandb"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install wandb" in err[0], err
