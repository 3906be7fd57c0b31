"""The report's sections of eval directories: the evaluations table, exit histograms, token views and
coherence distributions, then externalisation (reliance, future lens, fluency proxies) and whether the
reasoning is load-bearing (``thinkaloud.report.loadbearing_sections``).

All eval directories together make one "Evaluations" section (one row per directory), followed by an
externalisation section when any summary has those measures. The eval directory's format is described in
``thinkaloud.report.build``; the section model and shared cell formatters are in
``thinkaloud.report.sections``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from thinkaloud.io import atomic_write_text
from thinkaloud.report import measure_plots, plots, viz
from thinkaloud.report.loadbearing_sections import loadbearing_section
from thinkaloud.report.sections import FLUENCY_NOTE, Section, _Builder, _num, _pct, _read_jsonl, _slug
from thinkaloud.report.terminal import describe_target


def _field(summary: dict[str, Any], measure: str, key: str) -> Any:
    """``summary[measure][key]``, None when the measure is off or lacks it."""
    return (summary.get(measure) or {}).get(key)


def _coherence_cell(c: dict[str, Any] | None) -> str:
    if not c or c.get("mean") is None:
        return "—" if not c else f"— ({c.get('n_missing', 0)} missing)"
    cell = f"{c['mean']:.2f} (n={c['n_judged']}"
    return cell + (f", {c['n_missing']} missing)" if c.get("n_missing") else ")")


def _eval_section(b: _Builder, dirs: Sequence[Path], n_examples: int, max_tokens: int) -> None:
    loaded = [(d, json.loads((d / "summary.json").read_text()), _records(d)) for d in dirs]
    sec = Section("Evaluations")
    headers = [
        "label",
        "model",
        "task",
        "n",
        "offset",
        "target F",
        "accuracy",
        "early-exit rate",
        "ALS",
        "mean length",
        "tokens/s",
        "decode ms/token",
        "speedup vs base",
        "FLOP savings",
        "TV distance",
        "coherence",
        "base NLL (proxy)",
        "rep-4 (proxy)",
        "distinct-2 (proxy)",
    ]
    rows = [
        [
            str(s.get("label", d.name)),
            str(s.get("model", "")),
            str(s.get("task", "")),
            str(s.get("n", "")),
            _num(s.get("offset"), "g"),
            _num(s.get("kl_factor"), "g"),
            _pct(s.get("accuracy")),
            _pct(s.get("early_exit_rate")),
            _pct(s.get("als")),
            _num(s.get("mean_length"), ".1f"),
            _num(s.get("tokens_per_s"), ".1f"),
            _num(s.get("decode_ms_per_token"), ".2f"),
            _num(s.get("speedup_vs_base"), ".2f"),
            _pct(s.get("flop_savings")),
            _num(s.get("tv_distance"), ".3f"),
            _coherence_cell(s.get("coherence")),
            _num(_field(s, "fluency", "base_nll"), ".3f"),
            _pct(_field(s, "fluency", "rep4")),
            _pct(_field(s, "fluency", "distinct2")),
        ]
        for d, s, _ in loaded
    ]
    sec.blocks.append(("table", (headers, rows)))
    notes = [
        f"{s.get('label', d.name)}: target {describe_target(s['target'])}" for d, s, _ in loaded if s.get("target")
    ]
    notes += [
        f"{s.get('label', d.name)}: coherence judged with the {s['coherence']['rubric']} rubric"
        for d, s, _ in loaded
        if (s.get("coherence") or {}).get("rubric")
    ]
    if notes:
        sec.blocks.append(
            (
                "text",
                "; ".join(notes) + ". tokens/s includes prefill; decode ms/token and the "
                "speedup (base decode time per token ÷ the model's, same prompts) do not.",
            )
        )
    if any(s.get("fluency") for _, s, _ in loaded):
        sec.blocks.append(("text", FLUENCY_NOTE))
    scores: dict[str, list[int]] = {}
    for i, (d, s, records) in enumerate(loaded):
        label = str(s.get("label", d.name))
        stem = f"{i:02d}_{_slug(label)}"
        if s.get("exit_hist"):
            fig = plots.plot_exit_histogram(
                s["exit_hist"], s.get("target_hist"), int(s["num_layers"]), title=f"Exit layers: {label}"
            )
            where = "" if d.name == label else f" ({d.name})"
            b.figure(sec, fig, f"exit_hist_{stem}", f"Exit-layer histogram of {label}{where}")
        scores[_unique(label, scores)] = _overall_scores(s, records)
        for j, rec in enumerate(records[:n_examples]):
            tokens, layers = rec["tokens"][:max_tokens], rec["exit_layers"][:max_tokens]
            cut = f" (first {max_tokens} of {len(rec['tokens'])} tokens)" if len(rec["tokens"]) > max_tokens else ""
            title = f"{label} · item {rec.get('id', j)}{cut}"
            args = (tokens, layers, s["exit_layers"], int(s["num_layers"]))
            page = b.out / "tokens" / f"{stem}_{j}.html"
            atomic_write_text(page, viz.tokens_html(*args, title=title))
            sec.blocks.append(("tokens", (title, viz.tokens_fragment(*args, title=title), page)))
    if any(scores.values()):
        b.figure(
            sec,
            plots.plot_coherence_distributions(scores),
            "coherence_distributions",
            "Distribution of the judge's overall score per model",
        )
    b.sections.append(sec)
    named = _named([(str(s.get("label", d.name)), s) for d, s, _ in loaded])
    _externalisation_section(b, named)
    loadbearing_section(b, named)


def _named(labelled: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Labels made unique ("sft", "sft (2)", …), in order."""
    taken: dict[str, Any] = {}
    for label, s in labelled:
        taken[_unique(label, taken)] = s
    return list(taken.items())


