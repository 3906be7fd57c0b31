"""Terminal tables: the eval job's output (coloured responses, the summary table, the exit histogram) and the
KL-factor sweep table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from thinkaloud.data.task import Item
from thinkaloud.report import viz


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def describe_target(target: dict[str, Any]) -> str:
    """The calibration target in words: "KL factor 1 — <where the factor comes from>"."""
    return f"KL factor {target['kl_factor']:g} — {target['source']}"


def describe_data(s: dict[str, Any]) -> str | None:
    """The rows of a data file the items came from, in words (None for a task that generates its items)."""
    data = s.get("data")
    if not data:
        return None
    rows = (
        f"the {data['rows_used']:,} of its {data['rows_in_file']:,} rows whose question hashes to {s['split']}"
        if data["split_by_hash"]
        else f"all its {data['rows_used']:,} rows"
    )
    return f"{s['n']} items drawn from {data['file']}: {rows}"


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of the summary table."""
    coherence, target = s.get("coherence"), s.get("target")
    base = s.get("speed_baseline") or {}
    rows = [
        ("accuracy", _pct(s["accuracy"])),
        ("early-exit rate", _pct(s["early_exit_rate"])),
        ("ALS", _pct(s["als"])),
        ("mean length (tokens)", f"{s['mean_length']:.1f}"),
        ("tokens/s (prefill included)", _num(s["tokens_per_s"], ".1f")),
        ("prefill (s, all batches)", _num(s.get("prefill_s"), ".3f")),
        ("decode ms/token", _num(s.get("decode_ms_per_token"), ".2f")),
        (
            "decode ms/token, base model",
            base["skipped"] if "skipped" in base else _num(base.get("decode_ms_per_token"), ".2f"),
        ),
        (
            "measured speedup vs base (decode)",
            "—" if s.get("speedup_vs_base") is None else f"{s['speedup_vs_base']:.2f}×",
        ),
        ("FLOP savings (analytic)", _pct(s["flop_savings"])),
        (
            "TV distance to target" + (f" (F={target['kl_factor']:g})" if target else ""),
            _num(s.get("tv_distance"), ".3f"),
        ),
    ]
    if coherence and coherence.get("mean") is not None:
        rows.append(
            (
                f"coherence (judge overall, {coherence.get('rubric', 'ours')} rubric)",
                f"{coherence['mean']:.2f} (n={coherence['n_judged']}, {coherence['n_missing']} missing)",
            )
        )
    elif coherence:
        rows.append(("coherence (judge overall)", f"— ({coherence['n_missing']} missing)"))
    return rows + measure_rows(s)


def measure_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of the externalisation measures that ran."""
    rows = []
    flu, rel, lens = s.get("fluency"), s.get("reliance"), s.get("lens")
    if flu:
        rows += [
            ("fluency proxy: base-model NLL (nats/token)", _num(flu.get("base_nll"), ".3f")),
            (
                "fluency proxy: repeated 4-grams / distinct bigrams",
                f"{_pct(flu.get('rep4'))} / {_pct(flu.get('distinct2'))}",
            ),
        ]
    if rel:
        rows += [
            (
                "reliance: area over the agreement curve",
                _num(rel.get("aoc"), ".3f") + f" (n={rel.get('n')}, {rel.get('n_skipped')} without an answer)",
            ),
            ("reliance: accuracy at f=0 → f=1", f"{_pct(rel.get('accuracy_f0'))} → {_pct(rel.get('accuracy_f1'))}"),
        ]
    if lens and lens.get("accuracy"):
        rows.append(
            (
                "future lens: top-1 at k=2 (first exit layer, last layer)",
                f"{_pct(lens['accuracy'][0][1] if len(lens['distances']) > 1 else None)}, "
                f"{_pct(lens['accuracy'][-1][1] if len(lens['distances']) > 1 else None)}",
            )
        )
    elif lens:
        rows.append(("future lens", lens.get("skipped", "—")))
    return rows + loadbearing_rows(s)


def loadbearing_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of the load-bearing measures and the legibility judge that ran."""
    rows = []
    filler, mistakes, para, dec, leg = (
        s.get(k) for k in ("filler", "mistakes", "paraphrase", "decodability", "legibility")
    )
    if filler:
        agree = filler.get("agreement") or {}
        rows.append(
            (
                "filler: agreement own / none / filler",
                " / ".join(_pct(agree.get(c)) for c in ("own", "none", "filler")) + f" (n={filler.get('n')})",
            )
        )
    if mistakes:
        rows.append(
            (
                "mistakes: answer changed / follows the edit",
                f"{_pct(mistakes.get('changed_rate'))} (n={mistakes.get('n')}) / "
                f"{_pct(mistakes.get('follow_rate'))} (n={mistakes.get('n_implied')})",
            )
        )
    if para:
        rows.append(
            (
                "paraphrase: agreement original → reworded",
                f"{_pct(para.get('agreement_original'))} → {_pct(para.get('agreement_paraphrased'))} "
                f"(n={para.get('n')}, {para.get('n_changed')} reworded)",
            )
        )
    if dec and dec.get("best") is not None:
        rows.append(
            (
                "decodability: best layer at prompt end → reasoning end (chance)",
                f"{_pct(dec['best'][0])} ({_pct(dec['best_chance'][0])}) → "
                f"{_pct(dec['best'][-1])} ({_pct(dec['best_chance'][-1])}), n={dec['n']}",
            )
        )
    elif dec:
        rows.append(("decodability", dec.get("skipped", "—")))
    if leg:
        rows.append(
            (
                "legibility / coverage (judge, 0–4)",
                f"{_num(leg.get('legibility'), '.2f')} / {_num(leg.get('coverage'), '.2f')} "
                f"(n={leg.get('n_judged')}, {leg.get('n_missing')} missing)",
            )
        )
    return rows


