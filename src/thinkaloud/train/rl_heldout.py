"""Held-out evaluation during RL: a fixed set of prompts, evaluated at step 0 and every few steps.

The training batches of an RL step are a few fresh prompts, sampled at temperature 1: their accuracy
is noisy and never about the same questions twice. With ``RLConfig.eval_every = N > 0`` every run
also evaluates its policy on the same ``eval_n`` prompts of ``eval_split`` (default ``test``: disjoint
by content from the training split) at step 0 (the starting model, before any update), every N steps
and at the last step: greedy tokens, exits sampled at the run's offset with a generator of its own
(seeded with the run's seed), so the training's random stream is untouched and a resumed run stays
bit-for-bit the same. Per evaluation one row:

    {"run", "step", "n", "accuracy", "depth_frac", "als", "early_exit_rate", "length", "base_nll", "distinct2",
     "degenerate", "prompt_accuracy": [per prompt], "prompt_depth_frac": [per prompt, its tokens' mean],
     "prompt_base_nll": [per prompt], "prompt_distinct2": [per prompt, null when shorter than 2 tokens]}

in ``OUT/heldout.jsonl`` (per run ``OUT/run-<r>/heldout.jsonl``, merged like ``log.jsonl``).
``base_nll`` is the fluency proxy of ``thinkaloud.measures.fluency``: the base model's negative
log-likelihood per token of the completions (adapter off, no exits), token-weighted like the exit
metrics; ``distinct2`` the mean share of distinct token bigrams over the responses where it is
defined (``thinkaloud.measures.fluency``); ``degenerate`` the share of degenerate responses
(``thinkaloud.train.degenerate``). The per-prompt lists serve paired comparisons across steps (the
demo's findings (3)–(5)). ``OUT/heldout_base.json`` holds the base model (adapter off, no exits,
greedy) on the same prompts, the dashed level in the figure (``figures/rl_heldout``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from thinkaloud.data.env import Env, Prompt, Scored
from thinkaloud.data.prompts import left_pad
from thinkaloud.errors import UserError
from thinkaloud.measures.fluency import distinct_ngrams, response_nll
from thinkaloud.measures.responses import chunked, from_generation
from thinkaloud.model.generate import _stop_ids as stop_ids
from thinkaloud.train import degenerate
from thinkaloud.train.dist.fsdp import gathered
from thinkaloud.train.rl_report import HELDOUT_BASE_FILE, HELDOUT_FILE, read_rows, run_dir
from thinkaloud.train.rollouts import sample_rollouts

BATCH = 16  # held-out prompts generated together


def due(step: int, every: int, last: int) -> bool:
    """Whether step ``step`` is evaluated: 0, every ``every`` steps and the last (never when every is 0)."""
    return every > 0 and (step % every == 0 or step == last)


@torch.no_grad()
def evaluate_policy(
    policy,
    env: Env,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int,
    offset: float,
    seed: int,
    batch_size: int,
    base: bool = False,
) -> dict[str, Any]:
    """Greedy completions of ``prompts`` by ``policy`` (exits sampled at ``offset``; ``base``: adapter off
    and no exits) → {"n", "accuracy", "depth_frac", "als", "early_exit_rate", "length", "base_nll", "distinct2",
    "degenerate", "prompt_accuracy", "prompt_depth_frac", "prompt_base_nll", "prompt_distinct2"} (the
    ``prompt_*`` lists: one value per prompt, for paired comparisons)."""
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    L, stops = policy.num_layers, set(stop_ids(policy, env.stop_token_ids))
    accuracy, depth_per_prompt, lengths, nll, tokens, depth, exited = [], [], 0, 0.0, 0, 0.0, 0
    nll_per_prompt: list[float] = []
    distinct: list[float | None] = []
    bad = [0.0] * (2 + len(degenerate.KINDS))
    for chunk in chunked(list(prompts), batch_size):
        ids, mask = left_pad([p.ids for p in chunk], env.pad_token_id, policy.device)  # (b, P)
        kw = dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            stop_token_ids=env.stop_token_ids,
            pad_token_id=env.pad_token_id,
            generator=generator,
        )
        if base:
            with policy.disable_adapter():
                out = policy.generate(ids, mask, offset=-math.inf, **kw)
        else:
            out = policy.generate(ids, mask, offset=offset, **kw)
        scored = env.score(chunk, out)
        accuracy += scored.accuracy.tolist()
        bad = [a + b for a, b in zip(bad, degenerate.counts(out, stops, scored.texts, scored.answered))]
        mask = out.completion_mask  # (b, N)
        depth_per_prompt += ((out.exit_layers.float() / L * mask).sum(-1) / mask.sum(-1)).tolist()
        layers = out.exit_layers[mask].float()  # (n_tokens,)
        depth += float((layers / L).sum())
        exited += int((layers < L).sum())
        lengths += int(out.lengths.sum())
        responses = from_generation(out)
        sums = response_nll(policy, responses)
        nll += sum(total for total, _ in sums)
        nll_per_prompt += [total / max(n, 1) for total, n in sums]
        distinct += [distinct_ngrams(r.response_ids, 2) for r in responses]
        tokens += layers.numel()
    n = len(prompts)
    defined = [d for d in distinct if d is not None]
    return {
        "n": n,
        "accuracy": sum(accuracy) / n,
        "depth_frac": depth / tokens,
        "als": 1.0 - depth / tokens,
        "early_exit_rate": exited / tokens,
        "length": lengths / n,
        "base_nll": nll / tokens,
        "distinct2": sum(defined) / len(defined) if defined else None,
        "degenerate": degenerate.shares(bad)["degenerate"],
        "prompt_accuracy": accuracy,
        "prompt_depth_frac": depth_per_prompt,
        "prompt_base_nll": nll_per_prompt,
        "prompt_distinct2": distinct,
    }


def _kwargs(cfg) -> dict[str, Any]:
    return {"max_new_tokens": cfg.max_new_tokens, "offset": cfg.offset, "batch_size": BATCH}


# What the held-out evaluation of the starting model depends on: two runs that agree on these evaluate it alike.
SAME_START = (
    *("model", "task", "eval_split", "eval_n", "max_new_tokens", "offset", "seed"),
    *("exit_every", "head_init_bias", "dtype", "lenient_answers"),
)


def heldout_source(cfg) -> Path | None:
    """The folder of ``cfg.heldout_from``, checked: an RL run whose starting model and held-out evaluation are
    this run's (``SAME_START``), with this run's runs, so its step-0 rows and base row are this run's too."""
    if cfg.heldout_from is None:
        return None
    src = Path(cfg.heldout_from)
    if not (src / "config.yaml").is_file() or not (src / HELDOUT_BASE_FILE).is_file():
        raise UserError(f"heldout_from {src}: no RL run with held-out evaluations there")
    theirs = yaml.safe_load((src / "config.yaml").read_text())
    differ = [f"{k} {theirs.get(k)!r}, not {getattr(cfg, k)!r}" for k in SAME_START if theirs.get(k) != getattr(cfg, k)]
    if differ or theirs.get("runs", 1) < cfg.runs:
        raise UserError(
            f"heldout_from {src} evaluated another start: its " + "; ".join(differ or [f"runs {theirs.get('runs')}"])
        )
    return src