def _externalisation_section(b: _Builder, named: list[tuple[str, dict[str, Any]]]) -> None:
    """Reliance (agreement curves, one line per model), future-lens heatmaps and fluency proxies."""
    reliance = {name: s["reliance"] for name, s in named if s.get("reliance")}
    lens = [(name, s["lens"]) for name, s in named if (s.get("lens") or {}).get("accuracy") is not None]
    fluency = {name: s["fluency"] for name, s in named if s.get("fluency")}
    if not (reliance or lens or fluency):
        return
    sec = Section("Externalisation: reliance on the written reasoning, future lens, fluency proxies")
    if reliance:
        rows = [
            [
                name,
                str(r.get("n", "")),
                str(r.get("n_skipped", "")),
                _num(r.get("aoc"), ".3f"),
                " ".join(_pct(a) for a in r["agreement"] or []),
                _pct(r.get("accuracy_f0")),
                _pct(r.get("accuracy_f1")),
                _pct(r.get("accuracy_gain")),
                _pct(r.get("accuracy_full")),
            ]
            for name, r in reliance.items()
        ]
        sec.blocks.append(
            (
                "table",
                (
                    [
                        "model",
                        "responses",
                        "no answer",
                        "area over curve",
                        "agreement at f = " + ", ".join(f"{f:g}" for f in next(iter(reliance.values()))["fractions"]),
                        "accuracy f=0",
                        "accuracy f=1",
                        "gain",
                        "accuracy (full)",
                    ],
                    rows,
                ),
            )
        )
        sec.blocks.append(
            (
                "text",
                "Early answering (Lanham et al. 2023): the reasoning is cut after a fraction f of "
                "its tokens, the answer cue appended, and the same model answers at once. Area over the "
                "curve: 0 = the answer does not depend on the written reasoning; higher = it does. It "
                "shows dependence on the visible text, not that the text is how the answer was computed.",
            )
        )
        b.figure(
            sec,
            measure_plots.plot_agreement_curves(reliance),
            "agreement_curves",
            "Early answering: agreement with the full response's answer per fraction of the reasoning shown",
        )
    for i, (name, summary) in enumerate(lens):
        b.figure(
            sec,
            measure_plots.plot_lens_heatmap(summary, title=f"Future lens: {name}"),
            f"future_lens_{i:02d}_{_slug(name)}",
            f"Future lens of {name} (Pal et al. 2023, linear): held-out top-1 accuracy of token t+k read from "
            "layer ℓ at position t; k = 1 is a tuned logit lens. A linear probe is a lower bound.",
        )
    if fluency:
        b.figure(
            sec,
            measure_plots.plot_fluency(fluency),
            "fluency_proxies",
            "Fluency proxies per model (no judge): base-model NLL per token and repetition",
        )
    b.sections.append(sec)


def _unique(label: str, taken: dict[str, Any]) -> str:
    name, k = label, 2
    while name in taken:
        name, k = f"{label} ({k})", k + 1
    return name


def _records(d: Path) -> list[dict[str, Any]]:
    return _read_jsonl(d / "records.jsonl") if (d / "records.jsonl").is_file() else []


def _overall_scores(summary: dict[str, Any], records: list[dict[str, Any]]) -> list[int]:
    """The judge's overall scores, from the records, else expanded from the summary's histogram."""
    scores = [int(r["judge"]["overall"]) for r in records if "overall" in (r.get("judge") or {})]
    if scores:
        return scores
    hist = (summary.get("coherence") or {}).get("hist") or {}
    return [int(score) for score, count in sorted(hist.items(), key=lambda kv: int(kv[0])) for _ in range(int(count))]
