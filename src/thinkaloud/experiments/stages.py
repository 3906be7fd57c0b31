"""The stages of an experiment (the demo, the organism): each runs under a rule on the console and is timed, or
is reused when a re-run finds it finished; at the end, the wall and CPU time per stage on the console and in
``timings.json``.

With a ``plan`` (stage name → its seconds on a reference machine, in order), each stage first says how long the
stages still to run should take: their reference seconds times this machine's pace so far (the seconds the stages
already run took over their reference seconds; 1 before the first), so a machine 3× slower than the reference is
told so after the first stage."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from thinkaloud.io import atomic_write_json


class Stages:
    def __init__(self, console: Console, plan: Mapping[str, float] | None = None, reference: str = ""):
        self.console = console
        self.timings: dict[str, float] = {}  # stage name → seconds, the stages that ran
        self.plan = dict(plan or {})  # stage name → reference seconds
        self.reference = reference  # the machine the plan was measured on, in words
        self._left = list(self.plan)  # planned stages not run or reused yet
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def __call__(self, name: str, done: bool, fn: Callable[[], Any]) -> None:
        """Run ``fn`` as stage ``name`` unless ``done`` (then say it is reused)."""
        if done:
            self.console.print(f"[dim]✓ {name}: finished earlier, reused[/]")
            self._done(name)
            return
        self.console.rule(f"[bold]{name}")
        self.timed(name, fn)

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, recording its seconds under ``name``; returns what it returns."""
        if name in self.plan:
            self.console.print(f"[dim]{self.estimate(name)}[/]", highlight=False)
        start = time.perf_counter()
        result = fn()
        self.timings[name] = time.perf_counter() - start
        self._done(name)
        return result

    def pace(self) -> float | None:
        """Seconds taken over reference seconds, for the planned stages run so far (None before the first)."""
        ran = [name for name in self.timings if name in self.plan and self.plan[name] > 0]
        if not ran:
            return None
        return sum(self.timings[name] for name in ran) / sum(self.plan[name] for name in ran)

    def estimate(self, name: str) -> str:
        """'stage i of n: about … left …' as stage ``name`` starts."""
        pace = self.pace()
        left = (pace or 1.0) * sum(self.plan[n] for n in self._left)
        i = list(self.plan).index(name) + 1
        where = f" on {self.reference}" if self.reference else ""
        how = (
            f"at the reference pace ({_duration(sum(self.plan.values()))} in all{where})"
            if pace is None
            else f"at this machine's pace so far, {pace:.2g}× the reference{where}"
        )
        return f"stage {i} of {len(self.plan)}: about {_duration(left)} left, {how}"

    def _done(self, name: str) -> None:
        if name in self._left:
            self._left.remove(name)

    def finish(self, out: Path) -> None:
        """Print the wall and CPU time with every stage's, and write them to ``out/timings.json``."""
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._cpu0
        stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.timings.items())
        self.console.print(
            f"Wall time {wall:.0f} s, CPU time {cpu:.0f} s on {torch.get_num_threads()} thread(s) ({stages})",
            highlight=False,
        )
        atomic_write_json(
            out / "timings.json",
            {
                "total_s": round(wall, 1),
                "cpu_s": round(cpu, 1),
                "threads": torch.get_num_threads(),
                "stages_s": {k: round(v, 1) for k, v in self.timings.items()},
            },
        )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
