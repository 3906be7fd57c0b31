"""The externalisation measures as eval measures: reliance, future lens, fluency proxies.

``thinkaloud eval --measures reliance,lens,fluency`` selects them (``EvalConfig.measures``); each one
reads the eval's own generations (``EvalContext.responses``: prompt ids, generated ids and recorded
exits per item) and writes

- in ``summary.json``: ``"reliance"`` (``thinkaloud.measures.reliance.early_answering``: agreement per
  fraction of the reasoning shown, area over the curve, accuracy at f = 0 and f = 1), ``"lens"``
  (``thinkaloud.measures.lens.future_lens``: the layer × k table of held-out top-1 accuracies) and
  ``"fluency"`` (``thinkaloud.measures.fluency.fluency``: base-model NLL per token, repeated 4-grams,
  distinct bigrams — proxies, no judge), each with its wall time in ``"seconds"``;
- in every record of ``records.jsonl``: the same three keys with the measure's per-response fields.

A measure that is off writes ``null`` in both places (one schema). The future lens needs three
responses with more than three tokens (fit, validation, held out); with fewer it writes
``{"skipped": reason}``. The short answers of early answering are written like the eval's own tokens:
greedy, exits sampled at the eval's offset (none for a base model), seeded with the eval's seed.

Default: all three (``DEFAULT_MEASURES``). Their cost, measured with ``benchmarks/measures.py``
(SmolLM2-135M base on ``tom``, n = 32, up to 96 new tokens, 2 CPU cores): eval generation 17.8 s;
reliance 5.5 s (0.31×), future lens 8.4 s (0.47×), fluency 6.1 s (0.34×) — reliance + lens 0.78× the
eval's own generation. Early answering reads each prompt + reasoning once and answers every cut from
its cached keys and values (``thinkaloud.model.generate.prefill``); the future lens settles most
held-out states on the logits of the texts' own tokens before any full-vocabulary readout
(``thinkaloud.measures.lens.top1``). ``--measures fluency`` (or ``''``) leaves them out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from thinkaloud.measures.base import EvalContext, MeasureResult
from thinkaloud.measures.fluency import fluency
from thinkaloud.measures.lens import future_lens
from thinkaloud.measures.reliance import early_answering, model_answerer


def timed(
    name: str, ctx: EvalContext, compute: Callable[[], tuple[dict[str, Any], Sequence[dict[str, Any] | None]]]
) -> MeasureResult:
    """Nulls when ``name`` is off, else the measure's summary (+ "seconds") and per-record fields
    (``name`` in ``EvalConfig.measures``; the load-bearing measures use it too)."""
    if name not in ctx.config.measures:
        return MeasureResult({name: None}, [{name: None} for _ in ctx.records])
    t0 = time.perf_counter()
    with ctx.console.status(f"{name} on {len(ctx.records)} responses…"):
        summary, records = compute()
    summary = {**summary, "seconds": round(time.perf_counter() - t0, 3)}
    return MeasureResult({name: summary}, [{name: r} for r in records])


def reliance_measure(ctx: EvalContext) -> MeasureResult:
    """Early answering (Lanham et al. 2023) with the eval's model, offset and seed."""
    loaded, config = ctx.loaded, ctx.config
    answerer = model_answerer(
        loaded.model, loaded.tokenizer, offset=ctx.offset, batch_size=config.batch_size, seed=config.seed
    )
    return timed("reliance", ctx, lambda: early_answering(ctx.task, ctx.responses, loaded.tokenizer, answerer))


def lens_measure(ctx: EvalContext) -> MeasureResult:
    """The linear future lens (Pal et al. 2023) on the eval's responses with their recorded exits."""

    def compute() -> tuple[dict[str, Any], Sequence[dict[str, Any] | None]]:
        try:
            return future_lens(ctx.loaded.model, ctx.responses)
        except ValueError as e:  # too few or too short responses to fit and hold out
            ctx.console.print(f"[yellow]future lens skipped: {e}")
            return {"skipped": str(e)}, [None] * len(ctx.records)

    return timed("lens", ctx, compute)


def fluency_measure(ctx: EvalContext) -> MeasureResult:
    """Base-model NLL and repetition of the eval's responses (proxies; no judge)."""
    return timed("fluency", ctx, lambda: fluency(ctx.loaded.model, ctx.responses))


EXTERNALISATION_MEASURES = [reliance_measure, lens_measure, fluency_measure]
