"""Build a Markdown + self-contained HTML report from eval, sweep and RL directories.

The eval runner writes these directories (the contract this module reads):

eval directory
  ``summary.json``: {"model", "label" ("base" | the run folder's name | …), "stage" ("base" | "sft" |
    "rl" | "unknown"), "task", "split", "n", "num_layers": L, "exit_layers": E, "offset",
    "kl_factor" (of the target, or null), "target": {"kl_factor", "source"} or null, "accuracy",
    "early_exit_rate", "als", "mean_length", "tokens_per_s" (prefill included), "prefill_s",
    "decode_ms_per_token", "speed_baseline": {"prefill_s", "decode_s", "decode_tokens",
    "decode_ms_per_token", "n_tokens"} or {"skipped": reason}, "speedup_vs_base" or null,
    "flop_savings", "exit_hist": {"5": share, …, "L": share}, "target_hist": {…} or null,
    "tv_distance" or null, "coherence": {"mean", "n_judged", "n_missing", "hist": {"1": count, …},
    "criteria", "missing_reasons", "rubric"} or null, "fluency": {"base_nll", "base_ppl", "rep4",
    "distinct2", …} or null, "reliance": {"fractions", "agreement", "aoc", "accuracy_f0", "accuracy_f1",
    "n", …} or null, "lens": {"layers", "distances", "accuracy", "logit_lens", …} or {"skipped"} or
    null}; measures may add fields (each optional here)
  ``records.jsonl``: one line per item: {"id", "prompt", "completion", "tokens": [str per generated
    token], "exit_layers": [int per token], "score", "judge": {"coherence", "completeness", "clarity",
    "no_repetition", "overall"} or null, "judge_missing": reason or null}
sweep directory
  ``sweep.json``: {"rows": [{"label": "kl=0.25", "kl_factor": 0.25, "coherence", "base_nll", "rep4",
    "early_exit_rate", "als", "accuracy", "speedup_vs_base"}, …, {"label": "base", "kl_factor": null, …}]}
RL directory
  ``log.jsonl``: one line per step and run: {"run", "step", "reward", "accuracy", "depth_frac", "als",
    "early_exit_rate", "kl", "length", "base_nll" (fluency proxy, or null), "coherence" (or null)};
    optional ``base.json``: {"accuracy", "depth_frac", "base_nll", "coherence"} with the base model's
    level; optional ``heldout.jsonl`` (the same keys, on a fixed set of held-out prompts every few
    steps, step 0 = the starting model) with ``heldout_base.json``.
findings directory
  ``findings.json``: {"title", "findings": [{"finding", "measured", "verdict"}], "notes": [str],
    "tables": [{"title", "headers", "rows"}], "figures": [{"file": stem relative to the folder, whose
    .png (and .svg) exist, "caption"}]}: stated results (e.g. the demo's), drawn as the last section.

``build_report(dirs, out)`` writes ``out/report.md`` (Markdown tables, linked images),
``out/report.html`` (one file: CSS inline, figures as base64 PNG, token views inline), the figures
as PNG + SVG under ``out/figures/`` and one standalone token page per eval directory under
``out/tokens/``. Every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkaloud.eval import measure_plots, plots, viz
from thinkaloud.io import atomic_write_bytes, atomic_write_text

Table = tuple[list[str], list[list[str]]]  # (headers, rows of cells)


def detect_kind(path: Path) -> str:
    """ "eval" (summary.json), "sweep" (sweep.json) or "rl" (log.jsonl)."""
    for name, kind in (
        ("summary.json", "eval"),
        ("sweep.json", "sweep"),
        ("log.jsonl", "rl"),
        ("findings.json", "findings"),
    ):
        if (path / name).is_file():
            return kind
    raise ValueError(
        f"{path} is not an eval, sweep, RL or findings directory (no summary.json, sweep.json, "
        "log.jsonl or findings.json)"
    )


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _field(summary: dict[str, Any], measure: str, key: str) -> Any:
    """``summary[measure][key]``, None when the measure is off or lacks it."""
    return (summary.get(measure) or {}).get(key)


def _coherence_cell(c: dict[str, Any] | None) -> str:
    if not c or c.get("mean") is None:
        return "—" if not c else f"— ({c.get('n_missing', 0)} missing)"
    cell = f"{c['mean']:.2f} (n={c['n_judged']}"
    return cell + (f", {c['n_missing']} missing)" if c.get("n_missing") else ")")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "dir"


# ---------------------------------------------------------------------------------------------------
# Sections: each appends its tables, figures and token views to the builder


@dataclass
class FigureBlock:
    name: str  # file stem under figures/
    caption: str
    png: bytes


@dataclass
class Section:
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)  # ("table", Table) | ("figure", FigureBlock) | …


class _Builder:
    def __init__(self, out: Path):
        self.out = out
        self.sections: list[Section] = []

    def figure(self, section: Section, fig: Any, name: str, caption: str) -> None:
        png, _svg = plots.save_figure(fig, self.out / "figures" / name)
        section.blocks.append(("figure", FigureBlock(name, caption, png.read_bytes())))


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
        f"{s.get('label', d.name)}: target F={s['target']['kl_factor']:g} ({s['target']['source']})"
        for d, s, _ in loaded
        if s.get("target")
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
    _externalisation_section(b, [(str(s.get("label", d.name)), s) for d, s, _ in loaded])


FLUENCY_NOTE = (
    "Fluency proxies (no judge): base NLL = the base model's mean negative log-likelihood per token of "
    "the responses (adapter off, no exits; lower = more natural to the base model); rep-4 = share of "
    "repeated token 4-grams; distinct-2 = distinct token bigrams / bigrams. Proxies, not coherence: "
    "bland or repetitive text also has a low NLL."
)


def _externalisation_section(b: _Builder, labelled: list[tuple[str, dict[str, Any]]]) -> None:
    """Reliance (agreement curves, one line per model), future-lens heatmaps and fluency proxies."""
    taken: dict[str, Any] = {}
    for label, s in labelled:
        taken[_unique(label, taken)] = s
    named = list(taken.items())
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
    scores = [int(r["judge"]["overall"]) for r in records if r.get("judge")]
    if scores:
        return scores
    hist = (summary.get("coherence") or {}).get("hist") or {}
    return [int(score) for score, count in sorted(hist.items(), key=lambda kv: int(kv[0])) for _ in range(int(count))]


def _sweep_section(b: _Builder, d: Path, index: int) -> None:
    rows = json.loads((d / "sweep.json").read_text())["rows"]
    sec = Section(f"KL-factor sweep: {d.name}")
    table = [
        [
            str(r.get("label", "")),
            _num(r.get("kl_factor"), "g"),
            _num(r.get("coherence")),
            _num(r.get("base_nll"), ".3f"),
            _pct(r.get("rep4")),
            _pct(r.get("early_exit_rate")),
            _pct(r.get("als")),
            _pct(r.get("accuracy")),
            _num(r.get("tv_distance"), ".3f"),
            _num(r.get("speedup_vs_base"), ".2f"),
        ]
        for r in rows
    ]
    sec.blocks.append(
        (
            "table",
            (
                [
                    "label",
                    "KL factor",
                    "coherence",
                    "base NLL (proxy)",
                    "rep-4 (proxy)",
                    "early-exit rate",
                    "ALS",
                    "accuracy",
                    "TV to target",
                    "decode speedup",
                ],
                table,
            ),
        )
    )
    if any(r.get("base_nll") is not None for r in rows):
        sec.blocks.append(("text", FLUENCY_NOTE))
    caption = (
        "Coherence against average layer savings across KL factors"
        if any(r.get("coherence") is not None for r in rows)
        else "No coherence scores in this sweep: early-exit rate and accuracy against average layer savings"
    )
    b.figure(sec, plots.plot_als_coherence_tradeoff(rows), f"tradeoff_{index:02d}_{_slug(d.name)}", caption)
    b.sections.append(sec)


def _rl_section(b: _Builder, d: Path, index: int) -> None:
    log = _read_jsonl(d / "log.jsonl")
    base = json.loads((d / "base.json").read_text()) if (d / "base.json").is_file() else None
    sec = Section(f"RL: {d.name}")
    keys = ["reward", "accuracy", "depth_frac", "als", "early_exit_rate", "kl", "length", "base_nll", "coherence"]
    runs = sorted({int(r.get("run", 0)) for r in log})
    table = [[end] + [_rl_cell(log, k, first=end == "first") for k in keys] for end in ("first", "last")]
    if base:
        table.append(["base model"] + [_num(base.get(k), ".3f") for k in keys])
    steps = sorted({int(r["step"]) for r in log})
    sec.blocks.append(
        (
            "text",
            f"{len(runs)} runs, steps {steps[0]}–{steps[-1]}. Means across runs at the first "
            "and the last step where each metric was logged (step after @):"
            if steps
            else "empty log",
        )
    )
    sec.blocks.append(("table", ([""] + keys, table)))
    if log:
        b.figure(
            sec,
            plots.plot_rl_dynamics(log, base),
            f"rl_dynamics_{index:02d}_{_slug(d.name)}",
            "Training batches: accuracy, average compute, fluency proxy (base-model NLL of the sampled "
            "completions) and coherence if judged, per RL step (thin: runs; thick: mean ± 1 SE; dashed: base)",
        )
    heldout = _read_jsonl(d / "heldout.jsonl") if (d / "heldout.jsonl").is_file() else []
    if heldout:
        ref = d / "heldout_base.json"
        b.figure(
            sec,
            plots.plot_rl_dynamics(
                heldout, json.loads(ref.read_text()) if ref.is_file() else None, title="RL dynamics on held-out prompts"
            ),
            f"rl_heldout_{index:02d}_{_slug(d.name)}",
            f"Held-out prompts ({heldout[0].get('n', '?')} fixed prompts, greedy tokens, exits sampled; step 0 "
            "= the starting model): accuracy, average compute and fluency proxy per evaluated step",
        )
    b.sections.append(sec)


def _findings_section(b: _Builder, d: Path, index: int) -> None:
    """Stated findings (claim, measured numbers, verdict), then their tables, notes and figures."""
    data = json.loads((d / "findings.json").read_text())
    sec = Section(str(data.get("title", f"Findings: {d.name}")))
    if data.get("findings"):
        sec.blocks.append(
            (
                "table",
                (
                    ["finding", "measured (95% CI)", "verdict"],
                    [[str(f["finding"]), str(f["measured"]), str(f["verdict"])] for f in data["findings"]],
                ),
            )
        )
    sec.blocks += [("text", str(note)) for note in data.get("notes", [])]
    for t in data.get("tables", []):
        sec.blocks += [("text", str(t.get("title", ""))), ("table", (list(t["headers"]), t["rows"]))]
    for j, fig in enumerate(data.get("figures", [])):
        name = f"findings_{index:02d}_{j:02d}_{_slug(Path(fig['file']).name)}"
        for ext in ("png", "svg"):
            if (d / f"{fig['file']}.{ext}").is_file():
                atomic_write_bytes(b.out / "figures" / f"{name}.{ext}", (d / f"{fig['file']}.{ext}").read_bytes())
        sec.blocks.append(("figure", FigureBlock(name, str(fig["caption"]), (d / f"{fig['file']}.png").read_bytes())))
    b.sections.append(sec)


def _rl_cell(log: list[dict[str, Any]], key: str, first: bool) -> str:
    """Mean across runs of `key` at its first (or last) logged step, as "value @step"."""
    steps = [int(r["step"]) for r in log if r.get(key) is not None]
    if not steps:
        return "—"
    step = min(steps) if first else max(steps)
    vals = [float(r[key]) for r in log if int(r["step"]) == step and r.get(key) is not None]
    return f"{sum(vals) / len(vals):.3f} @{step}"


# ---------------------------------------------------------------------------------------------------
# Rendering


def _md_table(table: Table) -> str:
    headers, rows = table

    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(esc, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(table: Table) -> str:
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _render_md(b: _Builder, sources: Sequence[Path]) -> str:
    parts = ["# thinkaloud evaluation report", "", "Sources: " + ", ".join(f"`{p}`" for p in sources)]
    for sec in b.sections:
        parts += ["", f"## {sec.title}", ""]
        for kind, block in sec.blocks:
            if kind == "table":
                parts += [_md_table(block), ""]
            elif kind == "text":
                parts += [block, ""]
            elif kind == "figure":
                parts += [
                    f"![{block.caption}](figures/{block.name}.png)",
                    "",
                    f"*{block.caption}* ([SVG](figures/{block.name}.svg))",
                    "",
                ]
            elif kind == "tokens":
                title, _fragment, page = block
                parts += [f"Token view: [{title}]({page.relative_to(b.out).as_posix()})", ""]
    return "\n".join(parts).rstrip() + "\n"


_PAGE_CSS = """
body { font-family: ui-sans-serif, system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
  color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: .8em; }