def reused_row(src: Path, runs: int, run: int) -> dict[str, Any]:
    """Run ``run``'s step-0 held-out row in ``src`` (an RL folder of ``runs`` runs, checked by ``heldout_source``)."""
    theirs = yaml.safe_load((src / "config.yaml").read_text()).get("runs", 1)
    rows = [r for r in read_rows(run_dir(src, theirs, run) / HELDOUT_FILE) if r["step"] == 0 and r["run"] == run]
    if not rows:
        raise UserError(f"heldout_from {src}: no held-out row of run {run} at step 0")
    return rows[0]


def log_heldout(ctx, policy, run: int, step: int, log) -> dict[str, Any] | None:
    """Evaluate ``policy`` on the held-out prompts and log the row, when ``step`` is due (main process only:
    ``log`` is None elsewhere); returns the row, or None. ``ctx`` is the RL loop's context (config,
    heldout env, console); at step 0 with ``ctx.heldout_from`` the row is that run's."""
    cfg = ctx.config
    if ctx.heldout is None or log is None or not due(step, cfg.eval_every, cfg.steps):
        return None
    if step == 0 and ctx.heldout_from is not None:
        row = {k: v for k, v in reused_row(ctx.heldout_from, cfg.runs, run).items() if k not in ("run", "step")}
    else:
        with ctx.console.status(f"run {run}: held-out evaluation at step {step}…"):
            row = evaluate_policy(
                policy, ctx.heldout, ctx.heldout.prompts(0, cfg.eval_n), seed=cfg.seed + run, **_kwargs(cfg)
            )
    log.write({"run": run, "step": step, **row})
    ctx.console.print(
        f"  held-out ({row['n']} prompts) @ step {step}: acc {row['accuracy']:.3f}  depth "
        f"{row['depth_frac']:.3f}  exit {100 * row['early_exit_rate']:.1f}%  base NLL "
        f"{row['base_nll']:.3f}  distinct-2 {row['distinct2'] or 0:.2f}  degenerate {100 * row['degenerate']:.0f}%",
        highlight=False,
    )
    return row


