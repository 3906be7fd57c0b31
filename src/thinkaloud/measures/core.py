"""The measures every eval runs: the calibration target of the completions and the coherence judge.

The calibration target: per-layer KL to the final layer of the same completions, under the logit
lens with the adapter disabled (the base model), ``exit_targets`` at the target's KL factor → mean
target histogram, and its TV distance to the model's exit histogram. It is computed on the evaluated
model's own completions (not on base-model rollouts as in calibration), so it answers "where would
the calibration target exit on this text".

The coherence judge (``thinkaloud.measures.judge``) grades each completion with the eval's rubric; it is
off (null fields) unless ``--judge`` names one. Under ``--rubric legibility`` it scores legibility and
coverage 0–4 instead (Emmons, Zimmermann et al. 2025), written as ``"legibility"`` in ``summary.json``
(``"coherence"`` is then null; one rubric per eval).
"""

from __future__ import annotations

import torch

from thinkaloud.measures import judge as judging
from thinkaloud.measures import metrics
from thinkaloud.measures.base import EvalContext, MeasureResult, progress
from thinkaloud.model.exits import exit_targets

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
    """``coherence`` (with the rubric; ``legibility`` instead under that rubric) and per record ``judge`` /
    ``judge_missing`` (null without a judge)."""
    config = ctx.config
    if not config.judge:
        return MeasureResult(
            {"coherence": None, "legibility": None}, [{"judge": None, "judge_missing": None} for _ in ctx.records]
        )
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
    if config.rubric == "legibility":
        summary = {"coherence": None, "legibility": {**judging.legibility_summary(results), "rubric": config.rubric}}
    else:
        summary = {"coherence": {**judging.coherence_summary(results), "rubric": config.rubric}, "legibility": None}
    return MeasureResult(summary, fields)
