"""Figures of the evaluation (docs/method.md §4), built with matplotlib's object API (no pyplot state).

Each ``plot_*`` returns a ``matplotlib.figure.Figure`` (constrained layout, axes labelled, legends
present); ``save_figure`` writes it as PNG and SVG, atomically. Inputs are the plain dicts and rows of
the eval/sweep/RL directories described in ``thinkaloud.report.build``.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure

from thinkaloud.io import atomic_write_bytes
from thinkaloud.measures.metrics import tv_distance

MODEL_COLOR = "#3b528b"
TARGET_COLOR = "#bdbdbd"
BASE_STYLE: dict[str, Any] = {"color": "black", "linestyle": "--", "linewidth": 1.2}


def save_figure(fig: Figure, path_without_ext: str | Path, dpi: int = 150) -> tuple[Path, Path]:
    """Write ``<path>.png`` and ``<path>.svg`` atomically; returns both paths."""
    base = Path(path_without_ext)
    paths = []
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=dpi, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else None)
        paths.append(atomic_write_bytes(base.with_name(f"{base.name}.{ext}"), buf.getvalue()))
    return paths[0], paths[1]


def _int_keys(hist: Mapping[Any, float] | None) -> dict[int, float]:
    return {int(k): float(v) for k, v in (hist or {}).items()}


def plot_exit_histogram(
    exit_hist: Mapping[Any, float],
    target_hist: Mapping[Any, float] | None,
    num_layers: int,
    title: str = "Exit layers",
) -> Figure:
    """Grouped bars: share of tokens per exit layer (model) next to the calibration target."""
    model, target = _int_keys(exit_hist), _int_keys(target_hist)
    layers = sorted(model.keys() | target.keys() | {num_layers})
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    x = range(len(layers))
    width = 0.4 if target else 0.7
    shift = width / 2 if target else 0.0
    ax.bar([i - shift for i in x], [model.get(ly, 0.0) for ly in layers], width, color=MODEL_COLOR, label="model")
    if target:
        ax.bar(
            [i + shift for i in x],
            [target.get(ly, 0.0) for ly in layers],
            width,
            color=TARGET_COLOR,
            edgecolor="#636363",
            hatch="//",
            label="target",
        )
        title = f"{title} (TV distance {tv_distance(model, target):.3f})"
    ax.set_xticks(list(x), [f"{ly}\n(no exit)" if ly == num_layers else str(ly) for ly in layers])
    ax.set_xlabel(f"exit layer (of L = {num_layers})")
    ax.set_ylabel("share of generated tokens")
    ax.set_ylim(0, max(1e-9, *model.values(), *target.values()) * 1.12)
    ax.set_title(title)
    ax.legend()
    return fig


def plot_coherence_distributions(scores: Mapping[str, Sequence[int]]) -> Figure:
    """Grouped bars of the judge's overall score (1–10) per model label, as shares of responses."""
    fig = Figure(figsize=(7.2, 3.8), layout="constrained")
    ax = fig.add_subplot()
    present = {label: list(s) for label, s in scores.items() if s}
    width = 0.8 / max(len(present), 1)
    for i, (label, s) in enumerate(present.items()):
        shares = [sum(1 for v in s if v == score) / len(s) for score in range(1, 11)]
        offset = (i - (len(present) - 1) / 2) * width
        mean = sum(s) / len(s)
        ax.bar(
            [score + offset for score in range(1, 11)], shares, width, label=f"{label} (mean {mean:.1f}, n={len(s)})"
        )
    if not present:
        ax.text(0.5, 0.5, "no coherence scores", transform=ax.transAxes, ha="center", va="center")
    ax.set_xticks(range(1, 11))
    ax.set_xlim(0.4, 10.6)
    ax.set_xlabel("overall coherence score (LLM judge, 1–10)")
    ax.set_ylabel("share of responses")
    ax.set_title("Coherence distributions")
    if present:
        ax.legend(loc="upper left")
    return fig


def _is_base(row: Mapping[str, Any]) -> bool:
    return row.get("label") == "base" or row.get("kl_factor") is None