def print_results(
    console: Console, s: dict[str, Any], records: list[dict[str, Any]], items: list[Item], config: Any, out: Path
) -> None:
    E, L = s["exit_layers"], s["num_layers"]
    for r, item in list(zip(records, items))[: config.show]:
        console.rule(f"{s['label']} · {r['id']} · reference {item.answer!r} · score {r['score']:g}")
        viz.render_terminal(r["tokens"], r["exit_layers"], E, L, console=console)
    tokens = "greedy" if not config.do_sample else f"sampled (T={config.temperature:g}, top-p={config.top_p:g})"
    exits = "none (offset −∞)" if s["offset"] is None else f"sampled, offset {s['offset']:g}"
    console.print(
        f"[bold]{s['label']}[/bold]: {s['model']} on {s['task']} ({s['split']}) · n={s['n']} · "
        f"tokens {tokens} · exits {exits}",
        highlight=False,
    )
    data = describe_data(s)
    if data is not None:
        console.print(f"data: {data}", highlight=False)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in summary_rows(s):
        table.add_row(name, value)
    console.print(table)
    hist = Table()
    hist.add_column("tokens per exit layer")
    for layer in s["exit_hist"]:
        hist.add_column(f"{layer}" + (" (none)" if int(layer) == L else ""), justify="right")
    hist.add_row("model", *(_pct(v) for v in s["exit_hist"].values()))
    if s.get("target_hist") is not None:
        hist.add_row(f"target (F={s['kl_factor']:g})", *(_pct(s["target_hist"][k]) for k in s["exit_hist"]))
    console.print(hist)
    if s.get("target"):
        console.print(f"target: {describe_target(s['target'])}", highlight=False)
    console.print(f"Wrote summary.json, records.jsonl, config.json and tokens.html to {out}")


# The sweep table's columns, shared with the report's sweep table (``thinkaloud.report.sections``, which puts
# "label" first) so the two cannot drift; ``sweep_table`` leaves out "decode speedup" when no row has one.
SWEEP_COLUMNS = (
    "KL factor",
    "coherence",
    "base NLL (proxy)",
    "rep-4 (proxy)",
    "early-exit rate",
    "ALS",
    "accuracy",
    "TV to target",
    "decode speedup",
)


def sweep_table(rows: list[dict], title: str = "KL-factor sweep (paper-style)") -> Table:
    """The paper-style table of a sweep's rows; the decode-speedup column only when a row has a speedup."""
    speed = any(r.get("speedup_vs_base") is not None for r in rows)
    table = Table(title=title)
    for col in [c for c in SWEEP_COLUMNS if speed or c != "decode speedup"]:
        table.add_column(col, justify="right")
    fmt = lambda v, f: "—" if v is None else format(v, f)
    for r in rows:
        cells = [
            r["label"] if r["kl_factor"] is None else f"{r['kl_factor']:g}",
            fmt(r["coherence"], ".1f"),
            fmt(r.get("base_nll"), ".3f"),
            fmt(r.get("rep4"), ".1%"),
            f"{r['early_exit_rate']:.1%}",
            f"{r['als']:.1%}",
            f"{r['accuracy']:.3f}",
            fmt(r["tv_distance"], ".3f"),
        ]
        if speed:
            speedup = r.get("speedup_vs_base")
            cells.append("—" if speedup is None else f"{speedup:.2f}×")
        table.add_row(*cells)
    return table
