"""Figures of the externalisation measures (matplotlib object API, no pyplot state; Agg-safe).

Each ``plot_*`` takes the summary dicts returned by ``thinkaloud.measures.reliance.early_answering``,
``thinkaloud.measures.lens.future_lens``, ``thinkaloud.measures.fluency.fluency`` and
``thinkaloud.measures.loadbearing.decodability.answer_decodability`` (keyed by model label where several
models are compared) and returns a ``Figure``; write it with
``thinkaloud.report.plots.save_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure


def plot_agreement_curves(summaries: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Early answering: agreement with the full response's answer against the fraction of reasoning
    shown, one line per model (legend: area over the curve and responses used)."""
    fig = Figure(figsize=(6.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    shown = {label: s for label, s in summaries.items() if s.get("agreement")}
    cmap = colormaps["viridis"]
    for i, (label, s) in enumerate(shown.items()):
        ax.plot(
            [100 * f for f in s["fractions"]],
            [100 * a for a in s["agreement"]],
            "o-",
            color=cmap(0.85 * i / max(len(shown) - 1, 1)),
            label=f"{label} (AOC {s['aoc']:.2f}, n={s['n']})",
        )
    if not shown:
        ax.text(0.5, 0.5, "no responses with an extractable answer", transform=ax.transAxes, ha="center", va="center")
    ax.set_xlabel("fraction of the written reasoning shown (%)")
    ax.set_ylabel("agreement with the full response's answer (%)")
    ax.set_xlim(-3, 103)
    ax.set_ylim(-3, 103)
    ax.grid(alpha=0.3)
    ax.set_title("Early answering (higher area over the curve = more reliance on the reasoning)")
    if shown:
        ax.legend(loc="best")  # where it covers the fewest points
    return fig


def plot_lens_heatmap(summary: Mapping[str, Any], title: str = "Future lens") -> Figure:
    """Held-out top-1 accuracy of the linear future lens, exit layer × distance k, values annotated;
    a last column gives the plain logit lens (k = 1, no map) for comparison."""
    layers, ks = summary["layers"], summary["distances"]
    if summary.get("accuracy") is None:  # no held-out positions
        rows = [[None] * (len(ks) + 1) for _ in layers]
    else:
        rows = [list(r) + [ll] for r, ll in zip(summary["accuracy"], summary["logit_lens"])]  # (layers, K+1)
    fig = Figure(figsize=(1.3 * (len(ks) + 1) + 2.2, 0.45 * len(layers) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(
        [[float("nan") if v is None else 100 * v for v in r] for r in rows],
        cmap="viridis",
        vmin=0,
        vmax=100,
        aspect="auto",
    )
    for i, r in enumerate(rows):
        for j, v in enumerate(r):
            text = "—" if v is None else f"{100 * v:.0f}"
            color = "black" if v is not None and v > 0.6 else "white"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=9)
    ax.set_xticks(range(len(ks) + 1), [f"k={k}" for k in ks] + ["logit lens\n(k=1)"])
    L = summary["num_layers"]
    ax.set_yticks(range(len(layers)), [f"{ly} (final)" if ly == L else str(ly) for ly in layers])
    ax.set_xlabel("token predicted: t + k")
    ax.set_ylabel("layer read at position t")
    title = f"{title}: held-out top-1 (%), {summary['n_test_tokens']} tokens"
    if summary.get("constant"):
        title += "\nmost frequent token: " + ", ".join(f"k={k} {100 * v:.0f}%" for k, v in zip(ks, summary["constant"]))
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="top-1 accuracy (%)")
    return fig


def plot_fluency(summaries: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Fluency proxies per model: the base model's NLL per token of the responses (left) and the
    repetition measures (right: repeated 4-grams, distinct bigrams)."""
    labels = list(summaries)
    fig = Figure(figsize=(4.0 + 0.9 * len(labels), 3.8), layout="constrained")
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = range(len(labels))
    nll = [summaries[k].get("base_nll") for k in labels]
    left.bar(x, [v or 0.0 for v in nll], color="#3b528b")
    left.set_xticks(list(x), labels, rotation=30, ha="right")
    left.set_ylabel("base-model NLL per token (nats)")
    left.set_title("Likelihood under the base model")
    width = 0.4
    for shift, key, name, color in (
        (-width / 2, "rep4", "repeated 4-grams", "#b5de2b"),
        (width / 2, "distinct2", "distinct bigrams", "#21918c"),
    ):
        values = [summaries[k].get(key) for k in labels]
        right.bar([i + shift for i in x], [100 * (v or 0.0) for v in values], width, color=color, label=name)
    right.set_xticks(list(x), labels, rotation=30, ha="right")
    right.set_ylabel("share (%)")
    right.set_ylim(0, 105)
    right.set_title("Repetition")
    right.legend(loc="upper right", fontsize=8)
    fig.suptitle("Fluency proxies (no judge)")
    return fig


def plot_fluency_distributions(values: Mapping[str, Sequence[float]]) -> Figure:
    """Distribution of the per-response base-model NLL per model (box: quartiles, whiskers 1.5 IQR; dots:
    responses; diamond: mean), one column per label in the given order."""
    shown = {label: [float(v) for v in vs] for label, vs in values.items() if vs}
    fig = Figure(figsize=(1.4 * max(len(shown), 2) + 2.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    if shown:
        labels = list(shown)
        ax.boxplot([shown[k] for k in labels], showfliers=False, widths=0.5)
        ax.set_xticks(range(1, len(labels) + 1), [f"{k}\n(n={len(shown[k])})" for k in labels])
        for i, label in enumerate(labels, start=1):
            vs = shown[label]
            jitter = [i + 0.18 * ((j * 0.618) % 1 - 0.5) for j in range(len(vs))]  # deterministic spread
            ax.plot(jitter, vs, "o", color="#3b528b", alpha=0.45, markersize=3)
            ax.plot(
                [i],
                [sum(vs) / len(vs)],
                "D",
                color="#fde725",
                markeredgecolor="black",
                markersize=7,
                label="mean" if i == 1 else None,
            )
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no fluency values", transform=ax.transAxes, ha="center", va="center")
    ax.set_ylabel("base-model NLL per token of a response (nats)")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title("Fluency proxy per response (no judge; higher = less natural to the base model)")
    return fig


def plot_decodability(summaries: Mapping[str, Mapping[str, Any]]) -> Figure:
    """Answer decodability, one heatmap per model side by side: held-out probe accuracy per layer (rows,
    the first at the bottom) and point of the reasoning (columns: the prompt's end, then 10 % … 100 %),
    on one colour scale; each title gives the chance level (shuffled labels) and the majority baseline."""
    shown = {label: s for label, s in summaries.items() if s.get("accuracy") is not None}
    fig = Figure(figsize=(1.2 + 3.6 * max(len(shown), 1), 5.2), layout="constrained")
    if not shown:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no decodability tables", transform=ax.transAxes, ha="center", va="center")
        return fig
    axes = fig.subplots(1, len(shown), squeeze=False, sharey=False)[0]
    images = []
    for ax, (label, s) in zip(axes, shown.items()):
        rows = [[100 * v for v in row] for row in s["accuracy"]]  # (layers, fractions)
        image = ax.imshow(rows, cmap="viridis", vmin=0, vmax=100, aspect="auto", origin="lower")
        fractions, layers = s["fractions"], s["layers"]
        ax.set_xticks(range(len(fractions)), ["prompt" if f == 0 else f"{100 * f:.0f}%" for f in fractions])
        ax.tick_params(axis="x", labelrotation=90)
        step = max(1, len(layers) // 10)
        ax.set_yticks(range(0, len(layers), step), [str(layer) for layer in layers[::step]])
        images.append(image)
        ax.set_xlabel("point of the reasoning read")
        ax.set_title(
            f"{label} (n={s['n']}, {s['label']})\nchance {100 * s['chance_mean']:.0f}%, "
            f"majority {100 * s['majority']:.0f}%",
            fontsize=9,
        )
    axes[0].set_ylabel("layer")
    fig.colorbar(images[0], ax=list(axes), label="held-out probe accuracy (%)")
    fig.suptitle("Where is the answer decodable? (linear probes, two folds)")
    return fig
