"""Measured speed: prefill and decode time of the evaluated model, and its speedup over the base model.

Tokens per second over the whole of ``generate`` mixes the prompt's forward pass (prefill) with the
decode steps, so a model with shorter answers looks slower per token. The generation engine records two
timestamps per call (``GenerationOutput.prefill_seconds``: start → first new token of every row;
``decode_seconds``: the rest), and this module reports:

- ``prefill_s``: prefill seconds summed over batches;
- ``decode_ms_per_token``: decode seconds ÷ tokens generated after each row's first (both summed over
  batches), in milliseconds;
- ``speed_baseline``: the base model (adapter disabled, offset = −∞: no exits) generating the *same*
  prompt batches with the same batch size and token budget, greedy, timed the same way; or
  ``{"skipped": reason}`` (the model is the base model, or ``speed_baseline`` is off);
- ``speedup_vs_base`` = base decode s/token ÷ model decode s/token (> 1: the model decodes faster),
  beside the analytic ``flop_savings``.

Choices: the base run is greedy whatever the model run's sampling, so its completions (and lengths)
may differ; the per-token time already divides by each run's own token count. The model keeps its
LoRA unmerged, so the adapter's overhead counts against it (it is what runs). On CUDA one short
untimed generation warms the kernels before the model's batches (``warm_up``), so neither run pays for
the first launch; later runs reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from thinkaloud.measures.base import EvalContext, MeasureResult, progress
from thinkaloud.model.generation_output import GenerationOutput


def timing(gens: Sequence[GenerationOutput]) -> dict[str, Any]:
    """Prefill and decode time of some generations: {"prefill_s", "decode_s", "decode_tokens",
    "decode_ms_per_token" (None without decode tokens), "n_tokens"}."""
    prefill = sum(g.prefill_seconds for g in gens)
    decode = sum(g.decode_seconds for g in gens)
    tokens = sum(g.decode_tokens for g in gens)
    return {
        "prefill_s": prefill,
        "decode_s": decode,
        "decode_tokens": tokens,
        "decode_ms_per_token": 1000 * decode / tokens if tokens else None,
        "n_tokens": sum(int(g.lengths.sum()) for g in gens),
    }


def speedup(model: dict[str, Any], base: dict[str, Any]) -> float | None:
    """Base decode s/token ÷ model decode s/token, from two ``timing`` dicts (None if either is unknown)."""
    m, b = model.get("decode_ms_per_token"), base.get("decode_ms_per_token")
    return b / m if m and b is not None else None


def base_generations(ctx: EvalContext) -> list[GenerationOutput]:
    """The base model (adapter off, no exits, greedy) on the same prompt batches and token budget."""
    model, tokenizer = ctx.loaded.model, ctx.loaded.tokenizer
    gens = []
    with progress(ctx.console) as bars, model.disable_adapter():
        bar = bars.add_task("base model speed", total=len(ctx.items))
        for b in ctx.batches:
            ids, mask = b.prompt_ids  # (b, P) each
            gens.append(
                model.generate(
                    ids,
                    mask,
                    max_new_tokens=ctx.config.max_new_tokens,
                    do_sample=False,
                    offset=-math.inf,
                    pad_token_id=tokenizer.pad_token_id,
                )
            )
            bars.advance(bar, len(b.items))
    return gens


def speed_measure(ctx: EvalContext) -> MeasureResult:
    """``prefill_s``, ``decode_ms_per_token``, ``speed_baseline`` and ``speedup_vs_base``."""
    mine = timing([b.gen for b in ctx.batches])
    fields = {"prefill_s": mine["prefill_s"], "decode_ms_per_token": mine["decode_ms_per_token"]}
    if ctx.loaded.is_base:
        skipped = "the evaluated model is the base model"
    elif not ctx.config.speed_baseline:
        skipped = "speed_baseline is off"
    else:
        base = timing(base_generations(ctx))
        return MeasureResult({**fields, "speed_baseline": base, "speedup_vs_base": speedup(mine, base)})
    return MeasureResult({**fields, "speed_baseline": {"skipped": skipped}, "speedup_vs_base": None})


def warm_up(ctx_model: Any, ids, mask, pad_token_id: int | None) -> None:
    """One short untimed generation (on CUDA: kernel selection and allocator warm-up happen here)."""
    ctx_model.generate(
        ids[:1], mask[:1], max_new_tokens=2, do_sample=False, offset=-math.inf, pad_token_id=pad_token_id
    )
