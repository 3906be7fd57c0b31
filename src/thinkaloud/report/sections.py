"""The report's building blocks and its per-directory sections: sweep, RL and findings.

Sections are built into a ``_Builder`` (the figures it saves under ``out/figures/``) as lists of blocks:
("table", Table) | ("text", str) | ("figure", FigureBlock) | ("tokens", (title, fragment, page)); the
renderers of ``thinkaloud.report.build`` turn them into Markdown and HTML. The eval directories' sections
(evaluations, externalisation) are in ``thinkaloud.report.eval_sections``; the directory formats read here
are described in ``thinkaloud.report.build``. The sweep table's columns are the terminal's
(``thinkaloud.report.terminal.SWEEP_COLUMNS``), with "label" first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from thinkaloud.io import atomic_write_bytes
from thinkaloud.report import plots
from thinkaloud.report.terminal import SWEEP_COLUMNS

Table = tuple[list[str], list[list[str]]]  # (headers, rows of cells)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "dir"


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

    def figure_from(
        self, section: Section, drawn: Path, sources: list[Path], draw: Callable[[], Any], name: str, caption: str
    ) -> None:
        """As ``figure``, but a figure the job already drew (``drawn``.png and .svg) from ``sources`` is copied
        when it is newer than each of them, instead of drawn again; ``draw()`` draws it otherwise."""
        files = [drawn.with_name(f"{drawn.name}.{ext}") for ext in ("png", "svg")]
        newest = max((p.stat().st_mtime_ns for p in sources if p.is_file()), default=0)
        if not all(f.is_file() and f.stat().st_mtime_ns >= newest for f in files):
            self.figure(section, draw(), name, caption)
            return
        target = self.out / "figures" / name
        for f in files:
            atomic_write_bytes(target.with_name(f"{name}{f.suffix}"), f.read_bytes())
        section.blocks.append(("figure", FigureBlock(name, caption, files[0].read_bytes())))


FLUENCY_NOTE = (
    "Fluency proxies (no judge): base NLL = the base model's mean negative log-likelihood per token of "
    "the responses (adapter off, no exits; lower = more natural to the base model); rep-4 = share of "
    "repeated token 4-grams; distinct-2 = distinct token bigrams / bigrams. Proxies, not coherence: "
    "bland or repetitive text also has a low NLL."
)


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
    sec.blocks.append(("table", (["label", *SWEEP_COLUMNS], table)))
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
    keys = ["reward", "accuracy", "depth_frac", "als", "early_exit_rate", "kl", "beta", "length", "base_nll"]
    keys += ["degenerate", "coherence"]
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
    summary = d / "rl_summary.json"  # thinkaloud.train.rl_report: per run, whether its policy collapsed
    for entry in json.loads(summary.read_text())["runs"] if summary.is_file() else []:
        if entry.get("collapse"):
            sec.blocks.append(("text", f"Warning: run {entry['run']}: {entry['collapse']['message']}."))
    if log:  # the RL job draws the same figures (thinkaloud.train.rl_report.write_outputs)
        b.figure_from(
            sec,
            d / "figures" / "rl_dynamics",
            [d / "log.jsonl", d / "base.json"],
            lambda: plots.plot_rl_dynamics(log, base),
            f"rl_dynamics_{index:02d}_{_slug(d.name)}",
            "Training batches: accuracy, average compute, fluency proxy (base-model NLL of the sampled "
            "completions), coherence if judged, KL̂ to the base (dotted: its target, if any), β and the share of "
            "degenerate completions, per RL step (thin: runs; thick: mean ± 1 SE; dashed: base)",
        )
    heldout = _read_jsonl(d / "heldout.jsonl") if (d / "heldout.jsonl").is_file() else []
    if heldout:
        ref = d / "heldout_base.json"
        b.figure_from(
            sec,
            d / "figures" / "rl_heldout",
            [d / "heldout.jsonl", ref],
            lambda: plots.plot_rl_dynamics(
                heldout, json.loads(ref.read_text()) if ref.is_file() else None, title="RL dynamics on held-out prompts"
            ),
            f"rl_heldout_{index:02d}_{_slug(d.name)}",
            f"Held-out prompts ({heldout[0].get('n', '?')} fixed prompts, greedy tokens, exits sampled; step 0 "
            "= the starting model): accuracy, average compute, fluency proxies and the share of degenerate "
            "responses per evaluated step",
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
