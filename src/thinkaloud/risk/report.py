"""The ``risk`` job's report (``thinkaloud.risk.run``): the plot of risk and ALS against the offset
(``risk.png`` + ``.svg``) and the table printed to the terminal, both drawn from what ``risk.json`` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _plot(result: dict[str, Any], path_without_ext: Path) -> None:
    """Risk (left axis) and ALS (right axis) against the offset, ε and the choice marked."""
    from matplotlib.figure import Figure

    from thinkaloud.report.plots import MODEL_COLOR, save_figure

    rows = result["offsets"]
    x = [r["offset"] for r in rows]
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, [r["risk"] for r in rows], "o-", color=MODEL_COLOR, label=f"{result['risk']} risk (empirical)")
    ax.axhline(result["epsilon"], color="firebrick", linestyle="--", label=f"ε = {result['epsilon']:g}")
    if result["chosen_offset"] is not None:
        ax.axvline(
            result["chosen_offset"],
            color="black",
            linestyle=":",
            label=f"chosen offset {result['chosen_offset']:g} (δ = {result['delta']:g})",
        )
    ax.set_xlabel("offset (added to every exit logit)")
    ax.set_ylabel(f"{result['risk']} risk")
    ax.set_ylim(bottom=0)
    twin = ax.twinx()
    twin.plot(x, [r["als"] for r in rows], "s-", color="seagreen", alpha=0.7, label="ALS")
    twin.set_ylabel("average layer savings (ALS)")
    twin.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles=handles, loc="upper left", fontsize="small")
    title = "no offset accepted: exits off" if result["chosen_offset"] is None else "risk-controlled offset"
    ax.set_title(f"{title} · {result['task']} · n = {result['n']}")
    save_figure(fig, path_without_ext)


def _print(console: Console, result: dict[str, Any], out: Path) -> None:
    table = Table(
        title=f"{result['risk']} risk per offset (ε = {result['epsilon']:g}, δ = {result['delta']:g}, "
        f"n = {result['n']})"
    )
    for header in ("offset", "risk", "p-value", "accepted", "ALS", "FLOP savings"):
        table.add_column(header, justify="right")
    for r in result["offsets"]:
        verdict = "yes" if r["accepted"] else ("no" if r["tested"] else "not tested")
        table.add_row(
            f"{r['offset']:g}",
            f"{r['risk']:.3f}",
            f"{r['p_value']:.3g}",
            verdict,
            f"{r['als']:.1%}",
            f"{r['flop_savings']:.1%}",
        )
    console.print(table)
    val = result["validation"]
    if result["chosen_offset"] is None:
        console.print("[yellow]no offset accepted: the answer is exits off (offset −∞)")
    else:
        row = next(r for r in result["offsets"] if r["offset"] == result["chosen_offset"])
        console.print(
            f"chosen offset [bold]{result['chosen_offset']:g}[/]: ALS {row['als']:.1%}, FLOP savings "
            f"{row['flop_savings']:.1%}; validation ({val['split']}, n = {val['n']}): risk {val['risk']:.3f}"
        )
    if result["saved_to"]:
        console.print(
            f"recorded in {result['saved_to']}/thinkaloud.json: eval and generation use it when no offset is given"
        )
    console.print(f"wrote {out / 'risk.json'} and {out / 'risk.png'} ({result['seconds']:.0f} s)")
