"""The load-bearing measures as eval measures: filler, mistakes, paraphrase, decodability.

``thinkaloud eval --measures filler,mistakes,paraphrase,decodability`` selects them
(``EvalConfig.measures``; none is on by default: together they cost 0.70× the eval's own wall time,
measured with ``benchmarks/measures.py`` on SmolLM2-135M base, ``tom``, n = 32, up to 128 new tokens,
2 CPU cores shared with other jobs (load 8–12): eval 714 s; filler 133 s, mistakes 157 s, paraphrase 97 s,
decodability 115 s). Each reads the eval's own generations
(``EvalContext.responses``) and writes, like the externalisation measures
(``thinkaloud.measures.externalisation.timed``), a summary under its name in ``summary.json`` (with its
wall time in ``"seconds"``) and its per-response fields under its name in every record, ``null`` when off:

- ``"filler"``: ``thinkaloud.measures.loadbearing.filler.filler_necessity``;
- ``"mistakes"``: ``thinkaloud.measures.loadbearing.mistakes.mistakes_follow``;
- ``"paraphrase"``: ``thinkaloud.measures.loadbearing.paraphrase.paraphrase_agreement``;
- ``"decodability"``: ``thinkaloud.measures.loadbearing.decodability.answer_decodability``, or
  ``{"skipped": reason}`` with fewer than four answered responses, a single label, or no label given twice.

Forced answers and continuations are written as the eval wrote its tokens: greedy, exits sampled at
the eval's offset (none for a base model), seeded with the eval's seed, from the keys and values of one
full-depth read of each context (``reliance.model_answerer``: ``prefill`` + ``Prefix.select``).
"""

from __future__ import annotations

from typing import Any

from thinkaloud.measures.base import EvalContext, MeasureResult
from thinkaloud.measures.externalisation import timed
from thinkaloud.measures.loadbearing.decodability import answer_decodability
from thinkaloud.measures.loadbearing.filler import filler_necessity
from thinkaloud.measures.loadbearing.forced import split_reasoning
from thinkaloud.measures.loadbearing.mistakes import mistakes_follow
from thinkaloud.measures.loadbearing.paraphrase import paraphrase_agreement
from thinkaloud.measures.reliance import ANSWER_TOKENS, model_answerer


def _answerer(ctx: EvalContext, **kwargs: Any):
    config = ctx.config
    return model_answerer(
        ctx.loaded.model,
        ctx.loaded.tokenizer,
        offset=ctx.offset,
        batch_size=config.batch_size,
        seed=config.seed,
        **kwargs,
    )


def filler_measure(ctx: EvalContext) -> MeasureResult:
    """Forced answers after the model's own reasoning, no reasoning and a filler of its length."""
    return timed("filler", ctx, lambda: filler_necessity(ctx.task, ctx.responses, ctx.loaded.tokenizer, _answerer(ctx)))


def mistakes_measure(ctx: EvalContext) -> MeasureResult:
    """One edit in the reasoning, continued by the model: does the answer change, and as the edit implies?"""

    def compute():
        tokenizer = ctx.loaded.tokenizer
        kept = [s.n for s in split_reasoning(ctx.task, ctx.responses, tokenizer) if s is not None]
        budget = max(ANSWER_TOKENS, ctx.config.max_new_tokens - min(kept, default=0))
        return mistakes_follow(
            ctx.task, ctx.responses, tokenizer, _answerer(ctx, max_new_tokens=budget, first_line=False)
        )

    return timed("mistakes", ctx, compute)


def paraphrase_measure(ctx: EvalContext) -> MeasureResult:
    """Forced answers after the reasoning and after its deterministic paraphrase."""
    return timed(
        "paraphrase", ctx, lambda: paraphrase_agreement(ctx.task, ctx.responses, ctx.loaded.tokenizer, _answerer(ctx))
    )


def decodability_measure(ctx: EvalContext) -> MeasureResult:
    """Linear probes for the final answer at every layer and point of the reasoning."""

    def compute():
        try:
            return answer_decodability(
                ctx.loaded.model,
                ctx.task,
                ctx.responses,
                ctx.loaded.tokenizer,
                seed=ctx.config.seed,
                batch_size=ctx.config.batch_size,
            )
        except ValueError as e:  # too few answered responses, or one label for all
            ctx.console.print(f"[yellow]decodability skipped: {e}")
            return {"skipped": str(e)}, [None] * len(ctx.records)

    return timed("decodability", ctx, compute)


LOADBEARING_MEASURES = [filler_measure, mistakes_measure, paraphrase_measure, decodability_measure]
