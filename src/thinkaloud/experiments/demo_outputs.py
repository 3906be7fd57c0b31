"""What ``thinkaloud demo`` computes and writes beside its runs: the calibration targets per KL factor and
the cost of an exit per layer, the Stage-1 table (``stage1/sweep.json``) and the findings
(``findings/findings.json`` with their figures). The demo itself is ``thinkaloud.experiments.demo``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from rich.table import Table

from thinkaloud.data.calibrate import load_calibration
from thinkaloud.experiments import demo_rl
from thinkaloud.experiments.demo_config import (
    KL_FACTORS,
    RL_BETA,
    RL_EVAL_TARGET,
    RL_KL_HORIZON,
    RL_LAMBDA,
    RL_SEEDS,
    DemoConfig,
)
from thinkaloud.io import atomic_write_json

# ---------------------------------------------------------------------------------------------------
# Calibration targets and the cost of an exit


def calibration_targets(calib: Path) -> tuple[dict[float, dict[int, float]], int, list[int]]:
    """The mean calibration target over exit layers at each KL factor, (targets, L, E)."""
    from thinkaloud.measures.metrics import target_histogram
    from thinkaloud.model.exits import exit_targets

    manifest, rows = load_calibration(calib)
    L, E = int(manifest["num_layers"]), list(manifest["exit_layers"])
    kl = torch.cat([r.kl for r in rows])  # (tokens, m)
    return {f: target_histogram(exit_targets(kl, f), E + [L]) for f in KL_FACTORS}, L, E


def kl_cost_table(calib: Path) -> Table:
    """Per exit layer: the calibration's mean KL and what an exit there gains and costs in the RL reward."""
    manifest, rows = load_calibration(calib)
    L, E = int(manifest["num_layers"]), list(manifest["exit_layers"])
    kl = torch.cat([r.kl for r in rows]).mean(0)  # (m,)
    table = Table(
        title=f"Cost of an exit on {manifest['config']['task']} ({sum(len(r.kl) for r in rows)} calibration "
        "tokens): depth gain λ(L−ℓ)/L against KL cost β·D (D = KL(p_L‖p_ℓ), an upper proxy of "
        "the reward's KL̂)"
    )
    for col in (
        "exit layer",
        "D (nats)",
        f"gain λ={RL_LAMBDA:g}",
        "cost β=0.25 (paper)",
        f"cost β={RL_BETA:g} (demo's start)",
    ):
        table.add_column(col, justify="right")
    for layer, d in zip(E, kl.tolist()):
        table.add_row(
            str(layer), f"{d:.2f}", f"{RL_LAMBDA * (L - layer) / L:.3f}", f"{0.25 * d:.3f}", f"{RL_BETA * d:.3f}"
        )
    return table


# ---------------------------------------------------------------------------------------------------
# Stage-1 table, findings


def write_stage1(folder: Path, records: dict, targets: dict[float, dict[int, float]]) -> Path:
    """``folder/sweep.json``: the Stage-1 table in the sweep format (``thinkaloud.report.build``)."""
    from thinkaloud.measures.metrics import tv_distance

    rows = []
    for f in [*KL_FACTORS, None]:
        label = "base" if f is None else f"F={f:g}"
        s = json.loads((folder.parent / "eval" / label / "summary.json").read_text())
        flu = s.get("fluency") or {}
        r = records[label]
        rows.append(
            {
                "label": "base" if f is None else f"kl={f:g}",
                "kl_factor": f,
                "coherence": (s.get("coherence") or {}).get("mean"),
                "base_nll": flu.get("base_nll"),
                "rep4": flu.get("rep4"),
                "distinct2": flu.get("distinct2"),
                "early_exit_rate": s["early_exit_rate"],
                "als": s["als"],
                "accuracy": s["accuracy"],
                "tv_distance": None if f is None else tv_distance(r.hist(range(len(r))), targets[f]),
                "speedup_vs_base": None,
                "eval_dir": str(folder.parent / "eval" / label),
            }
        )
    atomic_write_json(
        folder / "sweep.json",
        {"task": json.loads((folder.parent / "eval" / "base" / "summary.json").read_text())["task"], "rows": rows},
    )
    return folder


