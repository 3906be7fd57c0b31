"""The stages of an experiment (the demo, the organism): each runs under a rule on the console and is timed, or
is reused when a re-run finds it finished; at the end, the wall and CPU time per stage on the console and in
``timings.json``."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from thinkaloud.io import atomic_write_json


class Stages:
    def __init__(self, console: Console):
        self.console = console
        self.timings: dict[str, float] = {}  # stage name → seconds, the stages that ran
        self._t0, self._cpu0 = time.perf_counter(), time.process_time()

    def __call__(self, name: str, done: bool, fn: Callable[[], Any]) -> None:
        """Run ``fn`` as stage ``name`` unless ``done`` (then say it is reused)."""
        if done:
            self.console.print(f"[dim]✓ {name}: finished earlier, reused[/]")
            return
        self.console.rule(f"[bold]{name}")
        self.timed(name, fn)

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn``, recording its seconds under ``name``; returns what it returns."""
        start = time.perf_counter()
        result = fn()
        self.timings[name] = time.perf_counter() - start
        return result

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
