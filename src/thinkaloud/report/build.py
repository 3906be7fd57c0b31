"""Build a Markdown + self-contained HTML report from eval, sweep and RL directories.

The eval runner writes these directories (the contract this module reads):

eval directory
  ``summary.json``: {"model", "label" ("base" | the run folder's name | …), "stage" ("base" | "sft" |
    "rl" | "unknown"), "task", "split", "data": {"file", "split_by_hash", "rows_in_file", "rows_used"} (a task
    read from a file) or null, "n", "num_layers": L, "exit_layers": E, "offset",
    "kl_factor" (of the target, or null), "target": {"kl_factor", "source"} or null, "accuracy",
    "early_exit_rate", "als", "mean_length", "tokens_per_s" (prefill included), "prefill_s",
    "decode_ms_per_token", "speed_baseline": {"prefill_s", "decode_s", "decode_tokens",
    "decode_ms_per_token", "n_tokens"} or {"skipped": reason}, "speedup_vs_base" or null,
    "flop_savings", "exit_hist": {"5": share, …, "L": share}, "target_hist": {…} or null,
    "tv_distance" or null, "coherence": {"mean", "n_judged", "n_missing", "hist": {"1": count, …},
    "criteria", "missing_reasons", "rubric"} or null, "fluency": {"base_nll", "base_ppl", "rep4",
    "distinct2", …} or null, "reliance": {"fractions", "agreement", "aoc", "accuracy_f0", "accuracy_f1",
    "n", …} or null, "lens": {"layers", "distances", "accuracy", "logit_lens", …} or {"skipped"} or
    null, "filler": {"agreement": {"own", "none", "filler"}, "accuracy": {…}, "n", …} or null,
    "mistakes": {"changed_rate", "follow_rate", "n", "n_implied", …} or null, "paraphrase":
    {"agreement_original", "agreement_paraphrased", "drop", "n", …} or null, "decodability": {"layers",
    "fractions", "accuracy", "chance", "best", "best_chance", "chance_mean", "majority", "n", …} or
    {"skipped"} or null, "legibility": {"legibility", "coverage", "n_judged", "n_missing", …} or null};
    measures may add fields (each optional here)
  ``records.jsonl``: one line per item: {"id", "prompt", "completion", "tokens": [str per generated
    token], "exit_layers": [int per token], "score", "judge": {"coherence", "completeness", "clarity",
    "no_repetition", "overall"} (or {"legibility", "coverage"}) or null, "judge_missing": reason or null}
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
    .png (and .svg) exist, "caption"}], "first" (optional)}: stated results (e.g. the demo's), drawn as
    the last section, or as the first with ``"first": true`` (the demo's organism findings).

``build_report(dirs, out)`` writes ``out/report.md`` (Markdown tables, linked images),
``out/report.html`` (one file: CSS inline, figures as base64 PNG, token views inline), the figures
as PNG + SVG under ``out/figures/`` and one standalone token page per eval directory under
``out/tokens/``. Every file is written atomically.

Modules: this one detects each directory's kind, renders the sections as Markdown and HTML and writes
the report (``build_report``); ``thinkaloud.report.sections`` holds the section model
(``Section``, ``FigureBlock``, the figure-saving builder), the shared cell formatters and the sweep, RL
and findings sections (the sweep table's columns are ``thinkaloud.report.terminal.SWEEP_COLUMNS``);
``thinkaloud.report.eval_sections`` the eval directories' sections (evaluations, externalisation; with
``thinkaloud.report.loadbearing_sections``, the load-bearing measures). Their
names stay importable from here.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path

from thinkaloud.io import atomic_write_text
from thinkaloud.report import viz
from thinkaloud.report.eval_sections import (
    _eval_section,
)
from thinkaloud.report.sections import (
    Table,
    _Builder,
    _findings_section,
    _rl_section,
    _sweep_section,
)


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
    found = [d for d in folders if kinds[d] == "findings"]
    lead = [d for d in found if json.loads((d / "findings.json").read_text()).get("first")]
    for i, d in enumerate(lead):
        _findings_section(b, d, i)
    evals = [d for d in folders if kinds[d] == "eval"]
    if evals:
        _eval_section(b, evals, n_examples, max_example_tokens)
    for i, d in enumerate(d for d in folders if kinds[d] == "sweep"):
        _sweep_section(b, d, i)
    for i, d in enumerate(d for d in folders if kinds[d] == "rl"):
        _rl_section(b, d, i)
    for i, d in enumerate((d for d in found if d not in lead), start=len(lead)):
        _findings_section(b, d, i)
    md = atomic_write_text(out / "report.md", _render_md(b, folders))
    page = atomic_write_text(out / "report.html", _render_html(b, folders))
    return md, page
