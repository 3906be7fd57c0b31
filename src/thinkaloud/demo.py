"""The whole pipeline on the embedded SmolLM2-135M-Instruct, on a laptop CPU, offline.

calibrate (teacher rollouts + layer KL) → SFT at KL factor 1 → a short RL run → eval of the base,
SFT and RL models → report. Each stage writes into ``out/<stage>`` and is skipped when a re-run finds
it finished. ``--quick`` shrinks every stage (for CI, ≤ 3 minutes); the default takes ≈ 10–15
minutes on 2 cores. The task is ``rg:chain_sum`` (2–3 terms, ≤ 2 digits), one on which this small
model scores above zero, so RL has a reward signal.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from thinkaloud.data.calibrate import CalibrateConfig, calibrate
from thinkaloud.data.tasks import DEFAULT_TASK
from thinkaloud.eval.run import EvalConfig, ReportConfig, evaluate, report
from thinkaloud.hub import DEFAULT_MODEL
from thinkaloud.train.rl import RLConfig, train_rl
from thinkaloud.train.sft import SFTConfig, train_sft


@dataclass
class DemoConfig:
    out: str = field(default="runs/demo", metadata={"help": "output folder (stages reused on re-runs)"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "base model (default: the embedded SmolLM2-135M)"})
    task: str = field(default=DEFAULT_TASK, metadata={"help": "offline task"})
    quick: bool = field(default=False, metadata={"help": "a ≤ 3-minute version for CI"})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: all cores)"})


@dataclass
class Sizes:
    calib_n: int
    calib_tokens: int
    sft_steps: int
    sft_batch: int
    rl_steps: int
    rl_prompts: int
    rl_k: int
    rl_tokens: int
    eval_n: int
    eval_tokens: int


FULL = Sizes(calib_n=48, calib_tokens=48, sft_steps=60, sft_batch=4, rl_steps=8, rl_prompts=2, rl_k=4, rl_tokens=40,
             eval_n=32, eval_tokens=48)
QUICK = Sizes(calib_n=8, calib_tokens=24, sft_steps=6, sft_batch=2, rl_steps=2, rl_prompts=1, rl_k=2, rl_tokens=16,
              eval_n=6, eval_tokens=24)


def demo(config: DemoConfig, console: Console | None = None) -> Path:
    console = console or Console()
    if config.threads:
        torch.set_num_threads(config.threads)
    sizes = QUICK if config.quick else FULL
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def stage(name: str, done: bool, fn) -> None:
        if done:
            console.print(f"[dim]✓ {name}: finished earlier, reused[/]")
            return
        console.rule(f"[bold]{name}")
        start = time.perf_counter()
        fn()
        timings[name] = time.perf_counter() - start

    calib = out / "calib"
    stage("1/5 calibrate", (calib / "manifest.json").exists() and json.loads((calib / "manifest.json").read_text()).get("complete"),
          lambda: calibrate(CalibrateConfig(out=str(calib), model=config.model, task=config.task, n=sizes.calib_n,
                                            max_new_tokens=sizes.calib_tokens, batch_size=16, shard_size=16), console))
    sft = out / "sft"
    stage("2/5 SFT (KL factor 1)", (sft / "model").exists(),
          lambda: train_sft(SFTConfig(calib=str(calib), out=str(sft), kl_factor=1.0, steps=sizes.sft_steps,
                                      batch_size=sizes.sft_batch, exit_loss="expected", save_every=20,
                                      resume=(sft / "checkpoints").exists()), console))
    rl = out / "rl"
    stage("3/5 RL (λ=1.5, β=0.25)", (rl / "model").exists(),
          lambda: train_rl(RLConfig(model=str(sft), out=str(rl), task=config.task, lam=1.5, beta=0.25, k=sizes.rl_k,
                                    prompts_per_step=sizes.rl_prompts, steps=sizes.rl_steps,
                                    max_new_tokens=sizes.rl_tokens, resume=(rl / "checkpoints").exists())))
    evals = [("base", config.model), ("sft", str(sft)), ("rl", str(rl))]
    for label, model in evals:
        target = out / "eval" / label
        stage(f"4/5 eval {label}", (target / "summary.json").exists(),
              lambda model=model, label=label, target=target: evaluate(EvalConfig(
                  model=model, out=str(target), task=config.task, n=sizes.eval_n, max_new_tokens=sizes.eval_tokens,
                  label=label, show=1 if label == "rl" else 0)))
    report_dir = out / "report"
    stage("5/5 report", False, lambda: report(ReportConfig(dirs=[str(out / "eval" / l) for l, _ in evals] + [str(rl)],
                                                           out=str(report_dir))))
    console.print(summary_table([out / "eval" / l for l, _ in evals]))
    stages = ", ".join(f"{name.split(' ', 1)[1]} {seconds:.0f} s" for name, seconds in timings.items())
    console.print(f"Wall time {time.perf_counter() - t0:.0f} s ({stages})")
    console.print(f"Report: [bold]{report_dir / 'report.html'}[/] (and report.md)")
    return report_dir


def summary_table(dirs: list[Path]) -> Table:
    table = Table(title="thinkaloud demo: base → SFT → RL")
    for col in ("model", "accuracy", "early-exit rate", "ALS", "tokens/s", "TV to target"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for d in dirs:
        s = json.loads((d / "summary.json").read_text())
        tv = s.get("tv_distance")
        table.add_row(s.get("label", d.name), f"{s['accuracy']:.3f}", f"{s['early_exit_rate']:.1%}",
                      f"{s['als']:.1%}", f"{s['tokens_per_s']:.1f}", "—" if tv is None else f"{tv:.3f}")
    return table
