"""The Measure interface: what the eval job computes after generation, one function each.

A measure is ``measure(ctx: EvalContext) -> MeasureResult``: it receives the eval's config, the loaded
model, the task, the items, the generated batches and the records (one per item, in item order), and
returns summary fields (merged into ``summary.json``) and optionally one dict of fields per record
(merged into ``records.jsonl``). A measure that is switched off returns its fields with null values, so
the files keep one schema. ``thinkaloud.eval.run.measures_for(config)`` lists the measures of a run, in
order; a new measure is a module of this package and one line there.

Built in: the calibration target and the coherence judge (``thinkaloud.measures.core``), the speed against
the base model (``thinkaloud.eval.speed.speed_measure``) and the externalisation measures selected by
``--measures`` (``thinkaloud.measures.externalisation``), which read ``EvalContext.responses``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from thinkaloud.data.task import Item, Task
from thinkaloud.measures.config import EvalConfig
from thinkaloud.measures.responses import Response, from_generation
from thinkaloud.model.generation_output import GenerationOutput
from thinkaloud.model.loading import Loaded


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
        """The generations as :class:`~thinkaloud.measures.responses.Response` rows, in record order."""
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
