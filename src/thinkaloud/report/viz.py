"""Per-token visualisation of a response: each token coloured by the layer at which it exited.

Exit layers ``E`` take colours from a sequential colormap (dark = early exit = little compute, pale =
late exit); "no exit" (ℓ = L) is a neutral light grey, so the early exits stand out. The same colours
serve the HTML page (``tokens_html``, or ``tokens_fragment`` to inline several views in one page),
the terminal (``render_terminal``, rich) and the plots (``layer_colors``).
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence

from matplotlib import colormaps
from matplotlib.colors import to_hex, to_rgb
from rich.console import Console
from rich.text import Text

COLORMAP = "viridis"
NO_EXIT_COLOR = "#e6e6e6"


def layer_colors(layers: Sequence[int], num_layers: int) -> dict[int, str]:
    """Hex background colour per layer of ``E ∪ {L}``; L (no exit) gets ``NO_EXIT_COLOR``."""
    exits = sorted(set(int(x) for x in layers) - {num_layers})
    cmap = colormaps[COLORMAP]
    # Sample 0.0 … 0.85: the palest end of viridis (yellow) stays distinguishable from the grey.
    positions = [0.85 * i / max(len(exits) - 1, 1) for i in range(len(exits))]
    colors = {layer: to_hex(cmap(p)) for layer, p in zip(exits, positions)}
    colors[num_layers] = NO_EXIT_COLOR
    return colors


def text_color(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (WCAG relative luminance)."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(background))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#000000" if luminance > 0.179 else "#ffffff"


def layer_label(layer: int, num_layers: int) -> str:
    return f"layer {layer} / {num_layers}" + (" (no exit)" if layer == num_layers else "")


def _check(tokens: Sequence[str], exit_layers: Sequence[int], colors: dict[int, str]) -> None:
    if len(tokens) != len(exit_layers):
        raise ValueError(f"{len(tokens)} tokens but {len(exit_layers)} exit layers")
    unknown = sorted(set(int(x) for x in exit_layers) - colors.keys())
    if unknown:
        raise ValueError(f"exit layers {unknown} are not in E ∪ {{L}} = {sorted(colors)}")


TOKENS_CSS = """
.ta-view { font-family: ui-sans-serif, system-ui, sans-serif; margin: 1em 0; }
.ta-view h3 { font-size: 1.05em; margin: 0 0 .4em 0; }
.ta-legend { display: flex; flex-wrap: wrap; gap: .35em; margin-bottom: .6em; font-size: .85em; }
.ta-legend span { padding: .15em .5em; border-radius: .3em; border: 1px solid #bbb; }
.ta-text { white-space: pre-wrap; word-wrap: break-word; font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: .9em; line-height: 1.75; border: 1px solid #ddd; border-radius: .4em; padding: .7em; }
.ta-tok { border-radius: .2em; padding: .1em 0; }
"""


def tokens_fragment(
    tokens: Sequence[str], exit_layers: Sequence[int], layers: Sequence[int], num_layers: int, title: str = ""
) -> str:
    """An HTML ``<div>`` (no page, no CSS; see ``TOKENS_CSS``) with legend and coloured tokens.

    Every token is one ``<span class="ta-tok">`` whose ``title`` (hover) names the token's repr and
    its exit layer; text is HTML-escaped, whitespace and newlines are kept (``pre-wrap``).
    """
    colors = layer_colors(layers, num_layers)
    _check(tokens, exit_layers, colors)
    counts = Counter(int(x) for x in exit_layers)
    legend = "".join(
        f'<span style="background:{bg};color:{text_color(bg)}">'
        f"{html.escape(layer_label(layer, num_layers))} · {counts.get(layer, 0)} tok</span>"
        for layer, bg in sorted(colors.items())
    )
    spans = []
    for token, layer in zip(tokens, exit_layers):
        bg = colors[int(layer)]
        hover = f"{token!r} · {layer_label(int(layer), num_layers)}"
        spans.append(
            f'<span class="ta-tok" style="background:{bg};color:{text_color(bg)}" '
            f'title="{html.escape(hover, quote=True)}">{html.escape(token, quote=False)}</span>'
        )
    heading = f"<h3>{html.escape(title)}</h3>" if title else ""
    return (
        f'<div class="ta-view">{heading}<div class="ta-legend">{legend}</div>'
        f'<div class="ta-text">{"".join(spans)}</div></div>'
    )


def tokens_html(
    tokens: Sequence[str],
    exit_layers: Sequence[int],
    layers: Sequence[int],
    num_layers: int,
    title: str = "Tokens by exit layer",
) -> str:
    """A standalone HTML page (inline CSS, no external resources) showing one response."""
    body = tokens_fragment(tokens, exit_layers, layers, num_layers, title=title)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{TOKENS_CSS}</style></head>\n<body>{body}</body></html>\n"
    )


def render_terminal(
    tokens: Sequence[str],
    exit_layers: Sequence[int],
    layers: Sequence[int],
    num_layers: int,
    console: Console | None = None,
) -> Text:
    """Print the legend and the coloured response with rich; returns the response ``Text``."""
    colors = layer_colors(layers, num_layers)
    _check(tokens, exit_layers, colors)
    console = console or Console()
    legend = Text()
    for layer, bg in sorted(colors.items()):
        legend.append(f" {layer_label(layer, num_layers)} ", style=f"{text_color(bg)} on {bg}")
        legend.append(" ")
    text = Text()
    for token, layer in zip(tokens, exit_layers):
        bg = colors[int(layer)]
        text.append(token, style=f"{text_color(bg)} on {bg}")
    console.print(legend)
    console.print(text)
    return text
