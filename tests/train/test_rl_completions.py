"""``rl --log-completions``: every step's sampled completions in completions.jsonl, per run, merged, resume-safe."""

from __future__ import annotations

import pytest
import torch

from tests.train.test_rl import DepthOnlyEnv, config, make_tiny, rows
from thinkaloud.data.env import Scored
from thinkaloud.train.rl import train_rl

pytestmark = pytest.mark.usefixtures("one_thread")


class TextEnv(DepthOnlyEnv):
    """DepthOnlyEnv whose scorer "decodes" each completion as its length and rewards the even ones."""

    def score(self, prompts, out) -> Scored:
        lengths = out.lengths.tolist()
        reward = torch.tensor([float(n % 2 == 0) for n in lengths])
        return Scored(reward=reward, accuracy=reward, texts=[f"n{n}" for n in lengths])


def test_completions_are_logged_per_step_with_their_rewards_depths_and_exits(tmp_path):
    out = tmp_path / "rl"
    train_rl(config(out, steps=2, runs=2, log_completions=True), env=TextEnv(), make_model=make_tiny())
    for run in (0, 1):
        logged = rows(out / f"run-{run}" / "completions.jsonl")
        assert [(r["run"], r["step"]) for r in logged] == [(run, 1), (run, 2)]
        for r in logged:
            assert len(r["texts"]) == len(r["task_reward"]) == len(r["depth"]) == len(r["exit_layers"]) == 8  # P·K
            for text, reward, depth, exits in zip(r["texts"], r["task_reward"], r["depth"], r["exit_layers"]):
                n = int(text[1:])
                assert len(exits) == n and reward == float(n % 2 == 0)
                assert all(layer in (2, 4, 6) for layer in exits)  # exits every 2 layers of 6, 6 = none
                assert depth == pytest.approx(sum(exits) / 6 / n, abs=1e-5) and 0 < depth <= 1
    merged = rows(out / "completions.jsonl")
    assert [(r["run"], r["step"]) for r in merged] == [(0, 1), (0, 2), (1, 1), (1, 2)]


def test_off_by_default_and_texts_are_null_without_decoding(tmp_path):
    train_rl(config(tmp_path / "off", steps=1), env=DepthOnlyEnv(), make_model=make_tiny())
    assert not (tmp_path / "off" / "completions.jsonl").exists()
    train_rl(config(tmp_path / "on", steps=1, log_completions=True), env=DepthOnlyEnv(), make_model=make_tiny())
    (row,) = rows(tmp_path / "on" / "completions.jsonl")
    assert row["texts"] is None and row["task_reward"] == [0.0] * 8


def test_resume_keeps_the_completions_up_to_the_checkpoint(tmp_path):
    kw = dict(steps=4, beta=0.1, save_every=2, log_completions=True)
    train_rl(config(tmp_path / "full", **kw), env=TextEnv(), make_model=make_tiny())

    def kill(run, step, row):
        if step == 3:  # after the step-3 row, with the last checkpoint at step 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_rl(config(tmp_path / "killed", **kw), env=TextEnv(), make_model=make_tiny(), on_step=kill)
    assert [r["step"] for r in rows(tmp_path / "killed" / "completions.jsonl")] == [1, 2, 3]
    train_rl(config(tmp_path / "killed", **kw, resume=True), env=TextEnv(), make_model=make_tiny())
    assert rows(tmp_path / "killed" / "completions.jsonl") == rows(tmp_path / "full" / "completions.jsonl")