def _point_label(row: Mapping[str, Any]) -> str:
    return "base" if _is_base(row) else f"F={row['kl_factor']:g}"


def plot_als_coherence_tradeoff(sweep_rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Coherence against ALS across KL factors (one coloured point each, named in the legend), base
    model marked with a star.

    Without any coherence scores it shows ALS against early-exit rate and accuracy instead and says
    so in the title; rows lacking a y value are left out and counted in the title.
    """
    has_coherence = any(r.get("coherence") is not None for r in sweep_rows)
    ys = (
        ["coherence"]
        if has_coherence
        else [k for k in ("early_exit_rate", "accuracy") if any(r.get(k) is not None for r in sweep_rows)]
    )
    ys = ys or ["early_exit_rate"]
    fig = Figure(figsize=(5.6 * len(ys), 4.2), layout="constrained")
    names = {
        "coherence": "coherence (mean overall score, 1–10)",
        "early_exit_rate": "early-exit rate (%)",
        "accuracy": "accuracy (%)",
    }
    omitted = 0
    for i, key in enumerate(ys):
        ax = fig.add_subplot(1, len(ys), i + 1)
        scale = 1.0 if key == "coherence" else 100.0
        rows = [r for r in sweep_rows if r.get(key) is not None and r.get("als") is not None]
        omitted = max(omitted, len(sweep_rows) - len(rows))
        sweep = sorted((r for r in rows if not _is_base(r)), key=lambda r: r["kl_factor"])
        base = [r for r in rows if _is_base(r)]
        if sweep:
            ax.plot([100 * r["als"] for r in sweep], [scale * r[key] for r in sweep], "-", color=TARGET_COLOR, zorder=1)
        cmap = colormaps["viridis"]
        for j, r in enumerate(sweep):  # one colour and legend entry per KL factor: labels never collide
            color = cmap(0.9 * j / max(len(sweep) - 1, 1))
            ax.plot(100 * r["als"], scale * r[key], "o", color=color, markersize=8, label=_point_label(r), zorder=2)
        for r in base:
            ax.plot(100 * r["als"], scale * r[key], "*", color="black", markersize=14, label="base model", zorder=2)
        ax.set_xlabel("average layer savings, ALS (%)")
        ax.set_ylabel(names[key])
        ax.margins(x=0.15, y=0.15)
        ax.grid(alpha=0.3)
        ax.legend(title="KL factor", loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    title = (
        "Coherence vs layer savings"
        if has_coherence
        else "No coherence scores: ALS vs " + " and ".join(names[k].split(" (")[0] for k in ys)
    )
    if omitted:
        title += f" ({omitted} rows without values omitted)"
    fig.suptitle(title)
    return fig


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def plot_rl_dynamics(
    log_rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None = None, title: str = "RL dynamics"
) -> Figure:
    """Accuracy, average compute (mean depth fraction) and, where logged, the fluency proxies (base-model
    NLL per token, distinct-2), coherence, KL̂ to the base with its target, β, and the share of
    degenerate completions per RL step; four panels a row.

    Each run is a thin light line; the mean across runs at each step carries ±1 SE error bars (SE =
    sample std / √runs); the base model's level (``base``) and the KL target are dashed horizontal lines.
    """
    panels = [("accuracy", "accuracy"), ("depth_frac", "average compute (mean depth ℓ/L)")]
    optional = [
        ("base_nll", "fluency proxy (base-model NLL, nats/token)"),
        ("distinct2", "fluency proxy (distinct-2)"),
        ("coherence", "coherence (mean overall score)"),
        ("kl", "KL̂ to the base (nats/token)"),
        ("beta", "KL weight β"),
        ("degenerate", "degenerate completions (share)"),
    ]
    panels += [(key, name) for key, name in optional if any(r.get(key) is not None for r in log_rows)]
    targets = {float(r["kl_target"]) for r in log_rows if r.get("kl_target") is not None}
    runs: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for row in log_rows:
        runs[int(row.get("run", 0))].append(row)
    cols = min(4, len(panels))
    grid = (math.ceil(len(panels) / cols), cols)
    fig = Figure(figsize=(4.6 * cols, 3.8 * grid[0]), layout="constrained")
    for i, (key, name) in enumerate(panels):
        ax = fig.add_subplot(*grid, i + 1)
        by_step: dict[int, list[float]] = defaultdict(list)
        for j, (_, rows) in enumerate(sorted(runs.items())):
            points = sorted((int(r["step"]), float(r[key])) for r in rows if r.get(key) is not None)
            for step, value in points:
                by_step[step].append(value)
            if points:
                ax.plot(
                    *zip(*points),
                    color=MODEL_COLOR,
                    alpha=0.3,
                    linewidth=0.8,
                    label=f"individual runs ({len(runs)})" if j == 0 else None,
                )
        steps = sorted(by_step)
        if steps:
            means, ses = zip(*(_mean_se(by_step[s]) for s in steps))
            ax.errorbar(
                steps,
                means,
                yerr=ses,
                color=MODEL_COLOR,
                linewidth=1.8,
                capsize=2,
                errorevery=max(1, len(steps) // 25),
                label="mean ± 1 SE",
            )
        if base and base.get(key) is not None:
            ax.axhline(float(base[key]), **BASE_STYLE, label="base model")
        if key == "kl":
            for t in sorted(targets):
                ax.axhline(t, color="#b2182b", linestyle=":", linewidth=1.2, label=f"target T = {t:g}")
        if key == "beta" and steps and min(v for s in steps for v in by_step[s]) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("RL step")
        ax.set_ylabel(name)
        head = name.split(" (")[0]
        ax.set_title(head[:1].upper() + head[1:])  # "KL̂ to the base" keeps its capitals
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    return fig


def plot_kl_frontier(rows: Sequence[Mapping[str, Any]], base: Mapping[str, Any] | None = None) -> Figure:
    """The trade-off of RL under KL budgets: per budget T (one point each, named in the legend), the change of
    mean depth ℓ/L from the starting model to the last step against the change of the base model's NLL per
    token (left) and against the accuracy at the last step (right). ``rows`` carry ``kl_target`` and
    ``<key>_start``/``<key>_end`` for depth_frac, base_nll and accuracy (``thinkaloud.experiments.demo_rl``);
    ``base`` the base model's level (dashed)."""
    fig = Figure(figsize=(10.4, 4.2), layout="constrained")
    cmap = colormaps["viridis"]
    rows = sorted(rows, key=lambda r: r["kl_target"])
    for i, (key, name, scale) in enumerate(
        (("base_nll", "change of base-model NLL (nats/token)", 1.0), ("accuracy", "accuracy at the last step (%)", 100))
    ):
        ax = fig.add_subplot(1, 2, i + 1)
        for j, r in enumerate(rows):
            x = 100 * (r["depth_frac_end"] - r["depth_frac_start"])
            y = r["base_nll_end"] - r["base_nll_start"] if key == "base_nll" else scale * r["accuracy_end"]
            color = cmap(0.9 * j / max(len(rows) - 1, 1))
            ax.plot(x, y, "o", color=color, markersize=9, label=f"T = {r['kl_target']:g}")
        if key == "base_nll":
            ax.axhline(0.0, color=TARGET_COLOR, linewidth=1.0)
        else:
            start = sum(r["accuracy_start"] for r in rows) / max(len(rows), 1)
            ax.axhline(scale * start, color=TARGET_COLOR, linewidth=1.0, label="starting model (step 0)")
            if base and base.get("accuracy") is not None:
                ax.axhline(scale * float(base["accuracy"]), **BASE_STYLE, label="base model")
        ax.axvline(0.0, color=TARGET_COLOR, linewidth=1.0)
        ax.set_xlabel("change of mean depth ℓ/L (points; < 0: compute fell)")
        ax.set_ylabel(name)
        ax.margins(x=0.2, y=0.2)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.suptitle("RL under a KL budget T: compute saved against fluency and accuracy (held-out prompts)")
    return fig
