"""The report's section on whether the reasoning is load-bearing: filler, mistakes, paraphrase, answer
decodability and the legibility judge, one row per eval directory, and the decodability heatmaps side by
side (``thinkaloud.measures.loadbearing`` computes them; ``thinkaloud.report.eval_sections`` calls this
after the externalisation section)."""

from __future__ import annotations

from typing import Any

from thinkaloud.report import measure_plots
from thinkaloud.report.sections import Section, _Builder, _num, _pct

NAMES = ("filler", "mistakes", "paraphrase", "decodability", "legibility")

NOTE = (
    "Filler (Lanham et al. 2023; Pfau et al. 2024): agreement of the answer forced after the model's own "
    "reasoning / no reasoning / a filler of the same length with the response's own answer; load-bearing "
    "reasoning gives own > none ≈ filler. Mistakes (Lanham et al. 2023): one number or container changed in the "
    "reasoning and the model continues; changed = a different answer, follows = exactly the answer the edit "
    "implies (where the task can compute it). Paraphrase (after Roger & Greenblatt 2023): answer forced after "
    "a deterministic rewording; a drop means the answer rides on the wording. Decodability: held-out linear "
    "probes for the final answer, best layer at the prompt's end and at the end of the reasoning, with the "
    "same maximum over shuffled-label probes (chance) in brackets; decodable at the prompt's end = computed "
    "before the reasoning. n is small: differences of one or two responses are noise, and such rates move "
    "with accuracy (Bentham et al. 2024)."
)


def _decodable(d: dict[str, Any] | None, at: int) -> str:
    if not d or d.get("best") is None:
        return "—" if not d else f"skipped ({d.get('skipped', '?')})"
    return f"{_pct(d['best'][at])} ({_pct(d['best_chance'][at])})"


def _row(name: str, s: dict[str, Any]) -> list[str]:
    f, m, p, d, lg = (s.get(k) or {} for k in NAMES)
    agree, acc = f.get("agreement") or {}, f.get("accuracy") or {}
    return [
        name,
        " / ".join(_pct(agree.get(c)) for c in ("own", "none", "filler")) + f" (n={f.get('n')})" if f else "—",
        " / ".join(_pct(acc.get(c)) for c in ("own", "none", "filler")) if f else "—",
        f"{_pct(m.get('changed_rate'))} (n={m.get('n')})" if m else "—",
        f"{_pct(m.get('follow_rate'))} (n={m.get('n_implied')})" if m else "—",
        f"{_pct(p.get('agreement_original'))} → {_pct(p.get('agreement_paraphrased'))} (n={p.get('n')})" if p else "—",
        _decodable(s.get("decodability"), 0),
        _decodable(s.get("decodability"), -1),
        f"{_num(lg.get('legibility'))} / {_num(lg.get('coverage'))}" if lg else "—",
    ]


def loadbearing_section(b: _Builder, named: list[tuple[str, dict[str, Any]]]) -> None:
    """The section, when any summary has one of the load-bearing measures (labels already unique)."""
    shown = [(name, s) for name, s in named if any(s.get(k) for k in NAMES)]
    if not shown:
        return
    sec = Section("Is the reasoning load-bearing? Filler, mistakes, paraphrase, decodability, legibility")
    headers = [
        "model",
        "filler: agreement own / none / filler",
        "filler: accuracy own / none / filler",
        "mistakes: changed",
        "mistakes: follows",
        "paraphrase: agreement original → reworded",
        "decodable at the prompt's end (chance)",
        "decodable at the reasoning's end (chance)",
        "legibility / coverage (judge, 0–4)",
    ]
    sec.blocks.append(("table", (headers, [_row(name, s) for name, s in shown])))
    sec.blocks.append(("text", NOTE))
    tables = {name: s["decodability"] for name, s in shown if (s.get("decodability") or {}).get("accuracy")}
    if tables:
        b.figure(
            sec,
            measure_plots.plot_decodability(tables),
            "decodability",
            "Answer decodability per layer and point of the reasoning (held-out linear probes; chance and the "
            "majority baseline in each title). Late decodability: the answer is computed in the written "
            "reasoning; decodable at the prompt's end: computed before it.",
        )
    b.sections.append(sec)
