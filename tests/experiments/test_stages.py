"""The stages of an experiment: timings, reuse, and the time left estimated from a reference plan."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from thinkaloud.experiments import stages as stages_module
from thinkaloud.experiments.demo_config import KL_FACTORS, RL_KL_TARGETS, stage_plan
from thinkaloud.experiments.stages import Stages


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(stages_module.time, "perf_counter", fake)
    return fake


def test_the_time_left_follows_the_pace_of_the_stages_run_so_far(clock, tmp_path):
    out = io.StringIO()
    stages = Stages(Console(file=out, width=200), {"a": 10.0, "b": 20.0, "c": 30.0, "d": 40.0}, "the reference")

    def work(seconds):
        def run():
            clock.now += seconds

        return run

    stages("a", False, work(20.0))  # twice the reference
    stages("b", True, work(99.0))  # reused: takes no time, and is no longer ahead
    stages("c", False, work(30.0))
    lines = [line for line in out.getvalue().splitlines() if line.startswith("stage ")]
    assert lines[0] == "stage 1 of 4: about 2 min left, at the reference pace (2 min in all on the reference)"
    # after a: pace 20/10 = 2, left c + d = 70 reference seconds → 140 s
    assert (
        lines[1] == "stage 3 of 4: about 2 min left, at this machine's pace so far, 2× the reference on the reference"
    )
    assert stages.pace() == pytest.approx((20 + 30) / (10 + 30))
    assert "b" not in stages.timings and stages.timings == {"a": 20.0, "c": 30.0}
    stages.finish(tmp_path)
    assert json.loads((tmp_path / "timings.json").read_text())["stages_s"] == {"a": 20.0, "c": 30.0}


def test_an_unplanned_stage_says_nothing_of_time(clock):
    out = io.StringIO()
    stages = Stages(Console(file=out, width=200))
    stages("a", False, lambda: None)
    assert "left" not in out.getvalue()


def test_the_demo_plans_every_stage_it_runs_and_the_first_run_costs_more():
    cached = stage_plan(0, organism=True, pretrain=False, convert=False)
    first = stage_plan(0, organism=True, pretrain=True, convert=True)
    assert len(cached) == 2 + 1 + 2 * len(KL_FACTORS) + len(RL_KL_TARGETS) + 2
    assert list(cached)[:3] == ["organism", "calibrate", "eval base"] and list(cached)[-1] == "report"
    assert sum(first.values()) > sum(cached.values())
    assert "organism" not in stage_plan(0, organism=False, pretrain=True, convert=False)