def write_demo_findings(
    folder: Path,
    records: dict,
    targets: dict[float, dict[int, float]],
    rl_dirs: dict[float, Path],
    L: int,
    config: DemoConfig,
) -> list:
    """Compute the five findings, draw their figures and write ``folder/findings.json``."""
    from thinkaloud.experiments import findings as df
    from thinkaloud.report.measure_plots import plot_fluency_distributions
    from thinkaloud.report.plots import plot_exit_histogram, plot_kl_frontier, save_figure
    from thinkaloud.train.rl_report import read_summaries

    by_factor = {f: records[f"F={f:g}"] for f in KL_FACTORS}
    held_n = demo_rl.heldout(rl_dirs[RL_EVAL_TARGET])[0][0]["n"]
    findings = [
        *df.finding_1(by_factor),
        df.finding_2(by_factor, records["base"], targets),
        *demo_rl.rl_findings(rl_dirs, records),
    ]
    frontier = demo_rl.frontier_rows(rl_dirs)
    figures = []
    if len(frontier) > 1:
        base = demo_rl.heldout(rl_dirs[RL_EVAL_TARGET])[1]
        save_figure(plot_kl_frontier(frontier, base), folder / "figures" / "kl_frontier")
        figures.append(
            {
                "file": "figures/kl_frontier",
                "caption": "The KL budget's trade-off: per T, the change of mean depth on the held-out prompts "
                "(step 0 = the SFT model → last RL step) against the change of the base model's NLL per token, "
                "and the held-out accuracy at the last step (dashed: the base model)",
            }
        )
    fig = plot_fluency_distributions({k: [v for v in r.nll if v is not None] for k, r in records.items()})
    save_figure(fig, folder / "figures" / "fluency_distribution")
    figures.append(
        {
            "file": "figures/fluency_distribution",
            "caption": "Fluency proxy per response and model (test items): the base model's NLL per token",
        }
    )
    for f, r in by_factor.items():
        name = f"figures/exit_vs_target_F{f:g}"
        save_figure(
            plot_exit_histogram(r.hist(range(len(r))), targets[f], L, title=f"F={f:g}: learned vs target"),
            folder / name,
        )
        figures.append(
            {
                "file": name,
                "caption": f"Learned exit histogram of the F={f:g} SFT model (test responses) "
                f"against its calibration target (train rollouts)",
            }
        )
    notes = [
        f"Model {config.model}, task {config.task}, seed {config.seed}; {len(records['base'])} test items per eval, "
        f"{held_n} fixed held-out test prompts in RL (λ={RL_LAMBDA:g}; KL budgets T = "
        f"{', '.join(f'{t:g}' for t in rl_dirs)} nats/token, {RL_SEEDS} seed(s) each: β adapted every step from "
        f"{RL_BETA:g}, horizon {RL_KL_HORIZON:g} completions; the RL model evaluated on the test items is the "
        f"first run at T={RL_EVAL_TARGET:g}).",
        "Uncertainty: 95% bootstrap intervals over items (paired across models on the same items; RL seeds "
        "pooled, prompts resampled). Verdict: held = the claimed direction with an interval excluding 0; not "
        "significant = the direction, interval includes 0; did not hold = the other direction. (4) is a claim "
        f"of no harm: did not hold = an interval entirely below 0; not significant = a drop of more than "
        f"{100 * df.ACCURACY_MARGIN:.0f} points whose interval includes 0. (5) is one too, per measure in its worse "
        f"direction, with margins {df.COHERENCE_MARGINS['base_nll']:g} nats/token (NLL), "
        f"{df.COHERENCE_MARGINS['distinct2']:g} (distinct-2) and {df.COHERENCE_MARGINS['coherence']:g} (judge).",
        "TV distances compare each model's exit histogram on the test responses with the calibration target "
        "at its KL factor (mean q* over the base model's train-split rollouts); the base model never exits.",
        "Fluency proxies are not coherence: the base-model NLL also rises for correct text in an unusual style.",
    ]
    notes += [
        f"RL at T={t:g}, run {e['run']}: {e['collapse']['message']}."
        for t, d in rl_dirs.items()
        for e in read_summaries(d)
        if e["collapse"]
    ]
    tables = [demo_rl.frontier_table(frontier)]
    df.write_findings(
        folder, f"Findings: the paper's claims on {config.model} ({config.task})", findings, notes, tables, figures
    )
    return findings
