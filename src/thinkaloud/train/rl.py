"""Stage 2: RL for earlier exits with a leave-one-out baseline (modified RLOO, docs/method.md §3).

Each step, for a batch of prompts, K completions each are sampled from the early-exit policy (exits
sampled layer by layer at the configured ``offset``, tokens at temperature 1). A completion's reward is

    R = task_score − λ · mean_t(ℓ_t / L) − β · KL̂(policy ‖ reference)

(``depth_penalty`` replaces the paper's mean depth by the sum or the maximum of ℓ_t / L over the
completion, which padding with shallow tokens cannot lower; ``thinkaloud.train.rloo``) and its
advantage is ``A_i = R_i − mean_{j≠i} R_j`` within its prompt's group. The loss is
``−A_i · Σ_t [log p(y_t|ℓ_t) + log P(ℓ_t)] / T_i`` averaged over completions, with the log-probabilities
recomputed teacher-forced (one forward with the sampled exits prescribed); the LoRA adapter and the
exit heads take one AdamW step. The maths lives in ``thinkaloud.train.rloo``, the rollouts and their
log-probabilities in ``thinkaloud.train.rollouts``.

Exactly on-policy. There is one update per batch, sampling uses the model's own distribution
(temperature 1, no top-p), exits are sampled without any threshold, and the loss forward runs with
LoRA dropout off (the model stays in eval mode for the whole run; generation uses eval mode too).
So the log-probabilities that carry the gradient equal those recorded at sampling, up to float
round-off; every step logs the largest difference as ``logprob_err`` and warns when it exceeds
``onpolicy_tol``.

The reference model is the same weights with the adapter disabled and no exits (``offset = −inf``):
no second copy of the model is held. The KL term is the token part of the divergence (see
``thinkaloud.train.rloo``: the reference never exits, so the KL of the joint (exit, token) policy would
be infinite). It is part of the reward (no gradient through it), as in RLOO. Its weight β is fixed (``beta``) or, with
``kl_target``, adapted after every step so that the measured KL̂ tracks a budget (``thinkaloud.train.kl_control``,
Ziegler et al. 2019); the log records each step's β.

Departures and choices, all deliberate:
- the task score is the task's scorer in [0, 1] (reasoning-gym gives partial credit), with strict
  answer extraction by default (``lenient_answers`` relaxes it); the prototype's −1 for a malformed
  answer is available as ``format_penalty`` (default 0);
- every run sees the same prompts in the same order; runs differ in the seed of sampling (tokens and
  exits) and of the LoRA initialisation when heads are fresh;
- the reward uses each completion's own mean depth (or its ``depth_penalty``); the logged exit metrics are
  token-weighted, and ``depth_penalty`` in the log is the completions' mean charged depth;
- the heads' learning rate defaults to 1e-3 (paper: 1e-5; LoRA 1e-4 as the paper; constant, no warmup)
  so that a short CPU run moves visibly: with hidden states of large norm, Adam steps of 1e-3 move an
  exit logit by O(1) in a few steps; completions are capped at 64 new tokens (paper: up to 400).

Each step also logs ``base_nll``, the fluency proxy (``thinkaloud.measures.fluency``): the base model's
negative log-likelihood per token of the step's sampled completions, minus the mean of the reference
log-probabilities the KL term already computed (no extra pass). With ``eval_every`` each run is also
evaluated on a fixed set of held-out prompts at step 0 and every few steps (``thinkaloud.train.rl_heldout``).
With ``log_completions`` every step's sampled completions, their task rewards, depths and exit layers are
written to ``completions.jsonl`` (``thinkaloud.train.rl_report``; the main process's, resumed like the log).
Degenerate completions (empty, one repeated token, a loop of a few tokens, no answer) are counted every
step; a run whose policy collapses (mostly degenerate for several consecutive steps,
``thinkaloud.train.degenerate``) says so on the terminal and in ``rl_summary.json``; its model is still
saved, for inspection.

The environment (prompt stream and scorer) is ``thinkaloud.data.env``; the output folder, merged log,
figure and step table are ``thinkaloud.train.rl_report``. With ``--resume`` a run continues from its
latest checkpoint bit-for-bit (every process of a multi-process run too: the checkpoint holds each
process's RNG state), and finished runs are skipped.
Under ``accelerate launch --multi_gpu`` (or ``torchrun``) each process samples its own prompts, gradients
are averaged by DDP and the logged metrics are summed over processes (``logprob_err`` and ``coherence``
are the main process's). With an FSDP launch config (``examples/fsdp.yaml``) the base is sharded by FSDP2
(``thinkaloud.train.dist.fsdp``): sampling and held-out evaluations gather the weights, the teacher-forced
passes run sharded; a step samples and scores exactly as under DDP. ``accelerate launch --cpu`` starts one
process; ``torchrun --nproc_per_node N``, or a multi-process accelerate config without GPUs, N with gloo.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from thinkaloud.data.env import Env, Prompt, Scored, TaskEnv
from thinkaloud.data.task import check_disjoint
from thinkaloud.errors import DataError, as_user_errors
from thinkaloud.io import atomic_write_json, atomic_write_text
from thinkaloud.model.generate import _stop_ids as stop_ids
from thinkaloud.train import degenerate
from thinkaloud.train.common import (
    JsonlLog,
    latest_checkpoint,
    load_checkpoint,
    make_optimizer,
    remove_stale_temporaries,
    save_checkpoint,
    set_seed,
)
from thinkaloud.train.dist.fsdp import clip_grad_norm, gathered, save_pretrained, shard
from thinkaloud.train.kl_control import KLController
from thinkaloud.train.rl_config import RLConfig
from thinkaloud.train.rl_heldout import evaluate_heldout_base, heldout_row, heldout_source, measure_base, step_coherence
from thinkaloud.train.rl_report import (
    BASE_FILE,
    COMPLETIONS_FILE,
    FIGURE,
    HELDOUT_BASE_FILE,
    HELDOUT_FILE,
    LOG_FILE,
    completions_row,
    format_row,
    print_table,
    read_summaries,
    run_dir,
    step_row,
    step_table,
    write_outputs,
    write_run_summary,
)
from thinkaloud.train.rloo import completion_rewards, depth_penalty, kl_estimate, policy_loss, rloo_advantages
from thinkaloud.train.rollouts import policy_logprobs, reference_logprobs, sample_rollouts
from thinkaloud.train.trackers import Trackers, accelerator_kwargs

__all__ = ["Env", "Prompt", "Scored", "TaskEnv", "step_table", "train_rl"]  # the environment types are re-exported

MODEL_DIR = "model"


# ---------------------------------------------------------------------------------------------------
# The loop


@dataclass
class _Context:
    config: RLConfig
    out: Path
    env: Env
    accelerator: Any
    make_model: Callable[[], Any]
    console: Any
    judge: Any
    on_step: Callable[[int, int, dict], None] | None
    heldout: Env | None = None  # the held-out prompts' environment (eval_every > 0)
    heldout_from: Path | None = None  # an RL folder whose step-0 and base held-out rows are this run's


def rl_run(ctx: _Context, run: int) -> None:
    """One RL run: ``config.steps`` steps from the starting model (or its latest checkpoint)."""
    cfg, acc = ctx.config, ctx.accelerator
    folder = run_dir(ctx.out, cfg.runs, run)
    P, K, W = cfg.prompts_per_step, cfg.k, acc.num_processes
    set_seed(cfg.seed + run + 1000 * acc.process_index)
    model = ctx.make_model().eval()  # eval mode throughout: LoRA dropout off, so training is exactly on-policy
    sharded = shard(model, acc)  # FSDP2 when the launch config asks for it (before the optimiser)
    optimizer = make_optimizer(model, head_lr=cfg.head_lr, lora_lr=cfg.lora_lr)
    start = 0
    kl_control = KLController(cfg.beta, cfg.kl_target, cfg.kl_horizon)  # a fixed β without a target
    if acc.is_main_process:
        remove_stale_temporaries(folder)  # of a run killed while writing a checkpoint
    checkpoint = latest_checkpoint(folder) if cfg.resume else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer)
        start, kl_control.beta = state["step"], state["extra"].get("beta", cfg.beta)
        if acc.is_main_process:
            ctx.console.print(f"run {run}: resumed from {checkpoint} (step {start})")
    if start >= cfg.steps and (folder / MODEL_DIR).exists():
        return
    if not sharded:
        model, optimizer = acc.prepare(model, optimizer)
    policy = model if sharded else acc.unwrap_model(model)
    L, stops = policy.num_layers, set(stop_ids(policy, ctx.env.stop_token_ids))
    log = JsonlLog(folder / LOG_FILE, resume_step=start if cfg.resume else None) if acc.is_main_process else None
    # held-out rows of step s are written before checkpoint s: keep those up to the checkpoint (none without)
    heldout_log = (
        JsonlLog(folder / HELDOUT_FILE, resume_step=(start or -1) if cfg.resume else None)
        if acc.is_main_process and ctx.heldout is not None
        else None
    )
    completions = (
        JsonlLog(folder / COMPLETIONS_FILE, resume_step=start if cfg.resume else None)
        if acc.is_main_process and cfg.log_completions
        else None
    )
    trackers = Trackers(
        acc, cfg.report_to, "thinkaloud-rl", dataclasses.asdict(cfg), ctx.out, run=run if cfg.runs > 1 else None
    )
    if start == 0:
        trackers.log(heldout_row(ctx, policy, run, 0, heldout_log), 0, prefix="heldout/")
    warned = False

    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        # sample: K completions of each of this process's P prompts, exits sampled
        prompts = ctx.env.prompts(((step - 1) * W + acc.process_index) * P, P)
        rows = [p for p in prompts for _ in range(K)]  # (B = P·K) prompt-major
        with gathered(policy):  # FSDP: decode steps and the reference's shared prompts need whole weights
            out = sample_rollouts(policy, rows, ctx.env, max_new_tokens=cfg.max_new_tokens, offset=cfg.offset, group=K)
            ref_lp = reference_logprobs(policy, out, group=K)  # (B, N), also the fluency proxy: base NLL = −mean
        mask = out.completion_mask  # (B, N)
        # reward: task − λ·depth − β·KL̂, then leave-one-out advantages within each prompt's group
        scored = ctx.env.score(rows, out)
        depth = depth_penalty(out.exit_layers, mask, L, cfg.depth_penalty)  # (B,) the charged depth
        kl = kl_estimate(out.token_logprobs, ref_lp, mask)  # (B,)
        beta = kl_control.beta  # this step's β: the controller sees the step's KL̂ after the rewards
        rewards = completion_rewards(scored.reward.to(depth.device), depth, kl, cfg.lam, beta)  # (B,)
        advantages = rloo_advantages(rewards.view(P, K), cfg.normalize_advantages).flatten()  # (B,)
        # update: recompute the log-probs teacher-forced (they equal the sampled ones), one AdamW step
        token_lp, exit_lp = policy_logprobs(model, out, cfg.offset)  # (B, N) each
        loss = policy_loss(token_lp, exit_lp, mask, advantages)
        acc.backward(loss)
        grad_norm = clip_grad_norm(acc, model, cfg.max_grad_norm) if cfg.max_grad_norm > 0 else None
        optimizer.step()
        optimizer.zero_grad()

        err = max(
            (token_lp.detach() - out.token_logprobs)[mask].abs().max().item(),
            (exit_lp.detach() - out.exit_logprobs)[mask].abs().max().item(),
        )
        if err > cfg.onpolicy_tol and not warned:
            warnings.warn(
                f"step {step}: recomputed log-probs differ from the sampled ones by {err:.2e} "
                f"(> onpolicy_tol={cfg.onpolicy_tol}); the update is slightly off-policy",
                stacklevel=2,
            )
            warned = True
        bad = degenerate.counts(out, stops, scored.texts, scored.answered)
        row = step_row(acc, run, step, out, mask, scored, rewards, depth, kl, L, loss, grad_norm, err, ref_lp, bad)
        row.update(beta=beta, kl_target=cfg.kl_target)
        kl_control.update(row["kl"], int(row["completions"]))  # the step's KL̂ and completions, over all processes
        row["coherence"] = step_coherence(ctx, rows, scored) if step % cfg.judge_every == 0 else None
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if completions is not None:  # the main process's own completions
            completions.write(completions_row(run, step, out, scored, L))
        if log is not None:  # the main process
            log.write(row)
            ctx.console.print(format_row(row, cfg.runs, cfg.steps), highlight=False, soft_wrap=True)
        trackers.log(row, step)
        trackers.log(heldout_row(ctx, policy, run, step, heldout_log), step, prefix="heldout/")
        if step % cfg.save_every == 0 or step == cfg.steps:
            acc.wait_for_everyone()
            extra = {"run": run, "beta": kl_control.beta}
            save_checkpoint(folder, step, policy, optimizer, extra=extra, write=acc.is_main_process)
            if acc.is_main_process:
                write_outputs(ctx.out, cfg.runs, figure=False)
        if ctx.on_step is not None:
            ctx.on_step(run, step, row)

    acc.wait_for_everyone()
    save_pretrained(policy, folder / MODEL_DIR, main=acc.is_main_process)
    if acc.is_main_process:
        write_run_summary(folder, run, cfg.steps, kl_control.beta)  # says whether the policy collapsed
    trackers.end()
    acc.free_memory()


# ---------------------------------------------------------------------------------------------------
# Entry point


def train_rl(
    config: RLConfig,
    *,
    env: Env | None = None,
    make_model: Callable[[], Any] | None = None,
    on_step: Callable[[int, int, dict], None] | None = None,
    heldout_env: Env | None = None,
) -> Path:
    """Run ``config.runs`` RL runs into ``config.out``; returns the output folder.

    Python API: ``env`` replaces the task (prompt stream and reward: e.g. a reward on token ids with no
    tokenizer), ``make_model`` replaces loading ``config.model`` (called once per run, and once for the
    base measurement; it must return a fresh ``EarlyExitModel``), ``on_step(run, step, row)`` is
    called after every step (after its checkpoint, if any), ``heldout_env`` gives the held-out prompts
    of ``eval_every`` (default: ``eval_n`` items of the task's ``eval_split``).
    """
    from accelerate import Accelerator
    from rich.console import Console

    from thinkaloud.config import ExitConfig
    from thinkaloud.model.loading import default_device, load_model
    from thinkaloud.model.recorded import META_FILE

    cpu = (config.device or default_device()) == "cpu"
    out = Path(config.out)
    accelerator = Accelerator(cpu=cpu, **accelerator_kwargs(config.report_to, out))
    if not config.resume and any((out / name).exists() for name in (LOG_FILE, "checkpoints", "run-0", MODEL_DIR)):
        raise FileExistsError(f"{out} already holds an RL run; pass --resume to continue it, or choose a new --out")
    dtype = getattr(torch, config.dtype)
    if make_model is None:
        exit_config = ExitConfig(exit_every=config.exit_every, head_init_bias=config.head_init_bias)

        def make_model():  # a fresh load per run, after the run's seed is set (LoRA A is random)
            return load_model(config.model, exit_config=exit_config, dtype=dtype, device=accelerator.device).model

        if env is None:
            from thinkaloud.data.tasks import get_task
            from thinkaloud.hub import load_tokenizer
            from thinkaloud.model.recorded import saved_model_dir

            saved = saved_model_dir(config.model)
            base_name = json.loads((saved / META_FILE).read_text())["base_model"] if saved else config.model
            pool = config.pool or config.steps * config.prompts_per_step * accelerator.num_processes
            tokenizer = load_tokenizer(base_name)
            with as_user_errors(ValueError, error=DataError):  # the task and its data, read once, here
                task = get_task(config.task, lenient=config.lenient_answers)
                env = TaskEnv(
                    task,
                    tokenizer,
                    seed=config.seed,
                    pool=max(pool, config.base_prompts),
                    split=config.split,
                    format_penalty=config.format_penalty,
                )
                if config.eval_every and heldout_env is None:
                    heldout = TaskEnv(task, tokenizer, seed=config.seed, pool=config.eval_n, split=config.eval_split)
                    what = f"the {config.split} (training) and {config.eval_split} (held-out) prompts of {config.task}"
                    check_disjoint(env.items, heldout.items, what)
                    heldout_env = heldout
    elif env is None:
        raise ValueError("a custom make_model needs a custom env (no tokenizer to render the task with)")

    judge = None
    if config.judge_url and config.judge_model is not None:  # __post_init__: both or neither
        from thinkaloud.measures.judge import OpenAIJudge

        judge = OpenAIJudge(config.judge_url, config.judge_model)
    console = Console(stderr=True, log_path=False) if accelerator.is_main_process else Console(quiet=True)
    if config.eval_every and heldout_env is None:
        raise ValueError("eval_every with a custom env needs a heldout_env (the held-out prompts)")
    source = heldout_source(config) if heldout_env is not None else None
    ctx = _Context(config, out, env, accelerator, make_model, console, judge, on_step, heldout_env, source)

    if accelerator.is_main_process:
        console.print(
            f"RL: {config.model} on {config.task}, λ={config.lam:g}, β={config.beta:g}"
            + ("" if config.kl_target is None else f" (adapting to a KL̂ of {config.kl_target:g} nats/token)")
            + f", K={config.k}, "
            f"{config.runs} run(s) × {config.steps} steps, {accelerator.num_processes} process(es) on "
            f"{accelerator.device}",
            highlight=False,
            soft_wrap=True,
        )
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
        if config.base_prompts and not (out / BASE_FILE).exists():
            with console.status("Measuring the base model (adapter off, no exits)…"):
                base_model = make_model().eval()
                base = measure_base(ctx, base_model)
                del base_model
            atomic_write_json(out / BASE_FILE, base)
            console.print(
                f"base model: accuracy {base['accuracy']:.3f}, mean length {base['length']:.1f} ({base['n']} samples)"
            )
        if heldout_env is not None and not (out / HELDOUT_BASE_FILE).exists():
            base_model = None if source is not None else make_model().eval()  # reused: nothing to evaluate
            atomic_write_json(out / HELDOUT_BASE_FILE, evaluate_heldout_base(ctx, base_model))
    accelerator.wait_for_everyone()

    for run in range(config.runs):
        rl_run(ctx, run)
        if accelerator.is_main_process:
            write_outputs(out, config.runs)
    if accelerator.is_main_process:
        print_table(console, out, config.runs)
        for entry in read_summaries(out):
            if entry["collapse"] is not None:
                console.print(f"[bold red]Run {entry['run']}: {entry['collapse']['message']}.[/]", highlight=False)
        console.print(
            f"[bold]Done.[/bold] log {out / LOG_FILE}, figure {out / FIGURE}.png, model "
            f"{out / MODEL_DIR if config.runs == 1 else out / 'run-<r>' / MODEL_DIR}"
        )
    return out
