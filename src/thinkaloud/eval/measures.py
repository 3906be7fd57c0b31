"""Measures: what the eval job computes after generation, one function each.

A measure is ``measure(ctx: EvalContext) -> MeasureResult``: it receives the loaded model, the task,
the items, the generated batches and the records (one per item, in item order), and returns
summary fields (merged into ``summary.json``) and optionally one dict of fields per record (merged
into ``records.jsonl``). A measure that is switched off returns its fields with null values, so the
files keep one schema. ``thinkaloud.eval.run.measures_for(config)`` lists the measures of a run, in
order; a new measure is one function here (or in its own module) and one line there.

Built in: the calibration target of the completions (``target_measure``), the coherence judge
(``judge_measure``), the speed against the base model (``thinkaloud.eval.speed.speed_measure``) and
the externalisation measures selected by ``--measures`` (``thinkaloud.eval.externalisation``:
reliance, future lens, fluency proxies), which read ``EvalContext.responses``.

The calibration target: per-layer KL to the final layer of the same completions, under the logit
lens with the adapter disabled (the base model), ``exit_targets`` at the target's KL factor → mean
target histogram, and its TV distance to the model's exit histogram. It is computed on the evaluated
model's own completions (not on base-model rollouts as in calibration), so it answers "where would
the calibration target exit on this text".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from thinkaloud.data.tasks import Item, Task
from thinkaloud.eval import judge as judging
from thinkaloud.eval import metrics
from thinkaloud.eval.responses import Response, from_generation
from thinkaloud.model.exits import exit_targets
from thinkaloud.model.generate import GenerationOutput
from thinkaloud.model.loading import Loaded

if TYPE_CHECKING:
    from thinkaloud.eval.run import EvalConfig


@dataclass
class GenBatch:
    """One generated batch: its items, rendered prompts and the generation."""

    items: list[Item]
    prompts: list[str]
    gen: GenerationOutput
    prompt_lengths: torch.Tensor  # (b,) real prompt tokens per row

    @property
    def prompt_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The left-padded (b, P) prompt ids and mask the batch was generated from."""
        P = self.gen.prompt_length
        return self.gen.sequences[:, :P], self.gen.attention_mask[:, :P]


@dataclass
class EvalContext:
    """Everything a measure may read. ``records`` are the per-item dicts written to records.jsonl."""

    config: EvalConfig
    loaded: Loaded
    task: Task
    items: list[Item]
    batches: list[GenBatch]
    records: list[dict[str, Any]]
    layers: list[list[int]]  # exit layer of every generated token, per record
    target: dict[str, Any] | None  # {"kl_factor", "source"} of the calibration target, or None (off)
    device: str
    console: Console
    offset: float  # the exit offset the eval generated with (−inf: no exits)

    @cached_property
    def responses(self) -> list[Response]:
        """The generations as :class:`~thinkaloud.eval.responses.Response` rows, in record order."""
        return [r for b in self.batches for r in from_generation(b.gen, b.items)]


@dataclass
class MeasureResult:
    summary: dict[str, Any]
    records: list[dict[str, Any]] | None = None  # one dict per record, in record order


Measure = Callable[[EvalContext], MeasureResult]


def apply_measure(measure: Measure, ctx: EvalContext, summary: dict[str, Any]) -> None:
    """Run ``measure`` and merge its fields into ``summary`` and ``ctx.records``."""
    result = measure(ctx)
    summary.update(result.summary)
    if result.records is not None:
        if len(result.records) != len(ctx.records):
            raise RuntimeError(
                f"{getattr(measure, '__name__', measure)} returned {len(result.records)} record "
                f"fields for {len(ctx.records)} records"
            )
        for record, extra in zip(ctx.records, result.records):
            record.update(extra)


def progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )


# ---------------------------------------------------------------------------------------------------
# The calibration target


def target_measure(ctx: EvalContext) -> MeasureResult:
    """``target_hist`` and ``tv_distance`` (null when the target is off)."""
    if ctx.target is None:
        return MeasureResult({"target_hist": None, "tv_distance": None})
    model = ctx.loaded.model
    E, L = list(model.layers), model.num_layers
    parts = []
    with progress(ctx.console) as bars:
        bar = bars.add_task("target (layer KL)", total=len(ctx.items))
        for b in ctx.batches:
            gen = b.gen
            positions = torch.zeros_like(gen.attention_mask, dtype=torch.bool)  # (b, P+N)
            positions[:, gen.predicting_positions()] = gen.completion_mask  # positions that predicted new tokens
            with model.disable_adapter():
                kl = model.layer_kl(gen.sequences, gen.attention_mask, positions=positions)  # (b, P+N, m)
            parts.append(exit_targets(kl[positions], ctx.target["kl_factor"]).cpu())  # (n_tokens, m+1), record order
            bars.advance(bar, len(b.items))
    target_hist = metrics.target_histogram(torch.cat(parts), E + [L])
    exit_hist = metrics.exit_histogram(ctx.layers, E, num_layers=L)
    return MeasureResult(
        {
            "target_hist": {str(k): v for k, v in target_hist.items()},
            "tv_distance": metrics.tv_distance(exit_hist, target_hist),
        }
    )


# ---------------------------------------------------------------------------------------------------
# The coherence judge


def judge_measure(ctx: EvalContext) -> MeasureResult:
    """``coherence`` (with the rubric) and per record ``judge`` / ``judge_missing`` (null without a judge)."""
    config = ctx.config
    if not config.judge:
        return MeasureResult({"coherence": None}, [{"judge": None, "judge_missing": None} for _ in ctx.records])
    judge = judging.make_judge(config.judge, config.judge_concurrency, ctx.device, rubric=config.rubric)
    pairs = [(item.question, r["completion"]) for item, r in zip(ctx.items, ctx.records)]
    with ctx.console.status(f"judging {len(pairs)} responses with {config.judge} ({config.rubric} rubric)…"):
        results = judging.judge_many(judge, pairs)
    fields = [
        {
            "judge": res.judgement.as_dict() if res.judgement else None,
            "judge_missing": res.missing if res.judgement is None else None,
        }
        for res in results
    ]
    return MeasureResult({"coherence": {**judging.coherence_summary(results), "rubric": config.rubric}}, fields)