def heldout_row(ctx, policy, run: int, step: int, log) -> dict[str, Any]:
    """:func:`log_heldout` called by every process (under FSDP the weights are gathered for it); {} when not due."""
    if ctx.heldout is None or not due(step, ctx.config.eval_every, ctx.config.steps):
        return {}
    if step == 0 and ctx.heldout_from is not None:  # nothing to evaluate
        return log_heldout(ctx, policy, run, step, log) or {}
    with gathered(policy):
        return log_heldout(ctx, policy, run, step, log) or {}


def evaluate_heldout_base(ctx, model) -> dict[str, Any]:
    """The base model (adapter off, no exits, greedy) on the held-out prompts (``ctx.heldout_from``'s)."""
    cfg = ctx.config
    if ctx.heldout_from is not None:
        return json.loads((ctx.heldout_from / HELDOUT_BASE_FILE).read_text())
    with ctx.console.status("Measuring the base model on the held-out prompts…"):
        row = evaluate_policy(
            model, ctx.heldout, ctx.heldout.prompts(0, cfg.eval_n), seed=cfg.seed, base=True, **_kwargs(cfg)
        )
    return {**row, "offset": "-inf", "adapter": "disabled"}


# ---------------------------------------------------------------------------------------------------
# The RL run's judge and the base model's level (``thinkaloud.train.rl`` calls these with its context)


def step_coherence(ctx, prompts: Sequence[Prompt], scored: Scored) -> float | None:
    """Mean overall judge score of the step's completions (main process's), or None without a judge."""
    if ctx.judge is None or scored.texts is None:
        return None
    from thinkaloud.measures.judge import Judgement, judge_many

    results = judge_many(ctx.judge, [(p.question, t) for p, t in zip(prompts, scored.texts)])
    overall = [r.judgement.overall for r in results if isinstance(r.judgement, Judgement)]
    return sum(overall) / len(overall) if overall else None


def measure_base(ctx, model) -> dict[str, Any]:
    """The base model (adapter off, no exits) on the first ``base_prompts`` prompts, K samples each."""
    cfg = ctx.config
    prompts = ctx.env.prompts(0, cfg.base_prompts)
    rows = [p for p in prompts for _ in range(cfg.k)]
    g = torch.Generator(device=model.device).manual_seed(cfg.seed)  # leaves the global RNG alone
    chunk = cfg.prompts_per_step * cfg.k
    accuracy, lengths, coherence, nll = [], [], [], []
    for s in range(0, len(rows), chunk):
        part = rows[s : s + chunk]
        with model.disable_adapter():
            out = sample_rollouts(
                model, part, ctx.env, max_new_tokens=cfg.max_new_tokens, offset=-math.inf, generator=g
            )
        scored = ctx.env.score(part, out)
        accuracy += scored.accuracy.tolist()
        lengths += out.lengths.tolist()
        nll += (-out.token_logprobs[out.completion_mask]).tolist()  # the base model's own log-probs
        c = step_coherence(ctx, part, scored)
        if c is not None:
            coherence.append(c)
    return {
        "accuracy": sum(accuracy) / len(accuracy),
        "depth_frac": 1.0,
        "als": 0.0,
        "early_exit_rate": 0.0,
        "length": sum(lengths) / len(lengths),
        "coherence": sum(coherence) / len(coherence) if coherence else None,
        "base_nll": sum(nll) / len(nll),
        "n": len(rows),
        "prompts": cfg.base_prompts,
        "offset": "-inf",
        "adapter": "disabled",
    }
