"""The ``risk`` job: choose the exit offset with a distribution-free risk guarantee (Learn-then-Test).

``choose_offset(RiskConfig)`` picks the most aggressive offset whose risk is at most ε with probability
at least 1 − δ over the draw of the calibration items (Angelopoulos et al. 2021; CALM, Schuster et al.
2022, did this for early-exit thresholds):

1. the model's lineage gives the default task; ``n`` calibration items of ``split`` and ``val_n``
   validation items of ``val_split`` (disjoint: splits are fixed by a hash of the question). Items the
   model was trained on are refused, as in eval;
2. the model's own full-depth greedy rollouts of the items (adapter on, exits off: offset −∞);
3. per offset of ``LO:HI:STEP``, ascending (the most conservative first), one loss in [0, 1] per item
   (below) and the exits taken → mean ALS, early-exit rate and FLOP savings, as in eval;
4. ``thinkaloud.risk.ltt.learn_then_test``: Hoeffding–Bentkus p-values of H: R(o) > ε, fixed-sequence
   testing at δ → the last offset accepted before the first failure, or none ("exits off");
5. validation: the same risk on the validation items at the chosen offset, its realised value;
6. ``DIR/risk.json``, ``DIR/risk.png`` (+ ``.svg``); with ``save``, the offset and how it was chosen in
   the model folder's ``thinkaloud.json`` (``thinkaloud.model.recorded``), which eval and
   ``EarlyExitModel.generate`` then use when no offset is given.

Risks, per item:

- ``token`` (default): the rollout is teacher-forced at full depth and with exits *sampled* at offset o
  (Bernoulli at each exit layer; an exited position gives later ones the K/V of its frozen state, as in
  generation). The loss is the fraction of completion tokens (the stop token included) whose top-1 token
  differs between the two. Sampled, not the exact expectation over exit layers: with exits in the
  context, a position's distribution depends on the exits drawn before it, so the expectation has no
  single-pass form. The risk is the mean over items *and* exit draws, and LTT holds for it as is (items
  stay i.i.d.). One draw per item, with the same seed at every offset (common random numbers: the
  losses of neighbouring offsets are coupled, the risk curve is smooth). It measures step-wise
  fidelity on the full-depth text; ALS and FLOP savings here are those of the teacher-forced exits.
- ``answer``: 1 if the final answer (the task's strict extractor) of a greedy generation with exits
  sampled at o differs from that of the full-depth generation, else 0; "no answer" is a value, so two
  missing answers agree. A generation per offset, batched; 0/1 losses get the exact binomial tail.

What the guarantee covers: new items of the same task and split, generated greedily up to the same
``max_new_tokens``, by the same weights. It says nothing about another task or distribution, another
generation length (token risk averages over the first K tokens; answers change with K), sampled
tokens, or retrained weights (a recorded offset is dropped when the weights change). It bounds the
disagreement with the model's own full depth, not the error of either.

The per-offset losses (``Rollouts``, ``OffsetStats``, ``rollouts``, ``token_stats``, ``answer_stats``,
``offset_stats``) live in ``thinkaloud.risk.losses``, the plot and the terminal table in
``thinkaloud.risk.report``, the configuration in ``thinkaloud.risk.config``. This module keeps the
offset grid and the job itself; the offset an eval generates with is ``thinkaloud.eval.offset``.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from thinkaloud.data.task import check_disjoint
from thinkaloud.data.tasks import DEFAULT_TASK, get_task
from thinkaloud.errors import UserError, as_user_errors
from thinkaloud.eval.lineage import check_no_leakage, lineage
from thinkaloud.io import atomic_write_json
from thinkaloud.measures.base import progress
from thinkaloud.model.loading import default_device, load_model
from thinkaloud.model.merging import merged_adapter
from thinkaloud.model.recorded import record_offset, saved_model_dir
from thinkaloud.risk.config import GUARANTEE, RISKS, RiskConfig, parse_offsets
from thinkaloud.risk.losses import offset_stats, rollouts, stats_per_offset
from thinkaloud.risk.ltt import learn_then_test
from thinkaloud.risk.report import _plot, _print

# ---------------------------------------------------------------------------------------------------
# The job


def choose_offset(config: RiskConfig) -> dict[str, Any]:
    """Run the job described in the module docstring; returns what ``risk.json`` holds."""
    start = time.perf_counter()
    console = Console()
    out, device = Path(config.out), config.device or default_device()
    offsets = parse_offsets(config.offsets)
    origin = lineage(config.model)
    for note in origin.notes:
        console.print(f"[yellow]{note}")
    save_dir = saved_model_dir(config.model) if config.save else None
    if config.save and save_dir is None:
        raise UserError(
            f"--save needs a run or saved model folder; {config.model} is a base model, with no trained "
            "exit heads to record an offset for"
        )
    task_spec = config.task or origin.task or DEFAULT_TASK
    with as_user_errors(ValueError, OSError):  # e.g. a task file without the validation split
        task = get_task(task_spec)
        items = task.items(config.n, seed=config.seed, split=config.split)
        val_items = task.items(config.val_n or config.n, seed=config.seed, split=config.val_split)
    check_disjoint(items, val_items, f"the {config.split} and {config.val_split} items of {task_spec}")
    for some_items in (items, val_items):
        unchecked = check_no_leakage(origin.calib, some_items, what=f"{config.model} was trained on")
        if unchecked:
            console.print(f"[yellow]{unchecked}")

    with console.status(f"loading {config.model}…"):
        loaded = load_model(config.model, device=device)
    if loaded.is_base:
        console.print(
            f"[yellow]{config.model} is a base model: its fresh exit heads exit with the same probability "
            "everywhere (σ(bias + offset))"
        )
    model = loaded.model
    gen_args: dict[str, Any] = {
        "max_new_tokens": config.max_new_tokens,
        "batch_size": config.batch_size,
        "device": device,
    }
    # every pass with the adapter on: merged, it is the same function at the base's cost (thinkaloud.model.merging)
    merged = merged_adapter(model.peft) if config.merge_adapter else contextlib.nullcontext()
    with merged, progress(console) as bars:
        bar = bars.add_task(f"{config.risk} risk per offset", total=len(offsets) + 1)
        roll = rollouts(loaded, task, items, **gen_args)
        bars.advance(bar)
        per_offset = stats_per_offset(loaded, task, roll, offsets, config, advance=lambda: bars.advance(bar))
    ltt = learn_then_test([s.losses for s in per_offset], config.epsilon, config.delta, binary=config.risk == "answer")
    chosen = None if ltt.chosen is None else offsets[ltt.chosen]

    if chosen is None:
        validation = {
            "offset": None,
            "risk": 0.0,
            "als": 0.0,
            "early_exit_rate": 0.0,
            "flop_savings": 0.0,
            "note": "no offset accepted: exits off, identical to full depth",
        }
    else:
        merged = merged_adapter(model.peft) if config.merge_adapter else contextlib.nullcontext()
        with merged, console.status(f"validation on {len(val_items)} {config.val_split} items…"):
            val_stats = offset_stats(loaded, task, rollouts(loaded, task, val_items, **gen_args), chosen, config)
        validation = {
            "offset": chosen,
            "risk": math.fsum(val_stats.losses) / len(val_stats.losses),
            **val_stats.summary(model),
        }
    result: dict[str, Any] = {
        "model": config.model,
        "task": task_spec,
        "risk": config.risk,
        "risk_definition": RISKS[config.risk],
        "epsilon": config.epsilon,
        "delta": config.delta,
        "n": len(items),
        "split": config.split,
        "seed": config.seed,
        "max_new_tokens": config.max_new_tokens,
        "merge_adapter": config.merge_adapter,
        "num_layers": model.num_layers,
        "exit_layers": list(model.layers),
        "p_value": "Hoeffding-Bentkus" + (" (0/1 losses: exact binomial tail)" if config.risk == "answer" else ""),
        "testing": "fixed sequence, offsets ascending (most conservative first), stop at the first non-rejection",
        "chosen_offset": chosen,
        "exits_off": chosen is None,
        "accepted": offsets[: ltt.rejected],
        "first_failure": offsets[ltt.rejected] if ltt.rejected < len(offsets) else None,
        "offsets": [
            {
                "offset": o,
                "risk": r,
                "p_value": p,
                "accepted": j < ltt.rejected,
                "tested": j <= ltt.rejected,
                **s.summary(model),
            }
            for j, (o, r, p, s) in enumerate(zip(offsets, ltt.risks, ltt.p_values, per_offset))
        ],
        "validation": {"split": config.val_split, "n": len(val_items), **validation},
        "guarantee": GUARANTEE,
        "saved_to": None,
        "seconds": None,
    }
    if save_dir is not None:
        record_offset(
            save_dir,
            chosen,
            {
                "risk": config.risk,
                "epsilon": config.epsilon,
                "delta": config.delta,
                "task": task_spec,
                "split": config.split,
                "n": len(items),
                "seed": config.seed,
                "max_new_tokens": config.max_new_tokens,
                "validation_risk": validation["risk"],
                "validation_n": len(val_items),
            },
        )
        result["saved_to"] = str(save_dir)
    result["seconds"] = time.perf_counter() - start
    atomic_write_json(out / "risk.json", result)
    _plot(result, out / "risk")
    _print(console, result, out)
    return result


# ---------------------------------------------------------------------------------------------------
# The offset eval generates with