th, td { border: 1px solid #ccc; padding: .3em .4em; text-align: right; }
td:nth-child(2) { overflow-wrap: anywhere; min-width: 5em; } /* model paths: break anywhere, not the numbers */
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; white-space: nowrap; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; } figcaption { font-size: .9em; color: #555; }
code { background: #f3f3f3; padding: 0 .2em; }
"""


def _render_html(b: _Builder, sources: Sequence[Path]) -> str:
    parts = [
        "<h1>thinkaloud evaluation report</h1>",
        "<p>Sources: " + ", ".join(f"<code>{html.escape(str(p))}</code>" for p in sources) + "</p>",
    ]
    for sec in b.sections:
        parts.append(f"<h2>{html.escape(sec.title)}</h2>")
        for kind, block in sec.blocks:
            if kind == "table":
                parts.append(_html_table(block))
            elif kind == "text":
                parts.append(f"<p>{html.escape(block)}</p>")
            elif kind == "figure":
                data = base64.b64encode(block.png).decode("ascii")
                parts.append(
                    f'<figure><img alt="{html.escape(block.caption, quote=True)}" '
                    f'src="data:image/png;base64,{data}"><figcaption>{html.escape(block.caption)}'
                    "</figcaption></figure>"
                )
            elif kind == "tokens":
                parts.append(block[1])
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>thinkaloud evaluation report'
        f"</title><style>{_PAGE_CSS}{viz.TOKENS_CSS}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def build_report(
    dirs: Sequence[str | Path], out: str | Path, n_examples: int = 1, max_example_tokens: int = 400
) -> tuple[Path, Path]:
    """Write the report for ``dirs`` into ``out``; returns (report.md, report.html).

    n_examples: token views per eval directory (its first records); max_example_tokens: tokens shown
    per view.
    """
    folders = [Path(d) for d in dirs]
    if not folders:
        raise ValueError("no directories to report on")
    out = Path(out)
    b = _Builder(out)
    kinds = {d: detect_kind(d) for d in folders}
    evals = [d for d in folders if kinds[d] == "eval"]
    if evals:
        _eval_section(b, evals, n_examples, max_example_tokens)
    for i, d in enumerate(d for d in folders if kinds[d] == "sweep"):
        _sweep_section(b, d, i)
    for i, d in enumerate(d for d in folders if kinds[d] == "rl"):
        _rl_section(b, d, i)
    for i, d in enumerate(d for d in folders if kinds[d] == "findings"):
        _findings_section(b, d, i)
    md = atomic_write_text(out / "report.md", _render_md(b, folders))
    page = atomic_write_text(out / "report.html", _render_html(b, folders))
    return md, page
