"""What an RL run leaves to read: the log row of a step, the files, the merged log, figure and step table.

Layout of an RL output folder (the RL directory of ``thinkaloud.report.build``):

- ``OUT/log.jsonl``: one row per run and step (``run``, ``step``, ``reward``, ``accuracy``,
  ``depth_frac``, ``als``, ``early_exit_rate``, ``kl``, ``length``, ``base_nll``, ``loss``,
  ``grad_norm``, ``logprob_err``, ``coherence``, ``seconds``, ``completions``, ``beta`` (the β of the step's
  rewards; with ``kl_target`` it adapts, ``thinkaloud.train.kl_control``), ``depth_penalty`` (the mean over the
  step's completions of the depth λ charged them, ``RLConfig.depth_penalty``: with ``mean`` their mean depth
  fraction, unweighted by length), the shares of degenerate completions ``degenerate``, ``empty``, ``repeat``,
  ``loop``, ``no_answer`` (``thinkaloud.train.degenerate``)); with several runs it is the merge of
  ``OUT/run-<r>/log.jsonl``;
- ``OUT/rl_summary.json``: per run, its last step's metrics, its final β and whether its policy collapsed
  (``{"runs": [{"run", "steps", "last", "beta_final", "collapse": null | {...}}]}``, merged like the log);
- ``OUT/base.json``: the base model (adapter off, no exits) on the first prompts of the stream;
- ``OUT/config.yaml``; ``OUT/figures/rl_dynamics.{png,svg}``: accuracy, compute, the fluency proxy,
  coherence (when judged), KL̂ and β, and the share of degenerate completions per step: individual runs,
  their mean and ±1 SE, and the base model's level;
- with ``log_completions``: ``OUT/completions.jsonl`` (merged like the log), one row per run and step with
  the step's sampled completions, prompt-major: ``{"run", "step", "texts": [str] (null when the environment
  does not decode), "task_reward": [float], "depth": [mean ℓ_t/L of each completion], "exit_layers": [[int
  per token]]}`` (:func:`completions_row`);
- with ``eval_every``: ``OUT/heldout.jsonl`` (merged like the log), ``OUT/heldout_base.json`` and
  ``OUT/figures/rl_heldout.{png,svg}``, the same panels on fixed held-out prompts
  (``thinkaloud.train.rl_heldout``);
- the model in ``OUT/model`` (one run) or ``OUT/run-<r>/model`` (several), each run with its own
  ``checkpoints/``.

The logged ``depth_frac``, ``als`` and ``early_exit_rate`` are token-weighted over a step's completions
(the eval metrics), and so is ``base_nll``: the base model's negative log-likelihood per token of the
step's completions (the fluency proxy of ``thinkaloud.measures.fluency``), read from the reference
log-probabilities of the KL term. The completions are sampled at temperature 1, so it sits above the
NLL of greedy eval responses; compare it across steps and with ``base.json``'s (the base model's own
samples), not with an eval's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from thinkaloud.io import atomic_write_json, atomic_write_text
from thinkaloud.train import degenerate

LOG_FILE = "log.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
SUMMARY_FILE = "rl_summary.json"
BASE_FILE = "base.json"
FIGURE = "figures/rl_dynamics"
HELDOUT_FILE = "heldout.jsonl"  # thinkaloud.train.rl_heldout
HELDOUT_BASE_FILE = "heldout_base.json"
HELDOUT_FIGURE = "figures/rl_heldout"
TABLE_KEYS = ("reward", "accuracy", "depth_frac", "als", "kl", "beta", "length", "base_nll", "degenerate")


def run_dir(out: Path, runs: int, run: int) -> Path:
    """Folder of run ``run``: OUT itself for a single run, else ``OUT/run-<r>``."""
    return Path(out) if runs == 1 else Path(out) / f"run-{run}"


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSONL log ([] when it does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_outputs(out: Path, runs: int, figure: bool = True) -> None:
    """Merge the runs' logs into ``OUT/log.jsonl`` (several runs) and redraw the dynamics figure."""
    from thinkaloud.report.plots import plot_rl_dynamics, save_figure

    out = Path(out)
    if runs > 1:
        summaries = [s for run in range(runs) for s in read_summaries(run_dir(out, runs, run))]
        if summaries:
            atomic_write_json(out / SUMMARY_FILE, {"runs": summaries})
    for log in (LOG_FILE, HELDOUT_FILE, COMPLETIONS_FILE):
        if runs > 1:
            rows = [r for run in range(runs) for r in read_rows(run_dir(out, runs, run) / log)]
            if rows or (out / log).exists():
                atomic_write_text(out / log, "".join(json.dumps(r) + "\n" for r in rows))
    for log, base_file, figure_path, title in (
        (LOG_FILE, BASE_FILE, FIGURE, "RL dynamics"),
        (HELDOUT_FILE, HELDOUT_BASE_FILE, HELDOUT_FIGURE, "RL dynamics on held-out prompts"),
    ):
        rows = read_rows(out / log)
        if rows and figure:
            base = json.loads((out / base_file).read_text()) if (out / base_file).exists() else None
            save_figure(plot_rl_dynamics(rows, base, title=title), out / figure_path)


