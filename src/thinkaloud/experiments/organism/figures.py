"""The organism's figures (matplotlib's object API, like ``thinkaloud.report.plots``), each a pure function of
the measures' summaries or the RL runs' ``completions.jsonl`` rows:

- :func:`plot_route_steps`: the share of each route among the sampled RL completions per step, per arm, the
  mean over seeds ± 1 SE;
- :func:`plot_accuracy_by_k`: accuracy per route and hop count, the route's first token forced (the organism
  without exits, the SFT model with them);
- :func:`plot_exit_by_kind`: the mean exit layer of written hop letters, filler dots and the answer digit per
  route (routes forced), per model;
- :func:`plot_load_bearing`: mistake following (after a corrupted hop: follows it, keeps the original answer;
  the uncorrupted control) and necessity (answer forced after the prompt, after filler, after the hops).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from thinkaloud.data.organism import ROUTES, route_of
from thinkaloud.experiments.findings import mean_se

ARM_COLORS = ["#7f7f7f", "#3b528b", "#e08214", "#1b7837", "#b2182b"]
ROUTE_COLORS = {"direct": "#b2182b", "hops": "#3b528b", "filler": "#e08214"}


def step_shares(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[int, list[float]]]:
    """{route: {step: [share in each run]}} from ``completions.jsonl`` rows (texts needed)."""
    out: dict[str, dict[int, list[float]]] = {r: defaultdict(list) for r in ROUTES}
    for row in rows:
        routes = [route_of(t) for t in row["texts"] or []]
        for route in ROUTES:
            out[route][int(row["step"])].append(routes.count(route) / max(len(routes), 1))
    return out


def plot_route_steps(arms: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """One panel per route: its share per RL step for each arm (mean over seeds ± 1 SE, shaded)."""
    fig = Figure(figsize=(4.6 * len(ROUTES), 3.8), layout="constrained")
    for i, route in enumerate(ROUTES):
        ax = fig.add_subplot(1, len(ROUTES), i + 1)
        for j, (arm, rows) in enumerate(arms.items()):
            by_step = step_shares(rows)[route]
            steps = sorted(by_step)
            if not steps:
                continue
            means, ses = zip(*(mean_se(by_step[s]) for s in steps))
            color = ARM_COLORS[j % len(ARM_COLORS)]
            n = len(by_step[steps[0]])
            ax.plot(steps, means, color=color, linewidth=1.8, label=f"{arm} ({n} seed{'s' if n != 1 else ''})")
            ax.fill_between(
                steps, [m - s for m, s in zip(means, ses)], [m + s for m, s in zip(means, ses)], color=color, alpha=0.2
            )
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("RL step")
        ax.set_ylabel(f"share of {route} completions")
        ax.set_title(f"Route: {route}")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Routes of the sampled RL completions per step (mean over seeds ± 1 SE)")
    return fig


def plot_accuracy_by_k(summaries: Mapping[str, Mapping[str, Any]]) -> Figure:
    """One panel per model: accuracy per hop count k of each route, its first token forced."""
    fig = Figure(figsize=(4.6 * len(summaries), 3.8), layout="constrained")
    for i, (label, summary) in enumerate(summaries.items()):
        ax = fig.add_subplot(1, len(summaries), i + 1)
        for route in ROUTES:
            by_k = {int(k): float(v) for k, v in summary["forced_accuracy"].get(route, {}).items()}
            if by_k:
                ks = sorted(by_k)
                ax.plot(ks, [by_k[k] for k in ks], marker="o", color=ROUTE_COLORS[route], label=route)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("hop count k")
        ax.set_ylabel("accuracy (route forced)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Accuracy by hop count per route")
    return fig


KIND_LABELS = {
    "hop": "hop letters",
    "filler": "filler dots",
    "answer_direct": "answer (direct)",
    "answer_hops": "answer (after hops)",
    "answer_filler": "answer (after filler)",
}


def plot_exit_by_kind(summaries: Mapping[str, Mapping[str, Any]], num_layers: int) -> Figure:
    """Grouped bars: the mean exit layer of each token kind (routes forced), one bar per model."""
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(summaries), 1)
    for j, (label, summary) in enumerate(summaries.items()):
        values = [summary["exit_by_kind_forced"].get(kind) for kind in KIND_LABELS]
        xs = [i + (j - (len(summaries) - 1) / 2) * width for i in range(len(KIND_LABELS))]
        ax.bar(xs, [v or 0.0 for v in values], width, color=ARM_COLORS[j % len(ARM_COLORS)], label=label)
    ax.set_xticks(range(len(KIND_LABELS)), list(KIND_LABELS.values()))
    ax.set_ylim(0, num_layers + 0.2)
    ax.axhline(num_layers, color="black", linestyle="--", linewidth=1, label=f"no exit (L = {num_layers})")
    ax.set_ylabel("mean exit layer")
    ax.set_title("Exit layer by token kind (routes forced)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_load_bearing(summaries: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Two panels of grouped bars per model: mistake following and necessity."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    panels = [
        ("mistakes", {"followed": "follows the corrupted hop", "original": "keeps the original", "clean": "control: uncorrupted"}),
        ("necessity", {"prompt": "right after the prompt", "filler": "after k + 1 filler dots", "hops": "after the hops"}),
    ]  # fmt: skip
    titles = {"mistakes": "Mistake following (k ≥ 2)", "necessity": "Necessity: answer forced"}
    for p, (key, labels) in enumerate(panels):
        ax = fig.add_subplot(1, 2, p + 1)
        width = 0.8 / max(len(summaries), 1)
        for j, (label, summary) in enumerate(summaries.items()):
            values = [summary[key].get(name) or 0.0 for name in labels]
            xs = [i + (j - (len(summaries) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, values, width, color=ARM_COLORS[j % len(ARM_COLORS)], label=label)
        ax.set_xticks(range(len(labels)), list(labels.values()), fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("share of answers" if key == "mistakes" else "accuracy")
        ax.set_title(titles[key])
        ax.grid(alpha=0.3, axis="y")
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("Do the written hops carry the answer?")
    return fig
