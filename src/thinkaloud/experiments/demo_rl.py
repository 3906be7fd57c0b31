"""The demo's Stage 2: RL from the F = 1 model under a KL budget, and what its findings read from it.

``RL_KL_TARGETS`` (``thinkaloud.experiments.demo_config``) lists the KL budgets T the demo runs, each with
``RL_SEEDS`` runs (seeds ``seed, seed+1, …``) into ``out/rl-T<T>``. With one T and three seeds the findings
(3) and (5) are stated over the seeds; with several T values (one run each) they are stated per T, and the
runs form a small frontier: the change of mean depth against the change of base-model NLL and the accuracy,
from step 0 (the SFT model) to the last step on the fixed held-out prompts (``frontier_rows``, drawn by
``thinkaloud.report.plots.plot_kl_frontier``). The RL model that is evaluated on the test items (its
reliance, future lens, fluency and accuracy; finding (4) and (5)'s eval part) is the first run at
``RL_EVAL_TARGET``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinkaloud.experiments import findings as df
from thinkaloud.experiments.demo_config import (
    RL_BETA,
    RL_EVAL_TARGET,
    RL_KL_HORIZON,
    RL_KL_TARGETS,
    RL_LAMBDA,
    RL_SEEDS,
    DemoConfig,
    Sizes,
)
from thinkaloud.train.rl_config import RLConfig
from thinkaloud.train.rl_report import HELDOUT_BASE_FILE, HELDOUT_FILE, LOG_FILE, read_rows, read_summaries


def rl_dir(out: Path, target: float) -> Path:
    return Path(out) / f"rl-T{target:g}"


def rl_dirs(out: Path) -> dict[float, Path]:
    """The RL folder of each KL budget T, in the order of ``RL_KL_TARGETS``."""
    return {t: rl_dir(out, t) for t in RL_KL_TARGETS}


def eval_run(out: Path) -> Path:
    """The run folder of the RL model the demo evaluates: the first run at ``RL_EVAL_TARGET``."""
    folder = rl_dir(out, RL_EVAL_TARGET)
    return folder if RL_SEEDS == 1 else folder / "run-0"


def rl_config(out: Path, config: DemoConfig, sizes: Sizes, target: float, sft_run: Path) -> RLConfig:
    folder = rl_dir(out, target)
    return RLConfig(
        model=str(sft_run),
        out=str(folder),
        task=config.task,
        lam=RL_LAMBDA,
        beta=RL_BETA,
        kl_target=target,
        kl_horizon=RL_KL_HORIZON,
        k=sizes.rl_k,
        prompts_per_step=sizes.rl_prompts,
        steps=sizes.rl_steps,
        runs=RL_SEEDS,
        seed=config.seed,
        max_new_tokens=sizes.rl_tokens,
        base_prompts=0,
        save_every=sizes.rl_steps,
        eval_every=sizes.rl_eval_every,
        eval_n=sizes.rl_eval_n,
        # the budgets start from the same model on the same held-out prompts: the first budget's step-0 and
        # base held-out rows serve the others
        heldout_from=None if target == RL_KL_TARGETS[0] else str(rl_dir(out, RL_KL_TARGETS[0])),
        resume=(folder / "config.yaml").exists(),
    )


def finished(folder: Path) -> bool:
    models = [folder / "model"] if RL_SEEDS == 1 else [folder / f"run-{r}" / "model" for r in range(RL_SEEDS)]
    return (folder / LOG_FILE).exists() and all(m.exists() for m in models)


def heldout(folder: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The held-out rows of an RL folder and its base model's row."""
    return read_rows(folder / HELDOUT_FILE), json.loads((folder / HELDOUT_BASE_FILE).read_text())


def rl_findings(dirs: dict[float, Path], records: dict[str, df.EvalRecords]) -> list[df.Finding]:
    """(3) and (5) per KL budget (over its seeds), (4) for the evaluated one."""
    tag = (lambda t: "") if len(dirs) == 1 else (lambda t: f" [T={t:g}]")

    def tagged(finding: df.Finding, t: float) -> df.Finding:
        number, rest = finding.finding.split(" ", 1)
        return df.Finding(f"{number}{tag(t)} {rest}", finding.measured, finding.verdict)

    rows = {t: heldout(d) for t, d in dirs.items()}
    compute = [tagged(df.finding_3(rows[t][0]), t) for t in dirs]
    accuracy = df.finding_4(*rows[RL_EVAL_TARGET], records["RL"], records["base"])
    coherence = [
        tagged(df.finding_5(rows[t][0], records["RL"] if t == RL_EVAL_TARGET else None, records["F=1"]), t)
        for t in dirs
    ]
    return [*compute, tagged(accuracy, RL_EVAL_TARGET), *coherence]


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(r[key] or 0.0 for r in rows) / len(rows)


def frontier_rows(dirs: dict[float, Path]) -> list[dict[str, Any]]:
    """Per KL budget T: the means over its runs of β and KL̂ at the first and last step, and of the held-out
    depth, exit rate, base-model NLL, distinct-2, accuracy and degenerate share at step 0 and the last step."""
    out = []
    for t, d in dirs.items():
        log, (held, _) = read_rows(d / LOG_FILE), heldout(d)
        first, last = df.ends(held)
        steps = sorted({r["step"] for r in log})
        at_first = [r for r in log if r["step"] == steps[0]]
        at_last = [r for r in log if r["step"] == steps[-1]]
        row: dict[str, Any] = {"kl_target": t, "runs": len(first)}
        row |= {"beta_first": _mean(at_first, "beta"), "beta_last": _mean(at_last, "beta")}
        row |= {"kl_first": _mean(at_first, "kl"), "kl_last": _mean(at_last, "kl")}
        for key in ("depth_frac", "early_exit_rate", "base_nll", "distinct2", "accuracy", "degenerate"):
            row[f"{key}_start"] = _mean(list(first.values()), key)
            row[f"{key}_end"] = _mean(list(last.values()), key)
        row["collapsed_runs"] = [e["run"] for e in read_summaries(d) if e["collapse"]]
        out.append(row)
    return out


def _arrow(row: dict[str, Any], key: str, fmt: str, scale: float = 1.0) -> str:
    return f"{format(scale * row[f'{key}_start'], fmt)} → {format(scale * row[f'{key}_end'], fmt)}"


def frontier_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The frontier as a findings table (``thinkaloud.report.build``'s format)."""
    return {
        "title": "KL budget T: held-out prompts, step 0 (the SFT model) → last step (mean over runs)",
        "headers": ["T", "β first → last", "KL̂ first → last", "depth ℓ/L", "exit rate %", "base NLL", "distinct-2"]
        + ["accuracy %", "degenerate %", "collapsed runs"],
        "rows": [
            [
                f"{r['kl_target']:g}",
                f"{r['beta_first']:.3g} → {r['beta_last']:.3g}",
                f"{r['kl_first']:.2f} → {r['kl_last']:.2f}",
                _arrow(r, "depth_frac", ".3f"),
                _arrow(r, "early_exit_rate", ".0f", 100),
                _arrow(r, "base_nll", ".2f"),
                _arrow(r, "distinct2", ".2f"),
                _arrow(r, "accuracy", ".0f", 100),
                _arrow(r, "degenerate", ".0f", 100),
                ", ".join(map(str, r["collapsed_runs"])) or "none",
            ]
            for r in rows
        ],
    }