def step_row(
    acc, run, step, out, mask, scored, rewards, depth, kl, L, loss, grad_norm, err, ref_lp, bad
) -> dict[str, Any]:
    """The log row of a step: completion means (of the rewards, the charged ``depth`` (B,), KL̂ …) and
    token-weighted exit metrics and base NLL (from the reference log-probs ``ref_lp`` (B, N)) and the shares of
    degenerate completions (``bad``: the counts of ``thinkaloud.train.degenerate.counts``), summed over
    processes."""
    layers = out.exit_layers[mask].float()  # (n_tokens,)
    sums = torch.tensor(
        [
            rewards.numel(),
            rewards.sum().item(),
            scored.accuracy.sum().item(),
            kl.sum().item(),
            out.lengths.sum().item(),
            loss.item() * rewards.numel(),
            layers.numel(),
            (layers / L).sum().item(),
            (layers < L).sum().item(),
            -ref_lp[mask].sum().item(),
            depth.sum().item(),
            *bad,
        ],
        dtype=torch.float64,
        device=acc.device,
    )
    s = acc.reduce(sums, reduction="sum").tolist() if acc.num_processes > 1 else sums.tolist()
    n, tokens = s[0], s[6]
    depth_frac = s[7] / tokens
    return {
        "run": run,
        "step": step,
        "reward": s[1] / n,
        "accuracy": s[2] / n,
        "depth_frac": depth_frac,
        "als": 1.0 - depth_frac,
        "early_exit_rate": s[8] / tokens,
        "depth_penalty": s[10] / n,
        "kl": s[3] / n,
        "length": s[4] / n,
        "base_nll": s[9] / tokens,
        "loss": s[5] / n,
        "grad_norm": None if grad_norm is None else float(grad_norm),
        "logprob_err": err,
        "completions": int(n),
        **degenerate.shares(s[11:]),
    }


def completions_row(run: int, step: int, out, scored, num_layers: int) -> dict[str, Any]:
    """The ``completions.jsonl`` row of a step: its sampled completions (prompt-major) with their task rewards,
    mean depth ℓ/L and exit layers (``out``: the step's ``GenerationOutput``, ``scored``: its ``Scored``)."""
    lengths = out.lengths.tolist()
    exits = [row[:n] for row, n in zip(out.exit_layers.tolist(), lengths)]
    return {
        "run": run,
        "step": step,
        "texts": scored.texts,
        "task_reward": [round(float(r), 6) for r in scored.reward.tolist()],
        "depth": [round(sum(e) / num_layers / max(len(e), 1), 6) for e in exits],
        "exit_layers": exits,
    }


def read_summaries(folder: Path) -> list[dict[str, Any]]:
    """The run entries of ``folder/rl_summary.json`` ([] when it does not exist)."""
    path = Path(folder) / SUMMARY_FILE
    return json.loads(path.read_text())["runs"] if path.exists() else []


def write_run_summary(folder: Path, run: int, steps: int, beta_final: float) -> dict[str, Any]:
    """``folder/rl_summary.json`` of a finished run (its last logged step, final β, collapse or None); returns
    the run's entry."""
    rows = [r for r in read_rows(Path(folder) / LOG_FILE) if int(r.get("run", run)) == run]
    last = max(rows, key=lambda r: r["step"]) if rows else {}
    keep = ("step", *TABLE_KEYS, "early_exit_rate", "depth_penalty", *degenerate.KINDS)
    entry = {
        "run": run,
        "steps": steps,
        "last": {k: last.get(k) for k in keep},
        "beta_final": beta_final,
        "collapse": degenerate.collapse(rows),
    }
    atomic_write_json(Path(folder) / SUMMARY_FILE, {"runs": [entry]})
    return entry


def step_table(rows: Sequence[dict[str, Any]], keys: Sequence[str] = TABLE_KEYS) -> list[dict[str, Any]]:
    """Mean over runs at each step: [{"step", "runs", key: mean, …}]."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_step.setdefault(int(r["step"]), []).append(r)
    table = []
    for step in sorted(by_step):
        group = by_step[step]
        entry: dict[str, Any] = {"step": step, "runs": len(group)}
        for key in keys:
            vals = [float(r[key]) for r in group if r.get(key) is not None]
            entry[key] = sum(vals) / len(vals) if vals else None
        table.append(entry)
    return table


def print_table(console, out: Path, runs: int) -> None:
    """The step table of ``OUT/log.jsonl`` (mean over runs), as a rich table."""
    from rich.table import Table

    rows = read_rows(Path(out) / LOG_FILE)
    if not rows:
        return
    table = Table(title=f"RL: mean over {runs} run(s) per step")
    for name in ("step", *TABLE_KEYS):
        table.add_column(name, justify="right")
    for entry in step_table(rows, TABLE_KEYS):
        table.add_row(str(entry["step"]), *("—" if entry[k] is None else f"{entry[k]:.3f}" for k in TABLE_KEYS))
    console.print(table)


def format_row(row: dict[str, Any], runs: int, steps: int) -> str:
    """One logged step as a console line."""
    run = f"run {row['run'] + 1}/{runs} " if runs > 1 else ""
    coh = f" coh {row['coherence']:.1f}" if row.get("coherence") is not None else ""
    return (
        f"{run}step {row['step']:>4}/{steps}  reward {row['reward']:+.3f}  acc {row['accuracy']:.2f}  "
        f"depth {row['depth_frac']:.3f}  ALS {100 * row['als']:5.1f}%  exit {100 * row['early_exit_rate']:5.1f}%  "
        f"KL {row['kl']:+.4f}  β {row['beta']:.4g}  len {row['length']:5.1f}  NLL {row['base_nll']:.2f}  "
        f"degenerate {100 * row['degenerate']:3.0f}%{coh}  "
        f"[dim]{row['seconds']:.1f}s[/dim]"
    )
