"""What the organism experiment writes from its measures and RL folders: the findings (``findings.json`` in the
report's findings format, ``findings.md``), the figures and a table of every measured model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thinkaloud.experiments.findings import Finding, write_findings
from thinkaloud.experiments.organism import figures
from thinkaloud.experiments.organism.config import CONTROL, OrganismExperimentConfig, Sizes
from thinkaloud.experiments.organism.findings import organism_findings
from thinkaloud.experiments.organism.measures import SUMMARY_FILE, mean_summaries, read_records
from thinkaloud.io import atomic_write_text
from thinkaloud.report.plots import save_figure
from thinkaloud.train.rl_report import COMPLETIONS_FILE, read_rows

TITLE = "The model organism: does the exit penalty move computation into the text?"
TABLE_HEADERS = [
    "model", "direct", "hops", "filler", "accuracy", "depth ℓ/L", "hop exit", "filler exit", "direct answer exit",
    "follows a corrupted hop", "answer after prompt / filler / hops",
]  # fmt: skip


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def table_row(label: str, s: dict[str, Any]) -> list[str]:
    """One model's row: sampled route shares, accuracy, depth, exits by kind (routes forced), load-bearing tests."""
    shares, kinds, nec = s["route_shares"], s["exit_by_kind_forced"], s["necessity"]
    return [
        label,
        _pct(shares.get("direct")),
        _pct(shares.get("hops")),
        _pct(shares.get("filler")),
        _pct(s.get("accuracy")),
        _num(s.get("depth_frac"), ".3f"),
        _num(kinds.get("hop")),
        _num(kinds.get("filler")),
        _num(kinds.get("answer_direct")),
        _pct(s["mistakes"].get("followed")),
        " / ".join(_pct(nec.get(c)) for c in ("prompt", "filler", "hops")),
    ]


def findings_md(findings: list[Finding], notes: list[str], table: dict[str, Any]) -> str:
    esc = lambda cell: str(cell).replace("|", "\\|")
    lines = [f"# {TITLE}", "", "| finding | measured (95% CI) | verdict |", "|---|---|---|"]
    lines += [f"| {esc(f.finding)} | {esc(f.measured)} | {f.verdict} |" for f in findings]
    lines += ["", *(f"- {n}" for n in notes), "", f"**{table['title']}**", ""]
    lines += ["| " + " | ".join(table["headers"]) + " |", "|---" * len(table["headers"]) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


def write(
    out: Path, config: OrganismExperimentConfig, size: Sizes, ks: list[int], arms: dict[str, Path], card: dict
) -> list[Finding]:
    """Read ``out/measures`` and the arms' completions; write ``out/findings``; return the findings."""
    measures = out / "measures"
    records = lambda label: read_records(measures / label)
    summary = lambda label: json.loads((measures / label / SUMMARY_FILE).read_text())
    by_arm = {name: {s: records(f"{name}/seed{s}") for s in config.seeds} for name in arms}
    summaries = {name: mean_summaries([summary(f"{name}/seed{s}") for s in config.seeds]) for name in arms}
    sft = summary("sft")
    penalties = {name: recs for name, recs in by_arm.items() if name != CONTROL}
    findings = organism_findings(
        records("organism"), records("sft"), penalties, by_arm[CONTROL], int(sft["num_layers"])
    )

    d = out / "findings"
    models = {"organism (no exits)": summary("organism"), "SFT": sft, **summaries}
    arm_rows = {name: read_rows(arm / COMPLETIONS_FILE) for name, arm in arms.items()}
    L = int(sft["num_layers"])
    drawn = [
        ("route_steps", figures.plot_route_steps(arm_rows), "Share of each route among the sampled RL completions per step, per arm (mean over seeds ± 1 SE)."),
        ("accuracy_by_k", figures.plot_accuracy_by_k({"organism (no exits)": models["organism (no exits)"], "SFT (exits)": sft}), "Accuracy by hop count k per route, the route's first token forced."),
        ("exit_by_kind", figures.plot_exit_by_kind({"SFT": sft, **summaries}, L), "Mean exit layer of written hop letters, filler dots and the answer digit per route (routes forced; RL arms: mean over seeds)."),
        ("load_bearing", figures.plot_load_bearing({"SFT": sft, **summaries}), "Mistake following (after a corrupted hop, k ≥ 2) and necessity (answer forced after the prompt, after k + 1 filler dots, after the written hops)."),
    ]  # fmt: skip
    for name, fig, _ in drawn:
        save_figure(fig, d / "figures" / name)
    table = {
        "title": f"Every measured model on {models['SFT']['n']} test prompts (hop counts {min(ks)}…; RL arms: mean over seeds)",
        "headers": TABLE_HEADERS,
        "rows": [table_row(label, s) for label, s in models.items()],
    }
    arms_text = ", ".join(f"{name} (λ={lam:g}, {pen})" for name, (lam, pen) in config.arms().items())
    notes = [
        f"RL on hop counts {ks} (where the organism's direct and written-hops accuracies differ by at most "
        f"{100 * config.gap:.0f} points), from one SFT model (KL factor 1), arms {arms_text}, β={config.beta:g}, "
        f"{size.steps} steps of {size.prompts_per_step} prompts × {size.k} completions, seeds {config.seeds}"
        + (" (--quick sizes)" if config.quick else "")
        + ". λ, β and steps were chosen on pilot seeds 10–12 (OrganismExperimentConfig's docstring).",
        f"Measures on {models['SFT']['n']} test prompts, every hop count, {size.samples} sampled completions each "
        "(route shares) and greedy forced completions (accuracy per route, exits by token kind, necessity, "
        "mistake following); exits sampled at the model's recorded offset (0), the organism itself without exits.",
        "Card of the organism (no exits, route forced): "
        + "; ".join(
            f"{route} " + " / ".join(_pct(v) for v in by_k.values()) for route, by_k in card["accuracy"].items()
        ),
    ]
    write_findings(
        d,
        TITLE,
        findings,
        notes,
        [table],
        [{"file": f"figures/{name}", "caption": caption} for name, _, caption in drawn],
        first=True,
    )
    atomic_write_text(d / "findings.md", findings_md(findings, notes, table))
    return findings
